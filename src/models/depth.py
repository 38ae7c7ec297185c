"""How depth enters the model.

``DepthFeatures`` adds a projection of each patch's depth statistics (mean, std) to its patch
token. ``DepthAttention`` replaces the plain mean over patch densities by a softmax-weighted
mean whose weights a small MLP computes from local depth, so the model can learn to count taller
vegetation more. Both start as no-ops (zero-initialised last layers), so turning depth on never
starts training from a worse model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

N_DEPTH_FEATURES = 2  # per-patch mean and std (src.data.transforms.depth_patch_features)


def _tokens(depth: torch.Tensor) -> torch.Tensor:
    """(B*2, F, G, G) -> (B*2, G*G, F), row-major like the ViT's patch tokens."""
    return depth.flatten(2).transpose(1, 2)


class DepthFeatures(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(N_DEPTH_FEATURES, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, patches: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return patches + self.proj(_tokens(depth).to(patches.dtype))


class DepthAttention(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(N_DEPTH_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        """Pooling weights (B*2, G*G) that sum to 1 over each half's patches."""
        return torch.softmax(self.score(_tokens(depth)).squeeze(-1), dim=-1)
