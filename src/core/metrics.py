"""The competition metric (globally weighted R^2) and the diagnostics reported beside it.

All functions take arrays of shape (N, 5) with columns in ``targets.TARGETS`` order, in grams.
"""

from __future__ import annotations

import numpy as np

from .targets import SHORT, TARGETS, WEIGHTS

_W = np.array([WEIGHTS[t] for t in TARGETS], dtype=np.float64)


def _as2d(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(TARGETS):
        raise ValueError(f"expected shape (N, {len(TARGETS)}), got {a.shape}")
    return a


def weighted_r2(y_true, y_pred) -> float:
    """One R^2 over all (image, target) cells, each weighted by its target's weight (raw grams).

    y_w = sum(w*y)/sum(w); SS_res = sum(w*(y-yhat)^2); SS_tot = sum(w*(y-y_w)^2).
    """
    y, p = _as2d(y_true), _as2d(y_pred)
    w = np.broadcast_to(_W, y.shape)
    mean = (w * y).sum() / w.sum()
    ss_res = (w * (y - p) ** 2).sum()
    ss_tot = (w * (y - mean) ** 2).sum()
    return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def r2(y_true, y_pred) -> float:
    y, p = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    ss_tot = ((y - y.mean()) ** 2).sum()
    return float(1.0 - ((y - p) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def per_target_r2(y_true, y_pred) -> dict[str, float]:
    y, p = _as2d(y_true), _as2d(y_pred)
    return {t: r2(y[:, i], p[:, i]) for i, t in enumerate(TARGETS)}


def weighted_r2_log(y_true, y_pred) -> float:
    """The dataset paper's variant: per-target R^2 on log1p(grams), averaged by target weight."""
    y = np.log1p(np.clip(_as2d(y_true), 0, None))
    p = np.log1p(np.clip(_as2d(y_pred), 0, None))
    scores = np.array([r2(y[:, i], p[:, i]) for i in range(len(TARGETS))])
    return float((scores * _W).sum() / _W.sum())


def per_group_r2(y_true, y_pred, groups) -> dict[str, float]:
    """weighted_r2 within each group (e.g. State); groups with < 2 images are skipped."""
    y, p, g = _as2d(y_true), _as2d(y_pred), np.asarray(groups)
    out = {}
    for name in sorted(set(g.tolist())):
        m = g == name
        if m.sum() >= 2:
            out[str(name)] = weighted_r2(y[m], p[m])
    return out


def summary(y_true, y_pred, groups=None) -> dict[str, float]:
    """Everything the trainer logs: weighted_r2, its log variant, r2_<target> and r2_state_<S>."""
    out = {"weighted_r2": weighted_r2(y_true, y_pred), "weighted_r2_log": weighted_r2_log(y_true, y_pred)}
    out.update({f"r2_{SHORT[t]}": v for t, v in per_target_r2(y_true, y_pred).items()})
    if groups is not None:
        out.update({f"r2_state_{k}": v for k, v in per_group_r2(y_true, y_pred, groups).items()})
    return out
