"""What a model learns from its training fold besides weights: target statistics, vocabularies,
the species->biomass prior, and the standardised auxiliary targets (height, NDVI, species, State).

Computed from the training fold only, so validation images never leak into them. Statistics
become model buffers (saved in the checkpoint); vocabularies are saved beside it as JSON.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core.targets import TARGETS

MIN_SPECIES_IMAGES = 3  # rarer species share the "other" class
OTHER = "other"
QUANTILE_BINS = 7  # --use-quantile-heads: bins per target, as the 1st place used


def quantile_edges(y: np.ndarray) -> np.ndarray:
    """(N, 5) training masses -> (5, QUANTILE_BINS-1) bin edges: each target's quantiles, so every
    bin holds an equal share of the images. A target absent from 1 image in QUANTILE_BINS or more
    (Clover, ~60% zeros) would get several edges at 0 and leave their bins empty (3 of 7 bins
    used): there bin 0 holds the zeros and the other bins cut the positive masses at their quantiles."""
    q = np.arange(1, QUANTILE_BINS) / QUANTILE_BINS
    edges = np.ascontiguousarray(np.quantile(y, q, axis=0).T)
    for k in range(y.shape[1]):
        pos = y[y[:, k] > 0, k]
        if edges[k, 0] <= 0 and len(pos):
            edges[k] = np.r_[0.0, np.quantile(pos, np.arange(1, QUANTILE_BINS - 1) / (QUANTILE_BINS - 1))]
    return edges


def quantile_bins(y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N, 5) masses -> (N, 5) bin indices 0..QUANTILE_BINS-1 given (5, QUANTILE_BINS-1) edges: bin
    k holds edges[k-1] < y <= edges[k] (so a zero edge keeps the zeros in bin 0). The loss bins the
    batch's masses the same way (``torch.bucketize``), mixed ones included."""
    return np.stack([np.searchsorted(edges[k], y[:, k], side="left") for k in range(y.shape[1])], 1).astype(np.int64)


def vocabularies(train: pd.DataFrame) -> dict[str, list[str]]:
    counts = train["Species"].value_counts()
    return {"species": sorted(counts[counts >= MIN_SPECIES_IMAGES].index.tolist()) + [OTHER],
            "states": sorted(train["State"].unique().tolist())}  # fmt: skip


def species_index(species: pd.Series, vocab: list[str]) -> np.ndarray:
    index = {s: i for i, s in enumerate(vocab)}
    return species.map(lambda s: index.get(s, index[OTHER])).to_numpy(np.int64)


def fold_statistics(train: pd.DataFrame, extras: dict) -> dict[str, torch.Tensor]:
    y = train[list(TARGETS)].to_numpy(np.float64)
    log_h = np.log1p(train["Height_Ave_cm"].to_numpy(np.float64))
    ndvi = train["Pre_GSHH_NDVI"].to_numpy(np.float64)
    sp = species_index(train["Species"], extras["species"])
    prior = np.stack([y[sp == k].mean(0) if (sp == k).any() else y.mean(0) for k in range(len(extras["species"]))])
    states = {s: i for i, s in enumerate(extras["states"])}
    state = train["State"].map(states).to_numpy(np.int64)
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    edges = quantile_edges(y)  # (5, bins - 1)
    bins = quantile_bins(y, edges)
    return {
        "mean": t(y.mean(0)),
        "log_mean": t(np.log1p(y).mean(0)),
        "std": t(np.maximum(y.std(0, ddof=1), 1e-3)),
        "log_std": t(np.maximum(np.log1p(y).std(0, ddof=1), 1e-3)),
        "max": t(y.max(0)),
        # Class priors, where classification heads start: P(Dead > 0), P(Clover > 0); species; State.
        "presence": t([(y[:, TARGETS.index(k)] > 0).mean() for k in ("Dry_Dead_g", "Dry_Clover_g")]),
        "species_freq": t(np.bincount(sp, minlength=len(extras["species"])) / len(sp)),
        "state_freq": t(np.bincount(state, minlength=len(extras["states"])) / len(state)),
        "aux": t([log_h.mean(), max(log_h.std(), 1e-3), ndvi.mean(), max(ndvi.std(), 1e-3)]),
        "species_prior": t(prior),
        "quantile_edges": t(edges),
        "quantile_freq": t(np.stack([np.bincount(bins[:, k], minlength=QUANTILE_BINS) / len(y) for k in range(5)])),
    }


def aux_targets(images: pd.DataFrame, stats: dict, extras: dict) -> dict[str, np.ndarray]:
    """Per-image targets of the auxiliary heads, standardised with the training fold's statistics."""
    mu_h, sd_h, mu_n, sd_n = stats["aux"].tolist()
    states = {s: i for i, s in enumerate(extras["states"])}
    return {
        "height": ((np.log1p(images["Height_Ave_cm"].to_numpy(np.float64)) - mu_h) / sd_h).astype(np.float32),
        "ndvi": ((images["Pre_GSHH_NDVI"].to_numpy(np.float64) - mu_n) / sd_n).astype(np.float32),
        "species": species_index(images["Species"], extras["species"]),
        "state": images["State"].map(lambda s: states.get(s, -1)).to_numpy(np.int64),  # -1: ignored by the loss
    }
