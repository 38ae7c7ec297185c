"""The main regression loss on the five targets, and the two losses that replace or refine it.

- ``smoothl1`` / ``mse`` (``_log`` with --use-log-transform): SmoothL1 (default) or MSE on
  standardised grams, or on standardised log1p(grams). Weights follow the metric (Green 0.1,
  Clover 0.1, GDM 0.2, Total 0.5); Dead is derived by default and gets weight only when it has a
  head (--train-dead or --use-compositional), and moves to ``huber_dead`` with --use-huber.
- ``nll`` (--use-uncertainty): Gaussian negative log-likelihood with predicted log-variances,
  in place of the regression loss.
- ``huber_dead`` (--use-huber): Huber loss on Dead in grams (--huber-delta), outlier robust.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.losses import LossTerm, register
from src.targets import TARGETS, WEIGHTS

DEAD = TARGETS.index("Dry_Dead_g")


def regression_weights(cfg) -> torch.Tensor:
    w = torch.tensor([WEIGHTS[t] for t in TARGETS])
    if not (cfg.train_dead or cfg.use_compositional) or cfg.use_huber:
        w[DEAD] = 0.0
    return w


class Space(torch.nn.Module):
    """Standardised grams, or standardised log1p(grams): where regression losses compare."""

    def __init__(self, stats: dict, log: bool):
        super().__init__()
        self.log = log
        self.register_buffer("scale", (stats["log_std"] if log else stats["std"]).clamp(min=1e-3).float())

    def forward(self, grams: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(grams.clamp(min=0)) if self.log else grams) / self.scale


class Regression(LossTerm):
    def __init__(self, cfg, stats):
        super().__init__(("smoothl1" if cfg.smoothl1 else "mse") + ("_log" if cfg.use_log_transform else ""))
        self.smoothl1 = cfg.smoothl1
        self.key = "raw" if cfg.use_compositional else "pred"  # each of five heads learns its own target
        self.space = Space(stats, cfg.use_log_transform)
        self.register_buffer("w", regression_weights(cfg))

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        p, y = self.space(outputs[self.key]), self.space(batch["targets"])
        per = F.smooth_l1_loss(p, y, reduction="none") if self.smoothl1 else F.mse_loss(p, y, reduction="none")
        return (per * self.w).sum(-1).mean()


class GaussianNLL(LossTerm):
    def __init__(self, cfg, stats):
        super().__init__("nll")
        self.key = "raw" if cfg.use_compositional else "pred"
        self.space = Space(stats, cfg.use_log_transform)
        self.register_buffer("w", regression_weights(cfg))

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        p, y = self.space(outputs[self.key]), self.space(batch["targets"])
        logvar = outputs["logvar"].clamp(-10, 10)
        per = 0.5 * (logvar + (p - y) ** 2 * torch.exp(-logvar))
        return (per * self.w).sum(-1).mean()


class HuberDead(LossTerm):
    def __init__(self, cfg, stats):
        super().__init__("huber_dead", WEIGHTS["Dry_Dead_g"])
        self.delta = cfg.huber_delta
        self.scale = float(stats["std"][DEAD].clamp(min=1e-3))

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        dead = outputs["pred"][:, DEAD]
        return F.huber_loss(dead, batch["targets"][:, DEAD], delta=self.delta) / self.scale


@register("regression")
def _regression(cfg, stats):
    return GaussianNLL(cfg, stats) if cfg.use_uncertainty else Regression(cfg, stats)


@register("huber_dead")
def _huber(cfg, stats):
    return HuberDead(cfg, stats) if cfg.use_huber else None
