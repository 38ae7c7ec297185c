"""Post-processing of the ensemble's predictions, fitted on OOF predictions and kept only where nested CV says so.

The competition's winners tuned such rules by hand in notebooks. Here each is fitted on the blended OOF
predictions and kept only if nested CV shows a gain that is not noise (the keep rule below). Tried greedily in
this fixed order:

1. ``shrink``: one multiplicative factor per component (the winners' Clover x 0.8), non-negative least squares.
2. ``zero_small``: per component, predictions below a threshold (one of ``ZERO_QUANTILES`` of the OOF
   predictions, or none) are set to 0.
3. ``state_rule``: a logistic-regression State classifier on log1p of the input components; for a State whose
   training Dead (or Clover) is always 0, that component is set to 0 where P(State) >= a threshold from
   ``PROB_GRID``. Test images have no State, so the rule needs the predicted one.
4. ``calibrate``: a + b * pred per component (least squares), clipped at 0. An exact 0 stays 0: the intercept
   applies (and is fitted) only where the prediction is not 0, so it cannot undo steps 2-3.

Every fit minimises the metric's weighted squared error over all five targets. The steps act on the three
direct components Green, Dead and Clover only, and GDM = Green + Clover, Total = GDM + Dead are re-derived
afterwards (the input's GDM and Total are ignored): five free adjustments would break the label relations,
while through the components a change to Clover moves GDM and Total with it, as the truth does. Outputs are >= 0.

Nested CV: for each fold of the OOF ``fold`` column, the kept steps and then the candidate are fitted in order
on the other folds and applied to that fold; the concatenated predictions are scored with and without the
candidate. Keep rule: a step is kept only when its gain (pooled nested-CV weighted R^2 with minus without) is
> 0 AND the mean of its per-fold gains (weighted R^2 of each fold's rows, with minus without) exceeds
``KEEP_SE`` times their standard error across folds (std with ddof=1 / sqrt(n_folds)): a gain that one fold
makes and the others do not is noise. Final parameters are fitted on all OOF rows.

The nested score of the kept chain chose the steps, so it is optimistic (the selection score,
``oof_weighted_r2_after``). The honest score, ``oof_weighted_r2_honest``, puts the whole fit in an outer CV
over the same folds: for each fold k the selection (with its own inner nested CV) and the parameter fit run on
the other folds only, and the chain they give post-processes fold k. With fewer than 2 inner folds (a 2-fold
OOF) no step is kept in that outer fold. ``apply`` is pure numpy (no sklearn, no pickle: the classifier's
coefficients are in the JSON), so the Kaggle inference package can run it.

    python -m src.postprocess --oof results/ensemble/oof.parquet --out results/ensemble/postprocess.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.metrics import weighted_r2
from ..core.targets import COMPOSITION, TARGETS, WEIGHTS
from .oof import PRED, TRUE

COMPONENTS: tuple[str, ...] = TARGETS[:3]  # Green, Dead, Clover: TARGETS begins with the components
KEEP_SE = 1.0  # a kept step's mean per-fold gain exceeds this many standard errors of it (and its pooled gain 0)
KEEP_RULE = f"gain > 0 and mean(fold_gains) > {KEEP_SE:g} * gain_se (gain_se = std(fold_gains, ddof=1) / sqrt(n_folds))"
ZERO_QUANTILES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
PROB_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_STATE_IMAGES = 5  # a State seen on fewer training images says nothing about "always 0"
_SQRT_W = np.sqrt(np.array([WEIGHTS[t] for t in TARGETS]))
_A = np.array(COMPOSITION, dtype=np.float64)  # (5, 3): each target as a sum of components


def expand(c: np.ndarray) -> np.ndarray:
    """Components (N, 3) -> five targets (N, 5); the sums written out so that the relations hold exactly."""
    g, d, k = c.T
    return np.column_stack([g, d, k, g + k, g + k + d])


def _sse(c, y) -> float:
    return float(((_SQRT_W * (expand(c) - y)) ** 2).sum())


def _lin(c: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N*5, 3): how a unit of each column moves the five weighted targets (a least-squares design)."""
    return (c[:, None, :] * _A[None] * _SQRT_W[None, :, None]).reshape(-1, 3)


def _vec(d: dict) -> np.ndarray:
    return np.array([d[t] for t in COMPONENTS], dtype=np.float64)


