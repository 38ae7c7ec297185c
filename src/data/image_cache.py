"""Image cache: each JPEG decoded, split and resized once, stored as uint8 halves the dataset
memory-maps, so an epoch costs augmentation only. The JPEG path stays the fallback.

One ``.npy`` file per (split, resolution, padding) holds (N, 2, S, S, 3) uint8 RGB halves; a
JSON file beside it records the image ids and settings; a cache made otherwise is refused.

Without ``--image-cache-dir`` the trainer builds the same rows in memory (``InMemory``), filled
while its photo check decodes each photo, when they fit ``memory_budget``; over it, the JPEGs are
decoded every epoch, with one note saying so and how to build the file instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.io_utils import atomic_path, write_json
from ..core.progress import progress
from .fingerprint import files_hash, split_photos_hash
from .photo_prep import PhotoPrep
from .photos import read_rgb
from .schema import load_test, load_train
from .transforms import split_halves, to_square

FORMAT = 1


def cache_path(cache_dir: str | Path, size: int, split: str, pad: bool = False, prep: PhotoPrep = PhotoPrep()) -> Path:
    return Path(cache_dir) / f"{size}{'_pad' if pad else ''}{prep.tag}" / f"{split}.npy"


def build_command(data_dir, split, size, pad, out, prep: PhotoPrep = PhotoPrep()) -> str:
    return (f"python -m src.image_cache --data-dir {data_dir} --split {split} --size {size}"
            f"{' --pad-to-square' if pad else ''}{''.join(' ' + f for f in prep.flags())} --out {out}")  # fmt: skip


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def squares(rgb: np.ndarray, size: int, pad: bool) -> list[np.ndarray]:
    """One cache row: a cleaned photo's left and right halves, each resized to size x size."""
    return [to_square(h, size, pad) for h in split_halves(rgb)]


def build(data_dir, split: str, size: int, out, pad: bool = False, prep: PhotoPrep = PhotoPrep()) -> bool:
    """Write the cache; returns False when a matching one already exists."""
    data_dir, out = Path(data_dir), Path(out)
    images = load_train(data_dir) if split == "train" else load_test(data_dir)
    meta = {"format": FORMAT, "size": size, "pad": pad, "prep": prep.settings(), "image_ids": images["image_id"].tolist(),
            "photos": files_hash(data_dir, images["image_path"])}  # a replaced photo makes it stale
    if out.exists() and _meta_path(out).exists() and json.loads(_meta_path(out).read_text()) == meta:
        print(f"{out}: up to date ({len(images)} images)")
        return False
    with atomic_path(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), 2, size, size, 3))
        for i, rel in enumerate(progress(images["image_path"], desc=f"image cache {split} {size}px", unit="img")):
            arr[i] = squares(read_rgb(data_dir / rel, prep), size, pad)
        arr.flush()
        del arr
    write_json(_meta_path(out), meta)
    print(f"{out}: {len(images)} images x 2 halves at {size}px ({out.stat().st_size / 2**20:.0f} MiB)")
    return True


