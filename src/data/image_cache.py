"""Image cache: each JPEG decoded, split and resized once, stored as uint8 halves the dataset
memory-maps, so an epoch costs augmentation only. The JPEG path stays the fallback.

One ``.npy`` file per (split, resolution, padding) holds (N, 2, S, S, 3) uint8 RGB halves; a
JSON file beside it records the image ids and settings; a cache made otherwise is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from src.data.photo_prep import PhotoPrep
from src.data.photos import read_rgb
from src.data.schema import load_test, load_train
from src.data.transforms import split_halves, to_square
from src.errors import UserError
from src.io_utils import atomic_path, write_json
from src.progress import progress

FORMAT = 1


def cache_path(cache_dir: str | Path, size: int, split: str, pad: bool = False, prep: PhotoPrep = PhotoPrep()) -> Path:
    return Path(cache_dir) / f"{size}{'_pad' if pad else ''}{prep.tag}" / f"{split}.npy"


def build_command(data_dir, split, size, pad, out, prep: PhotoPrep = PhotoPrep()) -> str:
    return (f"python -m src.image_cache --data-dir {data_dir} --split {split} --size {size}"
            f"{' --pad-to-square' if pad else ''}{''.join(' ' + f for f in prep.flags())} --out {out}")  # fmt: skip


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def build(data_dir, split: str, size: int, out, pad: bool = False, prep: PhotoPrep = PhotoPrep()) -> bool:
    """Write the cache; returns False when a matching one already exists."""
    data_dir, out = Path(data_dir), Path(out)
    images = load_train(data_dir) if split == "train" else load_test(data_dir)
    meta = {"format": FORMAT, "size": size, "pad": pad, "prep": prep.settings(), "image_ids": images["image_id"].tolist()}
    if out.exists() and _meta_path(out).exists() and json.loads(_meta_path(out).read_text()) == meta:
        print(f"{out}: up to date ({len(images)} images)")
        return False
    with atomic_path(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), 2, size, size, 3))
        for i, rel in enumerate(progress(images["image_path"], desc=f"image cache {split} {size}px", unit="img")):
            arr[i] = [to_square(h, size, pad) for h in split_halves(read_rgb(data_dir / rel, prep))]
        arr.flush()
        del arr
    write_json(_meta_path(out), meta)
    print(f"{out}: {len(images)} images x 2 halves at {size}px ({out.stat().st_size / 2**20:.0f} MiB)")
    return True


def load(path, image_ids: list[str], size: int, pad: bool, command: str,
         prep: PhotoPrep = PhotoPrep()) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A read-only memory map (N, 2, S, S, 3) and, per wanted image, its row in it."""
    path = Path(path)
    if not path.exists() or not _meta_path(path).exists():
        raise UserError(f"image cache {path} not found; build it with: {command}")
    meta = json.loads(_meta_path(path).read_text())
    have = (meta.get("format"), meta.get("size"), meta.get("pad"), meta.get("prep", PhotoPrep().settings()))
    if have != (FORMAT, size, pad, prep.settings()):
        raise UserError(f"image cache {path} holds {meta.get('size')}px halves (pad {meta.get('pad')}, cleaning "
                        f"{have[3]}), this run wants {size}px (pad {pad}, cleaning {prep.settings()}); rebuild it "
                        f"with: {command}")  # fmt: skip
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
                build_command(cfg.data_dir, split, cfg.image_size, cfg.use_pad_to_square, path, prep), prep)  # fmt: skip