def _fit_shrink(c, raw, y, state) -> dict:
    from scipy.optimize import nnls  # fit-time only: apply stays numpy

    s, _ = nnls(_lin(c), (y * _SQRT_W).ravel())
    return {"factor": dict(zip(COMPONENTS, s.tolist()))}


def _apply_shrink(c, raw, p):
    return c * _vec(p["factor"])


def _fit_calibrate(c, raw, y, state) -> dict:
    x = np.hstack([_lin(c), _lin((c > 0).astype(np.float64))])  # intercept only where the prediction is not 0
    coef = np.linalg.lstsq(x, (y * _SQRT_W).ravel(), rcond=None)[0]
    return {"slope": dict(zip(COMPONENTS, coef[:3].tolist())), "intercept": dict(zip(COMPONENTS, coef[3:].tolist()))}


def _apply_calibrate(c, raw, p):
    return np.where(c > 0, np.clip(_vec(p["intercept"]) + _vec(p["slope"]) * c, 0, None), 0.0)


def _apply_zero(c, raw, p):
    return np.where(c < _vec(p["threshold"]), 0.0, c)


def _fit_zero(c, raw, y, state) -> dict:
    thr = dict.fromkeys(COMPONENTS, 0.0)  # 0: nothing zeroed (predictions are >= 0)
    for j, t in enumerate(COMPONENTS):  # one pass, each component given the thresholds before it
        cands = [0.0, *np.quantile(c[:, j], ZERO_QUANTILES).tolist()]
        errs = [_sse(_apply_zero(c, raw, {"threshold": {**thr, t: v}}), y) for v in cands]
        thr[t] = cands[int(np.argmin(errs))]  # ties go to the first: no zeroing
    return {"threshold": thr}


def _proba(raw, clf: dict) -> np.ndarray:
    z = np.log1p(raw) @ np.array(clf["coef"]).T + np.array(clf["intercept"])
    if z.shape[1] == 1:  # scikit-learn's two-class case: one logit, for classes[1]
        z = np.hstack([np.zeros_like(z), z])
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _apply_state(c, raw, p):
    if not p["rules"]:
        return c
    prob, classes, out = _proba(raw, p["classifier"]), p["classifier"]["classes"], c.copy()
    for r in p["rules"]:
        out[prob[:, classes.index(r["state"])] >= r["threshold"], COMPONENTS.index(r["component"])] = 0.0
    return out


def _fit_state(c, raw, y, state) -> dict:
    names, counts = np.unique(state, return_counts=True)
    never = [(s, t) for s, n in zip(names, counts) for t in ("Dry_Dead_g", "Dry_Clover_g")  # what some States lack
             if n >= MIN_STATE_IMAGES and y[state == s, TARGETS.index(t)].max() <= 0]
    if not never or len(names) < 2:
        return {"classifier": None, "rules": []}
    from sklearn.linear_model import LogisticRegression  # fit-time only: apply reads the coefficients

    lr = LogisticRegression(solver="newton-cholesky", max_iter=1000).fit(np.log1p(raw), state)
    p = {"classifier": {"classes": [str(s) for s in lr.classes_], "features": "log1p of predicted Green, Dead, Clover",
                        "coef": lr.coef_.tolist(), "intercept": lr.intercept_.tolist()}, "rules": []}  # fmt: skip
    for s, t in never:  # one rule at a time, each given the ones before it; kept only if it lowers the error
        trials = [{**p, "rules": [*p["rules"], {"state": str(s), "component": t, "threshold": v}]} for v in PROB_GRID]
        errs = [_sse(_apply_state(c, raw, q), y) for q in trials]
        if min(errs) < _sse(_apply_state(c, raw, p), y):
            p = trials[int(np.argmin(errs))]
    return p


# name -> (fit(c, raw, y, state) -> params, apply(c, raw, params) -> c), in the order they are tried.
# c: current components (N, 3); raw: the input components (the State classifier's features); y: truth (N, 5).
STEPS = {
    "shrink": (_fit_shrink, _apply_shrink),
    "zero_small": (_fit_zero, _apply_zero),
    "state_rule": (_fit_state, _apply_state),
    "calibrate": (_fit_calibrate, _apply_calibrate),
}


def _fit_chain(names, raw, y, state) -> list[dict]:
    c, params = raw, []
    for n in names:
        fit_step, apply_step = STEPS[n]
        params.append(fit_step(c, raw, y, state))
        c = apply_step(c, raw, params[-1])
    return params


def _apply_chain(names, params, raw) -> np.ndarray:
    c = raw
    for n, p in zip(names, params):
        c = STEPS[n][1](c, raw, p)
    return expand(c)


