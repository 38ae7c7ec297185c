"""Mixup of two training images and their targets (--mixup-alpha, --mixup-prob).

Whether an image is mixed, with which partner and how much is drawn from (seed, epoch, image)
alone, never from the batch it lands in, so under DDP every rank mixes its images exactly as one
process would, and a resumed run as the uninterrupted one. Pixels (or, in a frozen-backbone stage,
the cached tokens), depth features and masses are interpolated; class labels (species, State)
are the dominant image's. The quantile bins are not labels of their own: the loss bins the mixed
mass (``losses.auxiliary.QuantileBins``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIXED = ("image", "aos_view", "depth", "targets", "height", "ndvi", "cls", "patches")  # interpolated


@dataclass(frozen=True)
class Mixup:
    alpha: float
    prob: float
    seed: int

    @classmethod
    def of(cls, cfg, seed: int) -> Mixup | None:
        return cls(cfg.mixup_alpha, cfg.mixup_prob, seed) if cfg.mixup_alpha > 0 else None

    def plan(self, epoch: int, i: int, n: int) -> tuple[int, float] | None:
        """(partner, weight of image ``i``) or None (not mixed this epoch)."""
        rng = np.random.default_rng([self.seed, epoch, i, 0x6D6978])
        if n < 2 or rng.random() >= self.prob:
            return None
        j = int(rng.integers(n - 1))
        return j + (j >= i), float(rng.beta(self.alpha, self.alpha))

    def plans(self, epoch: int, rows, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Partners and weights for several rows (an unmixed row is its own partner, weight 1)."""
        out = [self.plan(epoch, int(i), n) or (int(i), 1.0) for i in rows]
        return np.array([j for j, _ in out], dtype=np.int64), np.array([w for _, w in out], dtype=np.float32)


def mix(a: dict, b: dict, lam) -> dict:
    """``lam`` * a + (1 - lam) * b for the interpolated keys (``lam`` a float, or one per row of a
    batch); the other keys (labels) from a where lam >= 0.5, else from b; ``index`` stays a's."""
    lam_t = torch.as_tensor(lam, dtype=torch.float32)
    out = {}
    for key, va in a.items():
        if key == "index":
            out[key] = va
            continue
        vb = b[key]
        w = lam_t.view(-1, *[1] * (va.dim() - 1)) if lam_t.dim() else lam_t
        if key in MIXED:
            out[key] = w * va.float() + (1 - w) * vb.float()
        else:
            out[key] = torch.where(w >= 0.5, va, vb) if lam_t.dim() else (va if lam >= 0.5 else vb)
    return out


def as_float(item: dict) -> dict:
    """An unmixed item in the dtypes of a mixed one, so both collate into one batch."""
    return {k: v.float() if k in MIXED else v for k, v in item.items()}
