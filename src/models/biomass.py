"""The biomass model: one DINOv3 backbone shared by the left and right halves of a quadrat photo.

Each half's patches predict mass densities; a half's mass is their mean, the image's is the
mean of its halves (both halves show the same quadrat at the same scale). Three targets come
from the head, the other two are derived by the label relations (``targets.complete``), so the
five outputs are non-negative grams that obey GDM = Green + Clover and Total = GDM + Dead.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from src.config import TrainConfig
from src.models.backbone import create_backbone
from src.models.depth import DepthAttention, DepthFeatures
from src.models.heads import DensityHead
from src.targets import TARGETS, complete, direct_targets


class BiomassModel(nn.Module):
    def __init__(self, cfg: TrainConfig, target_scale: torch.Tensor | None = None, weights: str | None = None):
        """``target_scale``: std of each of the five targets (grams) on the training fold; the head
        predicts in these units so its initial outputs are the right size. ``weights`` overrides
        ``cfg.backbone_weights`` (prediction loads everything from our own checkpoint instead)."""
        super().__init__()
        self.backbone = create_backbone(
            cfg.backbone_size, cfg.backbone_weights if weights is None else weights, cfg.image_size, cfg.gradient_checkpointing
        )
        self.num_prefix = self.backbone.num_prefix_tokens
        self.direct = direct_targets(cfg.train_dead, cfg.train_clover)
        self.head = DensityHead(self.backbone.num_features, len(self.direct))
        self.depth_features = DepthFeatures(self.backbone.num_features) if cfg.use_depth else None
        self.depth_attention = DepthAttention() if cfg.use_depth and cfg.depth_attention else None
        scale = torch.ones(len(TARGETS)) if target_scale is None else torch.as_tensor(target_scale, dtype=torch.float32)
        self.register_buffer("target_scale", scale.clone())
        self._direct_idx = [TARGETS.index(t) for t in self.direct]
        self.backbone_frozen = False

    def freeze_backbone(self, frozen: bool) -> None:
        self.backbone_frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, 3, S, S) -> CLS (B*2, D) and patch tokens (B*2, N, D)."""
        flat = x.flatten(0, 1)
        if self.backbone_frozen:
            with torch.no_grad():  # Stage 1: no activations kept for a backbone that does not learn
                t = self.backbone.forward_features(flat)
        else:
            t = self.backbone.forward_features(flat)
        return t[:, 0], t[:, self.num_prefix:]

    @property
    def uses_depth(self) -> bool:
        return self.depth_features is not None

    def forward(self, x: torch.Tensor, depth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, 2, 3, S, S); depth (B, 2, 2, S/16, S/16) per-patch depth features when the model uses depth."""
        b = x.shape[0]
        cls, patches = self.tokens(x)
        if self.uses_depth:
            if depth is None:
                raise ValueError("this model was built with depth: pass the depth features")
            depth = depth.flatten(0, 1)
            patches = self.depth_features(patches, depth)
        density = self.head(patches, cls)  # (B*2, N, 3)
        if self.depth_attention is not None:
            pooled = (density * self.depth_attention(depth)[..., None]).sum(1)
        else:
            pooled = density.mean(1)
        scale = self.target_scale[self._direct_idx]
        per_half = (pooled * scale).view(b, 2, -1)  # grams, as if the half were the whole quadrat
        direct = per_half.mean(1)
        full = complete(dict(zip(self.direct, direct.unbind(-1))))
        return {"pred": torch.stack([full[t] for t in TARGETS], dim=-1), "per_half": per_half}
