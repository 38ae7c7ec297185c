"""Photos for label-free pre-training, prepared as the trainer prepares them, and their targets.

The photos come from ``src.synth`` with a seed of their own (never the demo's 0) and are read by
file name alone: the CSVs, where the masses are, are never opened. Each 2:1 photo is decoded
(``read_rgb``), cut into its left and right halves and each half resized to a square
(``split_halves`` / ``to_square``), exactly as the trainer does. The targets come from the
full-resolution pixels of each half: ``color_fractions`` (green grass, clover, dead litter,
soil/other) of every cell of a grid aligned with the backbone's 16 px patches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.progress import progress
from ..data.photos import read_rgb
from ..data.synth import color_fractions, generate
from ..data.transforms import split_halves, to_square

PATCH = 16
N_CLASSES = 4  # color_fractions: green, clover, dead, soil/other
DEMO_SEED = 0  # config/demo.yaml: the demo's photos, which pre-training must never see
_DONE = "pretrain_photos.json"  # written last: the folder holds every photo it lists


@dataclass
class Halves:
    """``images``: uint8 (N, 3, S, S), two rows per photo (left, right); ``cells``: float32
    (N, 4, G, G) class fractions of a G x G grid (``sub`` cells per patch side); ``ids``: photo ids."""

    images: torch.Tensor
    cells: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.images)


def photo_dir(root: str | Path, photos: int, seed: int, width: int, height: int) -> Path:
    return Path(root) / f"synth_seed{seed}_n{photos}_{width}x{height}"


def ensure_photos(folder: str | Path, photos: int, seed: int, width: int = 1000, height: int = 500) -> list[Path]:
    """The ``photos`` JPEGs of ``src.synth`` at ``seed`` in ``folder`` (made once, then reused),
    sorted by id. The demo's seed is refused: its photos are the ones the probe scores."""
    if seed == DEMO_SEED:
        raise UserError(f"--seed {seed} is the demo's: pre-training must not see the demo's photos; use another")
    folder = Path(folder)
    marker = folder / _DONE
    want = {"photos": photos, "seed": seed, "width": width, "height": height}
    if not (marker.is_file() and json.loads(marker.read_text()).get("settings") == want):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".gitignore").write_text("# made by src.pretrain: photos, never committed\n*\n")
        generate(folder, n_train=photos, n_test=0, seed=seed, width=width, height=height)
        paths = sorted((folder / "train").glob("*.jpg"))
        marker.write_text(json.dumps({"settings": want, "ids": [p.stem for p in paths]}, indent=1) + "\n")
    ids = json.loads(marker.read_text())["ids"]
    return [folder / "train" / f"{i}.jpg" for i in ids]


def cell_fractions(half: np.ndarray, grid: int) -> np.ndarray:
    """(4, grid, grid) ``color_fractions`` of each cell of a grid x grid split of ``half``."""
    h, w = half.shape[:2]
    ys, xs = np.linspace(0, h, grid + 1).round().astype(int), np.linspace(0, w, grid + 1).round().astype(int)
    out = np.empty((N_CLASSES, grid, grid), np.float32)
    for r in range(grid):
        for c in range(grid):
            out[:, r, c] = color_fractions(half[ys[r] : ys[r + 1], xs[c] : xs[c + 1]])
    return out


def load_halves(
    paths: list[Path], size: int, sub: int = 1, targets: bool = True, desc: str = "pretrain photos"
) -> Halves:
    """Both square halves of every photo at ``size`` px and, with ``targets``, their cell fractions
    (``sub`` x ``sub`` cells per 16 px patch)."""
    if size % PATCH:
        raise UserError(f"--image-size {size}: must be a multiple of {PATCH}")
    grid = size // PATCH * sub
    images, cells = [], []
    for p in progress(paths, desc=desc, unit="img"):
        for half in split_halves(read_rgb(p)):
            images.append(to_square(half, size, pad=False).transpose(2, 0, 1))
            if targets:
                cells.append(cell_fractions(half, grid))
    cell_t = torch.from_numpy(np.stack(cells)) if targets else torch.empty(0)
    return Halves(torch.from_numpy(np.ascontiguousarray(np.stack(images))), cell_t, [p.stem for p in paths])


def file_hashes(paths: list[Path]) -> set[str]:
    return {hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths}


def check_disjoint(paths: list[Path], others: list[Path]) -> dict:
    """Refuse pre-training photos that share an id or the bytes of a photo with ``others``."""
    ids = {p.stem for p in paths} & {p.stem for p in others}
    same = file_hashes(paths) & file_hashes(others)
    if ids or same:
        raise UserError(f"pre-training photos overlap the held-out ones: {len(ids)} shared ids, {len(same)} identical "
                        "files; use another --seed")  # fmt: skip
    return {"pretrain_photos": len(paths), "other_photos": len(others), "shared_ids": 0, "identical_files": 0}
