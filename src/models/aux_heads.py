"""Auxiliary heads on the pooled image feature, composed from the config through a registry.

Each builder returns a head (or None when its flag is off); the model runs every head and puts
its output under the head's name. Targets these heads learn (height, NDVI, species, State,
presence) exist for training images only; at test time the heads still predict them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..core.config import TrainConfig
from ..core.registry import Registry
from ..data.fold_stats import QUANTILE_BINS

REGISTRY = Registry()
register = REGISTRY.register


def mlp(dim: int, n_out: int) -> nn.Module:
    hidden = max(32, dim // 4)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, n_out))


@register("height")
def _height(cfg: TrainConfig, dim: int, extras: dict):
    return mlp(dim, 1) if cfg.use_height_head else None  # standardised log1p(Height_Ave_cm)


@register("ndvi")
def _ndvi(cfg, dim, extras):
    return mlp(dim, 1) if cfg.use_ndvi_head else None  # standardised Pre_GSHH_NDVI


@register("species")
def _species(cfg, dim, extras):
    return mlp(dim, len(extras["species"])) if cfg.use_species_head else None


@register("state")
def _state(cfg, dim, extras):
    return mlp(dim, len(extras["states"])) if cfg.use_state_scaling else None


@register("presence")
def _presence(cfg, dim, extras):
    return mlp(dim, 2) if cfg.use_presence_heads else None  # logits: Dead > 0, Clover > 0


@register("quantile")
def _quantile(cfg, dim, extras):
    return mlp(dim, 5 * QUANTILE_BINS) if cfg.use_quantile_heads else None  # logits, (5 targets x bins)


@register("logvar")
def _logvar(cfg, dim, extras):
    return mlp(dim, 5) if cfg.use_uncertainty else None  # log-variance of the five standardised targets


def build_aux_heads(cfg: TrainConfig, dim: int, extras: dict) -> nn.ModuleDict:
    return nn.ModuleDict(REGISTRY.build_all(cfg, dim, extras))


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-3, 1 - 1e-3)
    return torch.log(p) - torch.log1p(-p)


# What each head outputs before it has learnt anything: the data's own answer without the photo.
# Regression heads learn standardised targets (mean 0); the log-variance head starts at the
# variance of a prediction at the mean (1 in standardised units); classifiers at the class prior.
START = {
    "height": lambda stats: torch.zeros(1),
    "ndvi": lambda stats: torch.zeros(1),
    "logvar": lambda stats: torch.zeros(5),
    "species": lambda stats: torch.log(stats["species_freq"].clamp(min=1e-3)),
    "state": lambda stats: torch.log(stats["state_freq"].clamp(min=1e-3)),
    "presence": lambda stats: _logit(stats["presence"]),
    "quantile": lambda stats: torch.log(stats["quantile_freq"].clamp(min=1e-3)).flatten(),
}


@torch.no_grad()
def start_at_data(heads: nn.ModuleDict, stats: dict) -> None:
    """Zero each head's last layer and set its bias to the head's ``START`` value."""
    for name, head in heads.items():
        last = head[-1]
        last.weight.zero_()
        last.bias.copy_(START[name](stats).to(last.bias))
