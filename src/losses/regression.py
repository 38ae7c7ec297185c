"""The main regression loss on the five targets, and the two losses that replace or refine it.

- ``smoothl1`` / ``mse`` (``_log`` with --use-log-transform): SmoothL1 (default) or MSE on
  standardised grams, or on standardised log1p(grams). All five targets at the metric's weights
  (Green 0.1, Dead 0.1, Clover 0.1, GDM 0.2, Total 0.5), derived ones included: a derived
  target's loss trains the heads it is made of (Dead = Total - GDM trains the Total, Green and
  Clover heads). Dead moves to ``huber_dead`` with --use-huber.

Every term compares the model's ``raw`` outputs, never the clipped masses it reports: a clip at
0 has zero gradient, and on a derived Dead it cut the Total head off from the loss.
- ``nll`` (--use-uncertainty): Gaussian negative log-likelihood with predicted log-variances,
  in place of the regression loss.
- ``huber_dead`` (--use-huber): Huber loss on Dead, outlier robust, in standardised grams like
  the other terms (--huber-delta is in grams and is standardised alike).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.targets import TARGETS, WEIGHTS
from . import LossTerm, register

DEAD = TARGETS.index("Dry_Dead_g")


def regression_weights(cfg) -> torch.Tensor:
    w = torch.tensor([WEIGHTS[t] for t in TARGETS])
    if cfg.use_huber:
        w[DEAD] = 0.0
    return w


def log1p_linear(x: torch.Tensor) -> torch.Tensor:
    """log1p(x) for x >= 0 and x below (its tangent at 0): a raw derived mass below 0 keeps a
    gradient that pushes it back, where log1p(clamp(x, 0)) would have none."""
    return torch.where(x > 0, torch.log1p(x.clamp(min=0)), x)


class Space(torch.nn.Module):
    """Standardised grams, or standardised log1p(grams): where every loss on masses compares.
    Scaled, not centred: the terms compare differences or directions, and a direction (cosine)
    needs zero mass at the origin."""

    def __init__(self, stats: dict, log: bool):
        super().__init__()
        self.log = log
        self.register_buffer("scale", (stats["log_std"] if log else stats["std"]).clamp(min=1e-3).float())

    def forward(self, grams: torch.Tensor) -> torch.Tensor:
        return (log1p_linear(grams) if self.log else grams) / self.scale


class Regression(LossTerm):
    on_masses = True

    def __init__(self, cfg, stats):
        super().__init__(("smoothl1" if cfg.smoothl1 else "mse") + ("_log" if cfg.use_log_transform else ""))
        self.smoothl1 = cfg.smoothl1
        self.space = Space(stats, cfg.use_log_transform)
        self.register_buffer("w", regression_weights(cfg))

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        p, y = self.space(outputs["raw"]), self.space(batch["targets"])
        per = F.smooth_l1_loss(p, y, reduction="none") if self.smoothl1 else F.mse_loss(p, y, reduction="none")
        return (per * self.w).sum(-1).mean()


class GaussianNLL(LossTerm):
    on_masses = True

    def __init__(self, cfg, stats):
        super().__init__("nll")
        self.space = Space(stats, cfg.use_log_transform)
        self.register_buffer("w", regression_weights(cfg))

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        p, y = self.space(outputs["raw"]), self.space(batch["targets"])
        logvar = outputs["logvar"].clamp(-10, 10)
        per = 0.5 * (logvar + (p - y) ** 2 * torch.exp(-logvar))
        return (per * self.w).sum(-1).mean()


class HuberDead(LossTerm):
    on_masses = True

    def __init__(self, cfg, stats):
        super().__init__("huber_dead", WEIGHTS["Dry_Dead_g"])
        self.scale = float(stats["std"][DEAD].clamp(min=1e-3))
        self.delta = cfg.huber_delta / self.scale

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        dead, true = outputs["raw"][:, DEAD] / self.scale, batch["targets"][:, DEAD] / self.scale
        return F.huber_loss(dead, true, delta=self.delta)


@register("regression")
def _regression(cfg, stats):
    return GaussianNLL(cfg, stats) if cfg.use_uncertainty else Regression(cfg, stats)


@register("huber_dead")
def _huber(cfg, stats):
    return HuberDead(cfg, stats) if cfg.use_huber else None
