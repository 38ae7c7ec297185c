"""The main regression loss on the five targets: SmoothL1 (default) or MSE on standardised grams.

Weights follow the metric (Green 0.1, Clover 0.1, GDM 0.2, Total 0.5); Dead is derived by
default and gets no weight unless ``--train-dead`` (the guide's "D=derived").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.losses import LossTerm, register
from src.targets import TARGETS, WEIGHTS


def regression_weights(train_dead: bool) -> torch.Tensor:
    w = torch.tensor([WEIGHTS[t] for t in TARGETS])
    if not train_dead:
        w[TARGETS.index("Dry_Dead_g")] = 0.0
    return w / w.sum()


class Regression(LossTerm):
    def __init__(self, smoothl1: bool, train_dead: bool, std: torch.Tensor):
        super().__init__("smoothl1" if smoothl1 else "mse")
        self.smoothl1 = smoothl1
        self.register_buffer("w", regression_weights(train_dead))
        self.register_buffer("std", std.clamp(min=1e-3))

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        err_pred = outputs["pred"] / self.std
        err_true = batch["targets"] / self.std
        if self.smoothl1:
            per = F.smooth_l1_loss(err_pred, err_true, reduction="none", beta=1.0)
        else:
            per = F.mse_loss(err_pred, err_true, reduction="none")
        return (per * self.w).sum(-1).mean()


@register("regression")
def build(cfg, stats):
    return Regression(cfg.smoothl1, cfg.train_dead, stats["std"])
