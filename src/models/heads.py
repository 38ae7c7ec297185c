"""Heads on backbone tokens.

The density head scores every patch token (joined with its half's CLS token) with a small MLP
and a softplus, so each patch predicts a non-negative mass density; averaging patches gives the
half's mass. Public write-ups found such dense heads beat pooling the CLS token alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DensityHead(nn.Module):
    def __init__(self, dim: int, n_out: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(64, dim // 2)
        self.norm = nn.LayerNorm(2 * dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, n_out))

    def forward(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """patches (B, N, D), cls (B, D) -> per-patch densities (B, N, n_out) >= 0."""
        x = torch.cat([patches, cls[:, None].expand_as(patches)], dim=-1)
        return F.softplus(self.mlp(self.norm(x)))
