"""Loss terms composed from the config through a registry.

Each family is a module that registers a builder ``(cfg, stats) -> LossTerm | None`` (None when
its flag is off). The trainer only sees ``Criterion``: total loss plus one named component per
active term, which is what the per-epoch log and ``history.csv`` show.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from src.config import TrainConfig
from src.registry import Registry

REGISTRY = Registry()
register = REGISTRY.register


class LossTerm(nn.Module):
    """A named, weighted loss; ``forward(outputs, batch) -> scalar``."""

    def __init__(self, name: str, weight: float = 1.0):
        super().__init__()
        self.name, self.weight = name, weight


class Criterion(nn.Module):
    def __init__(self, terms: list[LossTerm]):
        super().__init__()
        self.terms = nn.ModuleList(terms)

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {t.name: t(outputs, batch) for t in self.terms}
        total = sum(t.weight * parts[t.name] for t in self.terms)
        return total, parts


def build_criterion(cfg: TrainConfig, stats: dict[str, torch.Tensor]) -> Criterion:
    from src.losses import auxiliary, composition, regression  # noqa: F401  (register their builders)

    return Criterion(list(REGISTRY.build_all(cfg, stats).values()))
