"""Torch dataset: one sample per quadrat photo, both halves, targets in grams and metadata."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from ..core.targets import TARGETS
from .mixup import Mixup, as_float, mix
from .photo_prep import PhotoPrep
from .photos import read_rgb
from .transforms import HalfTransform


class BiomassDataset(Dataset):
    """Rows of a one-row-per-image table; ``targets`` present for training/validation only."""

    def __init__(self, images: pd.DataFrame, data_dir: str | Path, transform: HalfTransform, seed: int = 0,
                 depth: np.ndarray | None = None, aux: dict[str, np.ndarray] | None = None,
                 halves: tuple[np.ndarray, np.ndarray] | None = None, prep: PhotoPrep | None = None,
                 mixup: Mixup | None = None):  # fmt: skip
        """``depth``: cached half depth maps (len(images), 2, R, R) in row order, or None.
        ``aux``: per-image targets of the auxiliary heads (``fold_stats.aux_targets``), or None.
        ``halves``: an image cache (memory map, row per image) to read instead of the JPEGs (made
        with the same ``prep``: the photo cleaning applied as each JPEG is decoded).
        ``mixup``: training only; each item may be mixed with another one of this epoch."""
        self.images = images.reset_index(drop=True)
        self.halves = halves
        self.prep = prep
        self.mixup = mixup
        self.depth = depth
        self.aux = aux or {}
        self.data_dir = Path(data_dir)
        self.transform = transform
        self.seed = seed
        self.has_targets = all(t in self.images.columns for t in TARGETS)
        self.targets = self.images[list(TARGETS)].to_numpy(np.float32) if self.has_targets else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int) -> dict:
        """``key`` = epoch * len(self) + row (see ``EpochIndices``): the epoch travels with the index,
        so persistent DataLoader workers, which keep their own copy of the dataset, still know it."""
        epoch, i = divmod(int(key), len(self))
        item = self._item(epoch, i)
        if self.mixup is None:
            return item
        plan = self.mixup.plan(epoch, i, len(self))
        return mix(item, self._item(epoch, plan[0]), plan[1]) if plan else as_float(item)

    @contextlib.contextmanager
    def unmixed(self):
        """The plain items, while the frozen backbone's feature cache is drawn (it mixes tokens itself)."""
        mixup, self.mixup = self.mixup, None
        try:
            yield self
        finally:
            self.mixup = mixup

    def _item(self, epoch: int, i: int) -> dict:
        # Deterministic per (seed, epoch, image) so DDP and resume see the same augmentations.
        aug_seed = (self.seed * 1_000_003 + epoch * 10_007 + i) % (2**31 - 1)
        depth = None if self.depth is None else self.depth[i]
        if self.halves is not None and self.halves[1][i] >= 0:  # row -1: not in the cache (pseudo-labelled photos)
            cache, rows = self.halves
            item = self.transform.from_halves(cache[rows[i]], aug_seed, depth)
        else:
            item = self.transform(read_rgb(self.data_dir / self.images.at[i, "image_path"], self.prep), aug_seed, depth)
        item["index"] = torch.tensor(i)
        for name, values in self.aux.items():
            item[name] = torch.tensor(values[i])
        if self.has_targets:
            item["targets"] = torch.tensor(self.targets[i])
        return item


class EpochIndices(Sampler):
    """Wraps a (Distributed)Sampler: yields epoch * n + row, and set_epoch reaches both."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n, self.epoch = sampler, n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return (self.epoch * self.n + i for i in self.sampler)
