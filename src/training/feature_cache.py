"""Frozen-feature cache for Stage 1: the frozen backbone's tokens computed once per fold.

While the backbone is frozen its outputs never change, so running it every epoch is waste.
Instead, each training image is passed ``--feature-cache-views`` times, each time as the
training dataset draws it for one "epoch" (view v of image i is the dataset's sample for key
v * n + i: the training transform with its strong augmentation, perspective jitter, border mask
and depth, seeded, so DDP and resume replay it), and Stage 1 trains the heads on those tokens,
drawing one view per image per epoch. Validation uses the unaugmented images, so its metrics
equal the uncached path's. Trade-off: Stage 1 sees N augmented samples per image instead of a
fresh one every epoch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..core.errors import UserError
from ..core.progress import progress
from ..data.mixup import Mixup, mix
from .cpu_budget import worker_init
from .distributed import DistInfo, sum_across_ranks
from .engine import autocast


def available_memory() -> int | None:
    """Bytes the OS can still hand out (MemAvailable, which counts reclaimable page cache)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, desc: str) -> None:
    """Refuse a cache that cannot fit before filling it: an OOM kill mid-fold explains nothing.
    Every rank on this machine holds a full copy."""
    free, ranks = available_memory(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if free is not None and nbytes * ranks > 0.8 * free:
        raise UserError(
            f"{desc}: needs {nbytes / 2**30:.1f} GiB of RAM x {ranks} rank(s) on this machine but "
            f"{free / 2**30:.1f} GiB is available; use fewer --feature-cache-views, a smaller --image-size, "
            "or --no-feature-cache"
        )


class FeatureCache:
    """Tokens (views, images, 2 halves, ...) of one dataset, on the CPU of every rank.

    Under DDP each rank runs the backbone on every ``world_size``-th image only; the rows are then
    summed across ranks (each row is non-zero on exactly one rank, so the sum is an exact gather).
    """

    def __init__(self, model, dataset, views: int, info: DistInfo, batch_size: int, desc: str, workers: int = 0):
        n, device = len(dataset), info.device
        if n < info.world_size:
            raise UserError(f"{desc}: {n} images cannot be shared by {info.world_size} ranks; use fewer ranks "
                            "or --no-feature-cache")
        self.views = views
        self.targets = {}
        self.cls = self.patches = self.depth = None
        rows = range(info.rank, n, info.world_size)
        keys = [v * n + i for v in range(views) for i in rows]  # BiomassDataset: key = epoch * n + row
        loader = DataLoader(Subset(dataset, keys), batch_size=batch_size, shuffle=False, num_workers=workers,
                            worker_init_fn=worker_init if workers else None)
        done = 0
        with torch.no_grad(), progress(total=len(keys), desc=desc, unit="view", leave=False, disable=not info.is_main) as bar:
            for batch in loader:
                idx = batch["index"]
                v = torch.as_tensor(keys[done:done + len(idx)]) // n
                done += len(idx)
                with autocast(device):
                    cls, patches = model.tokens(batch["image"].to(device))
                cls, patches = cls.view(len(idx), 2, -1).cpu(), patches.reshape(len(idx), 2, *patches.shape[1:]).cpu()
                if self.cls is None:
                    per_image = cls[0].numel() * cls.element_size() + patches[0].numel() * patches.element_size()
                    check_fits(per_image * views * n, desc)
                    self.cls = torch.zeros(views, n, *cls.shape[1:], dtype=cls.dtype)
                    self.patches = torch.zeros(views, n, *patches.shape[1:], dtype=patches.dtype)
                    if "depth" in batch:
                        self.depth = torch.zeros(views, n, *batch["depth"].shape[1:])
                self.cls[v, idx], self.patches[v, idx] = cls, patches
                if self.depth is not None:
                    self.depth[v, idx] = batch["depth"]
                for k, t in batch.items():
                    if k not in ("image", "depth", "aos_view", "index"):
                        self.targets.setdefault(k, torch.zeros((n, *t.shape[1:]), dtype=t.dtype))[idx] = t
                bar.update(len(idx))
        for t in (self.cls, self.patches, self.depth, *self.targets.values()):
            if t is not None:
                sum_across_ranks(t, info)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.cls, self.patches, self.depth) if t is not None)

    def batch(self, idx: np.ndarray, views: np.ndarray) -> dict[str, torch.Tensor]:
        idx_t, views_t = torch.as_tensor(idx), torch.as_tensor(views)
        out = {"cls": self.cls[views_t, idx_t], "patches": self.patches[views_t, idx_t], "index": idx_t}
        if self.depth is not None:
            out["depth"] = self.depth[views_t, idx_t]
        out.update({k: t[idx_t] for k, t in self.targets.items()})
        return out


class CachedBatches:
    """Stands in for the training DataLoader in a cached stage: same sampler, same batches."""

    def __init__(self, cache: FeatureCache, sampler, batch_size: int, seed: int, mixup: Mixup | None = None):
        self.cache, self.sampler, self.batch_size, self.seed = cache, sampler, batch_size, seed
        self.mixup = mixup  # token-level: the same partners and weights the images would have had
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        order = np.fromiter(iter(self.sampler), dtype=np.int64)
        # One view per image and epoch, drawn from (seed, epoch, image): identical on every rank.
        views = np.random.default_rng([self.seed, self.epoch]).integers(0, self.cache.views, size=len(self.cache.cls[0]))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.cache.batch(idx, views[idx])
            if self.mixup is not None:
                partners, lam = self.mixup.plans(self.epoch, idx, len(views))
                batch = mix(batch, self.cache.batch(partners, views[partners]), lam)
            yield batch


class CachedValidation:
    """The validation set's unaugmented tokens, batched like the validation DataLoader."""

    def __init__(self, cache: FeatureCache, batch_size: int):
        self.cache, self.batch_size = cache, batch_size

    def __iter__(self):
        n = self.cache.cls.shape[1]
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, n))
            yield self.cache.batch(idx, np.zeros(len(idx), dtype=np.int64))
