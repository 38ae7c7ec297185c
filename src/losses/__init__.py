"""Loss terms composed from the config through a registry.

Each family is a module that registers a builder ``(cfg, stats) -> LossTerm | None`` (None when
its flag is off). The trainer only sees ``Criterion``: total loss plus one named component per
active term, which is what the per-epoch log and ``history.csv`` show.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..core.config import TrainConfig
from ..core.registry import Registry

REGISTRY = Registry()
register = REGISTRY.register


class LossTerm(nn.Module):
    """A named, weighted loss; ``forward(outputs, batch) -> scalar``, a mean over the batch's images.
    ``on_masses``: the term compares masses (or the model with itself), so a pseudo-labelled image
    trains it too; the others need a real image's own labels (height, NDVI, species, ...)."""

    on_masses = False

    def __init__(self, name: str, weight: float = 1.0):
        super().__init__()
        self.name, self.weight = name, weight


def _rows(d: dict, mask: torch.Tensor) -> dict:
    n = len(mask)
    return {k: v[mask] if torch.is_tensor(v) and v.dim() and len(v) == n else v for k, v in d.items()}


class Criterion(nn.Module):
    def __init__(self, terms: list[LossTerm], pseudo_weight: float = 1.0):
        super().__init__()
        self.terms = nn.ModuleList(terms)
        self.pseudo_weight = pseudo_weight

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pseudo = batch.get("is_pseudo")
        if pseudo is None or not bool(pseudo.any()):
            parts = {t.name: t(outputs, batch) for t in self.terms}
        else:
            parts = {t.name: self._weighted(t, outputs, batch, pseudo.bool()) for t in self.terms}
        total = sum(t.weight * parts[t.name] for t in self.terms)
        return total, parts

    def _weighted(self, term: LossTerm, outputs: dict, batch: dict, pseudo: torch.Tensor) -> torch.Tensor:
        """sum_i c_i * loss_i / batch size, c = 1 for a real image, --pseudo-weight (mass terms) or 0
        (the others) for a pseudo-labelled one. Divided by the batch size, not by sum c: every DDP
        rank's batch is the same size, so the mean over ranks is the one-process loss."""
        real, n = ~pseudo, len(pseudo)
        n_real, n_pseudo = int(real.sum()), n - int(real.sum())
        loss = term(outputs, batch) * 0.0  # keeps every head in the graph (DDP) when a group is empty
        if n_real:
            loss = loss + term(_rows(outputs, real), _rows(batch, real)) * (n_real / n)
        if term.on_masses:
            loss = loss + term(_rows(outputs, pseudo), _rows(batch, pseudo)) * (self.pseudo_weight * n_pseudo / n)
        return loss


def build_criterion(cfg: TrainConfig, stats: dict[str, torch.Tensor]) -> Criterion:
    from . import auxiliary, composition, regression  # noqa: F401  (register their builders)

    return Criterion(list(REGISTRY.build_all(cfg, stats).values()), cfg.pseudo_weight)