def _nested(names, raw, y, state, folds) -> np.ndarray:
    """OOF predictions of the chain: each fold post-processed with every step refitted on the other folds."""
    out = np.zeros_like(y)
    for k in np.unique(folds):
        held = folds == k
        out[held] = _apply_chain(names, _fit_chain(names, raw[~held], y[~held], state[~held]), raw[held])
    return out


def _fold_r2(y, pred, folds, ks) -> np.ndarray:
    return np.array([weighted_r2(y[folds == k], pred[folds == k]) for k in ks])


def _keep(gain: float, fold_gains: np.ndarray) -> tuple[bool, float]:
    """The keep rule -> (keep, standard error of the per-fold gains): pooled gain > 0 and the mean per-fold gain
    above KEEP_SE standard errors. Fewer than 2 folds, or a non-finite gain: nothing to tell noise by, not kept."""
    g = np.asarray(fold_gains, dtype=np.float64)
    if len(g) < 2 or not np.isfinite(g).all() or not np.isfinite(gain):
        return False, float("nan")
    se = float(g.std(ddof=1) / np.sqrt(len(g)))
    return bool(gain > 0 and g.mean() > KEEP_SE * se), se


def _select(raw, y, state, folds) -> tuple[list[str], list[dict], np.ndarray]:
    """Greedy selection in STEPS order, by nested CV over ``folds`` on these rows only -> the kept names, one
    record per step (scores and gains, no params) and the nested predictions (N, 5) of the kept chain."""
    ks = np.unique(folds)
    kept, records = [], []
    base = _nested(kept, raw, y, state, folds)
    for name in STEPS:
        cand = _nested([*kept, name], raw, y, state, folds)
        without, with_ = weighted_r2(y, base), weighted_r2(y, cand)
        fold_gains = _fold_r2(y, cand, folds, ks) - _fold_r2(y, base, folds, ks)
        keep, se = _keep(with_ - without, fold_gains)
        records.append({"name": name, "kept": keep, "oof_weighted_r2_without": without, "oof_weighted_r2_with": with_,
                        "gain": with_ - without, "fold_gains": fold_gains.tolist(), "gain_se": se})  # fmt: skip
        if keep:
            kept, base = [*kept, name], cand
    return kept, records, base


def _honest(raw, y, state, folds) -> tuple[np.ndarray, list[dict]]:
    """Outer CV of the whole fit -> (predictions (N, 5), [{"fold", "kept"}, ...]): for each fold k the selection
    and the parameters come from the other folds only (the selection's nested CV over those folds), and the kept
    chain post-processes fold k. Fewer than 2 other folds: no step kept, the input components re-summed."""
    out, outer = np.zeros_like(y), []
    for k in np.unique(folds):
        held = folds == k
        tr = ~held
        kept = _select(raw[tr], y[tr], state[tr], folds[tr])[0] if len(np.unique(folds[tr])) >= 2 else []
        out[held] = _apply_chain(kept, _fit_chain(kept, raw[tr], y[tr], state[tr]), raw[held])
        outer.append({"fold": int(k), "kept": kept})
    return out, outer