def load(path, image_ids: list[str], size: int, pad: bool, command: str,
         prep: PhotoPrep = PhotoPrep(), photos: str | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A read-only memory map (N, 2, S, S, 3) and, per wanted image, its row in it; ``photos``: the
    split's photos now (``split_photos_hash``), which the cache must have been built from."""
    path = Path(path)
    if not path.exists() or not _meta_path(path).exists():
        raise UserError(f"image cache {path} not found; build it with: {command}")
    meta = json.loads(_meta_path(path).read_text())
    have = (meta.get("format"), meta.get("size"), meta.get("pad"), meta.get("prep", PhotoPrep().settings()))
    if have != (FORMAT, size, pad, prep.settings()):
        raise UserError(f"image cache {path} holds {meta.get('size')}px halves (pad {meta.get('pad')}, cleaning "
                        f"{have[3]}), this run wants {size}px (pad {pad}, cleaning {prep.settings()}); rebuild it "
                        f"with: {command}")  # fmt: skip
    if photos is not None and meta.get("photos") != photos:
        raise UserError(f"image cache {path} was built from other photos (one was replaced or changed since); rebuild "
                        f"it with: {command}")  # fmt: skip
    index = {i: k for k, i in enumerate(meta["image_ids"])}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise UserError(f"image cache {path} lacks image {missing[0]} ({len(missing)} in all); rebuild it with: {command}")
    return np.load(path, mmap_mode="r"), np.array([index[i] for i in image_ids], dtype=np.int64)


def load_for_config(cfg, split: str, image_ids: list[str]):
    """The cache a training config asks for (None when --image-cache-dir is empty)."""
    if not cfg.image_cache_dir:
        return None
    prep = PhotoPrep.of(cfg)
    path = cache_path(cfg.image_cache_dir, cfg.image_size, split, cfg.use_pad_to_square, prep)
    return load(path, image_ids, cfg.image_size, cfg.use_pad_to_square,
                build_command(cfg.data_dir, split, cfg.image_size, cfg.use_pad_to_square, path, prep), prep,
                split_photos_hash(cfg.data_dir, split))  # fmt: skip


MEMORY_SHARE = 4  # an in-memory cache may take a quarter of the memory available to this node's ranks


def row_bytes(size: int) -> int:
    return 2 * size * size * 3


def available_memory() -> int | None:
    """Bytes this process can still allocate: the machine's available memory (psutil, else the
    free pages), less when a cgroup (a SLURM job, a container) allows less; None if unknown."""
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):  # fmt: skip
        try:
            cap = Path(limit).read_text().strip()
            if cap.isdigit():
                free = min(free, int(cap) - int(Path(used).read_text().strip()))
            break
        except (OSError, ValueError):
            continue
    return max(0, free)


def memory_budget(ranks: int = 1) -> int:
    """Bytes one rank's in-memory image cache may take: a quarter of the available memory, shared
    by the ranks on this node (each holds its own); 0 when the available memory is unknown."""
    free = available_memory()
    return 0 if free is None else free // MEMORY_SHARE // max(1, ranks)


class InMemory:
    """The image cache ``build`` would write, built in memory from photos decoded elsewhere (the
    trainer's photo check): the same rows, so training from it equals training from the file.
    DataLoader workers (fork) share it; read-only once complete, like the file's memory map."""

    def __init__(self, n: int, size: int, pad: bool = False, prep: PhotoPrep = PhotoPrep()):
        self.size, self.pad, self.prep = size, pad, prep
        self.array = np.empty((n, 2, size, size, 3), np.uint8)
        self.filled = np.zeros(n, bool)

    def add(self, row: int, rgb: np.ndarray) -> None:
        """``rgb``: the photo as decoded (EXIF orientation applied), before the cleaning."""
        self.array[row] = squares(self.prep.apply(rgb), self.size, self.pad)
        self.filled[row] = True

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2, S, S, 3) and each image's row, as ``load`` returns for a file."""
        if not self.filled.all():
            raise RuntimeError(f"in-memory image cache: {int((~self.filled).sum())} photos never added")
        self.array.flags.writeable = False
        return self.array, np.arange(len(self.array), dtype=np.int64)


def in_memory_for_config(cfg, split: str, n: int, ranks: int = 1, announce: bool = True) -> InMemory | None:
    """An empty in-memory cache for ``n`` photos when the config names no cache folder and it fits
    ``memory_budget``; otherwise None, and over the budget one note (``announce``: this rank prints)."""
    if cfg.image_cache_dir:
        return None
    prep = PhotoPrep.of(cfg)
    need, budget = n * row_bytes(cfg.image_size), memory_budget(ranks)
    if need > budget:
        if announce:
            path = cache_path("results/cache/images", cfg.image_size, split, cfg.use_pad_to_square, prep)
            print(f"note: the {n} photos' halves at {cfg.image_size}px need {need / 2**20:.0f} MiB, more than the "
                  f"{budget / 2**20:.0f} MiB this rank may keep in memory (a quarter of the available memory); the "
                  "photos are decoded again every epoch. Decode them once into a file instead: "
                  f"{build_command(cfg.data_dir, split, cfg.image_size, cfg.use_pad_to_square, path, prep)}, "
                  f"then train with --image-cache-dir {path.parent.parent}", flush=True)  # fmt: skip
        return None
    return InMemory(n, cfg.image_size, cfg.use_pad_to_square, prep)
