"""Losses of the auxiliary tasks: training-only signals distilled into heads, and consistency.

- ``height`` / ``ndvi`` (--use-height-head / --use-ndvi-head): SmoothL1 on standardised
  log1p(Height_Ave_cm) / Pre_GSHH_NDVI.
- ``species`` (--use-species-head) and ``state`` (--use-state-scaling): cross-entropy; images
  whose class the training fold never saw are ignored.
- ``presence`` (--use-presence-heads): BCE of Dead > 0 and Clover > 0.
- ``quantile`` (--use-quantile-heads): cross-entropy of each target's bin among 7 cut at the
  training fold's quantiles (``fold_stats.quantile_edges``), averaged over the five targets; the
  bin is that of the batch's mass, so under mixup the mixed mass's.
- ``aos`` (--use-aos-hallucination): the NDVI head must agree across two photometric views of an
  image and match the sensor on the second view too: lighting-invariant NDVI from RGB.
- ``cross_view`` (--use-cross-view-consistency): the two halves' per-area predictions (they show
  adjacent ground of one quadrat) are pulled together, in units of each target's std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.targets import TARGETS
from . import LossTerm, register

STATE_WEIGHT = 0.1  # the guide gives no flag; same as the species head's default
PRESENCE_WEIGHT = 0.1
_PRESENT = [TARGETS.index("Dry_Dead_g"), TARGETS.index("Dry_Clover_g")]


class Regress(LossTerm):
    def __init__(self, name, weight):
        super().__init__(name, weight)

    def forward(self, outputs, batch):
        return F.smooth_l1_loss(outputs[self.name].squeeze(-1), batch[self.name])


class Classify(LossTerm):
    def forward(self, outputs, batch):
        target = batch[self.name]
        if (target < 0).all():
            return outputs[self.name].sum() * 0.0
        return F.cross_entropy(outputs[self.name], target, ignore_index=-1)


class Presence(LossTerm):
    def __init__(self):
        super().__init__("presence", PRESENCE_WEIGHT)

    def forward(self, outputs, batch):
        return F.binary_cross_entropy_with_logits(outputs["presence"], (batch["targets"][:, _PRESENT] > 0).float())


class QuantileBins(LossTerm):
    """The target bins are those of the batch's masses, binned here as ``fold_stats.quantile_bins``
    bins them: under mixup the bin is the mixed mass's, the mass the regression loss is given."""

    def __init__(self, weight, stats):
        super().__init__("quantile", weight)
        self.register_buffer("edges", stats["quantile_edges"].float().clone(memory_format=torch.contiguous_format))

    def bins(self, targets):
        """(B, 5) masses -> (B, 5) bin indices, as ``fold_stats.quantile_bins``."""
        return torch.stack([torch.bucketize(targets[:, k].float().contiguous(), self.edges[k])
                            for k in range(len(self.edges))], 1)  # fmt: skip

    def forward(self, outputs, batch):
        logits = outputs["quantile"]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1] // 5), self.bins(batch["targets"]).reshape(-1))


class Aos(LossTerm):
    def __init__(self, weight):
        super().__init__("aos", weight)

    def forward(self, outputs, batch):
        if "ndvi_aos" not in outputs:  # evaluation: one view only
            return outputs["ndvi"].sum() * 0.0
        other, first = outputs["ndvi_aos"].squeeze(-1), outputs["ndvi"].squeeze(-1)
        return F.smooth_l1_loss(other, first) + F.smooth_l1_loss(other, batch["ndvi"])


class CrossView(LossTerm):
    on_masses = True

    def __init__(self, cfg, stats):
        super().__init__("cross_view", cfg.cross_view_weight)
        from ..models.biomass import direct_heads

        idx = [TARGETS.index(t) for t in direct_heads(cfg)]
        self.register_buffer("unit", stats["std"][idx].clamp(min=1e-3).float())

    def forward(self, outputs, batch):
        halves = outputs["per_half"] / self.unit
        return F.smooth_l1_loss(halves[:, 0], halves[:, 1])


@register("height")
def _height(cfg, stats):
    return Regress("height", cfg.height_weight) if cfg.use_height_head else None


@register("ndvi")
def _ndvi(cfg, stats):
    return Regress("ndvi", cfg.ndvi_weight) if cfg.use_ndvi_head else None


@register("species")
def _species(cfg, stats):
    return Classify("species", cfg.aux_species_weight) if cfg.use_species_head else None


@register("state")
def _state(cfg, stats):
    return Classify("state", STATE_WEIGHT) if cfg.use_state_scaling else None


@register("presence")
def _presence(cfg, stats):
    return Presence() if cfg.use_presence_heads else None


@register("quantile")
def _quantile(cfg, stats):
    return QuantileBins(cfg.quantile_weight, stats) if cfg.use_quantile_heads else None


@register("aos")
def _aos(cfg, stats):
    return Aos(cfg.aos_weight) if cfg.use_aos_hallucination else None


@register("cross_view")
def _cross_view(cfg, stats):
    return CrossView(cfg, stats) if cfg.use_cross_view_consistency else None