def _check(df: pd.DataFrame, cols: list[str], source: str, fix: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(f"{source}: missing columns {missing}; {fix}")
    num = [c for c in cols if c.startswith(("true_", "pred_")) or c in TARGETS]
    bad = ~np.isfinite(df[num].to_numpy(np.float64)).all(axis=1)
    if bad.any():
        raise UserError(f"{source}: non-finite predictions or truths in {bad.sum()} rows (e.g. image_id "
                        f"{df.loc[bad, 'image_id'].head(3).tolist()}); fix or drop those rows upstream")  # fmt: skip


def fit(oof: pd.DataFrame, source: str = "OOF frame") -> dict:
    """Choose and fit the steps on an OOF frame (image_id, fold, State, true_<T>, pred_<T>) -> JSON-able params:

    {"steps": [{"name", "kept", "oof_weighted_r2_without", "oof_weighted_r2_with", "gain", "fold_gains",
    "gain_se", "params"}, ...] in STEPS order, "oof_weighted_r2_before" (the input), "oof_weighted_r2_after" (the
    selection score: nested CV of the kept chain, optimistic because it chose the steps), "oof_weighted_r2_honest"
    (the outer CV of the whole fit, selection included), "honest_gain" (honest - before), "outer_folds"
    ([{"fold", "kept"}, ...]: what each outer fold's selection kept), "components", "keep_rule", "n_images",
    "folds"}. with/without are nested-CV scores of the chain with and without the step, on top of the steps kept
    before it; "gain" is their difference, "fold_gains" the same per fold (in "folds" order), "gain_se" their
    standard error (the keep rule is in the module docstring). "params" are fitted on all rows, for rejected steps
    too (what they would have been), but only kept steps are applied.
    """
    _check(oof, ["image_id", "fold", "State", *TRUE, *PRED], source,
           "pass a merged OOF file (python -m src.ensemble blend writes results/ensemble/oof.parquet)")  # fmt: skip
    folds = oof["fold"].to_numpy()
    if len(np.unique(folds)) < 2:
        raise UserError(f"{source}: {len(np.unique(folds))} fold in column 'fold'; nested CV needs at least 2, "
                        "pass the OOF predictions of a k-fold run")  # fmt: skip
    y, state = oof[TRUE].to_numpy(np.float64), oof["State"].astype(str).to_numpy()
    raw = np.clip(oof[PRED[:3]].to_numpy(np.float64), 0, None)
    _, records, after = _select(raw, y, state, folds)
    steps, before_it = [], []
    for r in records:  # final params on all rows, each on top of the steps kept before it
        steps.append({**r, "params": _fit_chain([*before_it, r["name"]], raw, y, state)[-1]})
        before_it += [r["name"]] if r["kept"] else []
    honest, outer = _honest(raw, y, state, folds)
    before, honest_r2 = weighted_r2(y, oof[PRED].to_numpy(np.float64)), weighted_r2(y, honest)
    return {"steps": steps, "oof_weighted_r2_before": before, "oof_weighted_r2_after": weighted_r2(y, after),
            "oof_weighted_r2_honest": honest_r2, "honest_gain": honest_r2 - before, "outer_folds": outer,
            "components": list(COMPONENTS), "keep_rule": KEEP_RULE, "n_images": len(oof),
            "folds": sorted(int(f) for f in np.unique(folds))}  # fmt: skip


def _apply_to(df: pd.DataFrame, cols: list[str], params: dict, source: str) -> pd.DataFrame:
    _check(df, ["image_id", *cols], source, "pass a frame with image_id and the five target columns")
    kept = [s for s in params["steps"] if s["kept"]]
    out = df.copy()
    out[cols] = _apply_chain([s["name"] for s in kept], [s["params"] for s in kept],
                             np.clip(df[cols[:3]].to_numpy(np.float64), 0, None))  # fmt: skip
    return out


def apply(pred: pd.DataFrame, params: dict) -> pd.DataFrame:
    """A frame with image_id and the five TARGETS columns (grams) -> a copy with the kept steps applied."""
    return _apply_to(pred, list(TARGETS), params, "prediction frame")


def apply_oof(oof: pd.DataFrame, params: dict) -> pd.DataFrame:
    """The same on an OOF frame: its pred_<T> columns are replaced."""
    return _apply_to(oof, PRED, params, "OOF frame")


def table(params: dict) -> str:
    rows = [f"{'step':<11} {'kept':<5} {'OOF wR2 without':>15} {'with':>8} {'gain':>8} {'fold SE':>8}"]
    rows += [f"{s['name']:<11} {'yes' if s['kept'] else 'no':<5} {s['oof_weighted_r2_without']:>15.4f} "
             f"{s['oof_weighted_r2_with']:>8.4f} {s.get('gain', np.nan):>+8.4f} {s.get('gain_se', np.nan):>8.4f}"
             for s in params["steps"]]  # fmt: skip
    if "oof_weighted_r2_honest" in params:
        rows.append(f"OOF weighted_r2 {params['oof_weighted_r2_before']:.4f} -> {params['oof_weighted_r2_honest']:.4f} "
                    f"honest (outer CV: steps chosen and fitted without the fold scored; gain "
                    f"{params['honest_gain']:+.4f})")  # fmt: skip
    rows.append(f"selection score {params['oof_weighted_r2_after']:.4f} (nested CV that chose the steps: optimistic) "
                f"over {params['n_images']} images, folds {params['folds']}")  # fmt: skip
    return "\n".join(rows)


def read_oof(path: str | Path) -> pd.DataFrame:
    """The blend's merged OOF frame; a missing or unreadable file is a UserError that says which step makes it."""
    if not Path(path).exists():
        raise UserError(f"{path} not found; run the ensemble first (python -m src.ensemble blend ...)")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc}); rerun the step that wrote it") from exc
