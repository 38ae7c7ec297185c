"""Losses on the shape and physics of the five-target vector.

- ``cosine`` (--use-cosine-sim): 1 - cos(predicted, true) of the five targets in the regression's
  space, so the composition (shares of green, dead, clover) is learned apart from the amount.
- ``compositional`` (--use-compositional): with a head per target, |GDM - (Green + Clover)| and
  |Total - (Green + Dead + Clover)| on the raw heads, in units of the Total's std.
- ``mass_balance`` (--use-mass-balance): the guide's "Green + Dead + Clover ≈ Total" as an
  equality, SmoothL1 on Total - (Green + Dead + Clover) and GDM - (Green + Clover) of the raw
  outputs, plus a hinge on negative raw masses. Derived targets obey the equalities by
  construction, so with the default heads only the hinge can act (a derived Dead below 0); with
  five free heads (--use-compositional, PlantHydra) the equalities act on every batch.
- ``qc`` (--use-qc-plausibility): implausible outputs: negative masses, Clover > GDM, GDM > Total,
  and values beyond 1.5x the training fold's maximum.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..core.targets import TARGETS
from . import LossTerm, register
from .regression import Space

G, D, C, GDM, T = (TARGETS.index(t) for t in ("Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g", "GDM_g", "Dry_Total_g"))
QC_MAX_FACTOR = 1.5


class Cosine(LossTerm):
    on_masses = True

    def __init__(self, cfg, stats):
        super().__init__("cosine", cfg.cosine_weight)
        self.space = Space(stats, cfg.use_log_transform)

    def forward(self, outputs, batch):
        return (1 - F.cosine_similarity(self.space(outputs["raw"]), self.space(batch["targets"]), dim=-1, eps=1e-6)).mean()


class _OnRaw(LossTerm):
    """Penalties on the raw (unclipped, unreconciled) outputs, in units of the Total's std."""
    on_masses = True

    def __init__(self, name, weight, stats):
        super().__init__(name, weight)
        self.unit = float(stats["std"][T].clamp(min=1e-3))


class Compositional(_OnRaw):
    def __init__(self, cfg, stats):
        super().__init__("compositional", cfg.compositional_weight, stats)

    def forward(self, outputs, batch):
        r = outputs["raw"]
        gap = (r[:, GDM] - r[:, G] - r[:, C]).abs() + (r[:, T] - r[:, G] - r[:, D] - r[:, C]).abs()
        return gap.mean() / self.unit


class MassBalance(_OnRaw):
    def __init__(self, cfg, stats):
        super().__init__("mass_balance", cfg.mass_balance_weight, stats)

    def forward(self, outputs, batch):
        r = outputs["raw"] / self.unit
        zero = r.new_zeros(len(r))
        gaps = F.smooth_l1_loss(r[:, T] - r[:, G] - r[:, D] - r[:, C], zero, reduction="none") + F.smooth_l1_loss(
            r[:, GDM] - r[:, G] - r[:, C], zero, reduction="none")
        return (gaps + F.relu(-r).sum(-1)).mean()


class Plausibility(_OnRaw):
    def __init__(self, cfg, stats):
        super().__init__("qc", cfg.qc_weight, stats)
        self.register_buffer("limit", QC_MAX_FACTOR * stats["max"].float())

    def forward(self, outputs, batch):
        r = outputs["raw"]
        bad = F.relu(-r).sum(-1) + F.relu(r[:, C] - r[:, GDM]) + F.relu(r[:, GDM] - r[:, T]) + F.relu(r - self.limit).sum(-1)
        return bad.mean() / self.unit


@register("cosine")
def _cosine(cfg, stats):
    return Cosine(cfg, stats) if cfg.use_cosine_sim else None


@register("compositional")
def _compositional(cfg, stats):
    return Compositional(cfg, stats) if cfg.use_compositional else None


@register("mass_balance")
def _mass_balance(cfg, stats):
    return MassBalance(cfg, stats) if cfg.use_mass_balance else None


@register("qc")
def _qc(cfg, stats):
    return Plausibility(cfg, stats) if cfg.use_qc_plausibility else None
