"""The label-free objective: pixel-derived targets predicted from the backbone's tokens.

* dense: every patch token predicts, through one linear layer, the class fractions (green,
  clover, dead, soil/other) of the ``sub`` x ``sub`` cells of its patch (soft cross-entropy);
* image: the CLS token predicts, through one linear layer, the half's class fractions, their
  logarithms (coverage of a class falls off exponentially with its mass) and their spread over the
  patches (standardised; MSE), so the CLS carries the half's content instead of nothing.

Linear heads keep what the objective asks for linearly readable in the tokens, which is how the
ridge probe and the trainer's density head read them. The heads are discarded after training.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import MEAN, STD
from .data import N_CLASSES

LOG_EPS = 0.01


def image_targets(cells: torch.Tensor) -> torch.Tensor:
    """(N, 4, G, G) cell fractions -> (N, 12): the half's fractions, their logs and their spread."""
    frac = cells.mean((2, 3))
    return torch.cat([frac, torch.log(frac + LOG_EPS), cells.flatten(2).std(2)], 1)


class Objective(nn.Module):
    def __init__(self, backbone: nn.Module, sub: int = 1, image_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
                 cls_weight: float = 1.0):  # fmt: skip
        super().__init__()
        self.backbone, self.sub, self.cls_weight = backbone, sub, cls_weight
        dim, n_img = backbone.num_features, 3 * N_CLASSES
        self.num_prefix = backbone.num_prefix_tokens
        self.dense = nn.Linear(dim, N_CLASSES * sub * sub)
        self.image = nn.Linear(dim, n_img)
        mean, std = image_stats if image_stats is not None else (torch.zeros(n_img), torch.ones(n_img))
        self.register_buffer("img_mean", mean.float().clone())
        self.register_buffer("img_std", std.float().clamp(min=1e-6).clone())
        self.register_buffer("pixel_mean", torch.tensor(MEAN).view(3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(STD).view(3, 1, 1) * 255, persistent=False)

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (or 0..255 float) (N, 3, S, S) -> CLS (N, D), patches (N, P, D), as the trainer reads them."""
        t = self.backbone.forward_features((images.float() - self.pixel_mean) / self.pixel_std)
        return t[:, 0], t[:, self.num_prefix :]

    def forward(self, images: torch.Tensor, cells: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of a batch: ``images`` (N, 3, S, S), ``cells`` (N, 4, G, G) their targets."""
        cls, patches = self.tokens(images)
        n, g = images.shape[0], images.shape[-1] // 16
        s = self.sub
        logits = (
            self.dense(patches)
            .view(n, g, g, N_CLASSES, s, s)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(n, N_CLASSES, g * s, g * s)
        )
        dense = -(cells * F.log_softmax(logits, 1)).sum(1).mean()
        # minus the targets' own entropy: 0 at a perfect fit, whatever the cells' mixing
        floor = -(cells * torch.log(cells.clamp(min=1e-8))).sum(1).mean()
        z = (image_targets(cells) - self.img_mean) / self.img_std
        image = F.mse_loss(self.image(cls), z)
        return {"loss": dense + self.cls_weight * image, "dense_kl": dense - floor, "image_mse": image}
