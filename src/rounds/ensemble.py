"""Merge a model's fold OOF files, and blend several models into the ensemble submission.

    python -m src.ensemble merge-oof --model-dir results/models/M1 --n-folds 5
    python -m src.ensemble blend --results-dir results --models M1 M2 --data-dir data

``blend`` compares the guide's plain mean with non-negative least-squares weights (fitted on
OOF predictions, scored by nested cross-validation over the folds so the comparison is fair),
keeps the better on OOF weighted R^2, and writes ``<results>/ensemble/{oof.parquet,
oof_metrics.json, weights.json, test_pred.parquet, submission.csv}`` (+ ``holdout.json`` when
the data folder has ``test_solution.csv``, as the demo does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from ..core.errors import UserError
from ..core.io_utils import write_csv, write_json, write_parquet
from ..core.metrics import weighted_r2
from ..core.targets import TARGETS, WEIGHTS
from ..inference.predictor import submission
from .oof import PRED, TRUE, score

_SQRT_W = np.sqrt(np.array([WEIGHTS[t] for t in TARGETS]))


def fit_nnls(preds: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative model weights minimising the metric's weighted squared error.
    preds (M, N, 5), y (N, 5) -> (M,). A mix of relation-consistent predictions stays consistent."""
    a = (preds * _SQRT_W).reshape(len(preds), -1).T
    w, _ = nnls(a, (y * _SQRT_W).ravel())
    return w if w.sum() > 0 else np.full(len(preds), 1.0 / len(preds))


def nested_nnls(preds: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """OOF predictions of the NNLS blend: each fold blended with weights fitted on the others."""
    out = np.zeros_like(y)
    for k in np.unique(folds):
        held = folds == k
        out[held] = np.tensordot(fit_nnls(preds[:, ~held], y[~held]), preds[:, held], axes=1)
    return out


def choose_blend(p_oof: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[str, np.ndarray, dict, np.ndarray]:
    """The ensemble's method and model weights, chosen on these OOF rows only.
    p_oof (M, N, 5), y (N, 5), folds (N,) -> (method, weights (M,), OOF weighted R^2 of each method, the
    chosen method's OOF predictions (N, 5)). The plain mean against NNLS weights scored by nested CV over
    ``folds``; the better one wins (the mean on a tie, with one model, or with under two folds to nest over)."""
    n_models = len(p_oof)
    candidates = {"mean": p_oof.mean(0)}
    if len(np.unique(folds)) > 1:
        candidates["nnls"] = nested_nnls(p_oof, y, folds)
    scores = {k: weighted_r2(y, v) for k, v in candidates.items()}
    method = max(scores, key=scores.get) if n_models > 1 else "mean"
    weights = np.full(n_models, 1 / n_models) if method == "mean" else fit_nnls(p_oof, y)
    return method, weights, scores, candidates[method]


def _load(results: Path, models: list[str], name: str, hint: str) -> list[pd.DataFrame]:
    frames = []
    for m in models:
        path = results / "models" / m / name
        if not path.exists():
            raise UserError(f"{path} not found; {hint.format(model=m)}")
        frames.append(pd.read_parquet(path).sort_values("image_id", kind="stable").reset_index(drop=True))
    ids = frames[0]["image_id"].tolist()
    for m, f in zip(models, frames):
        if f["image_id"].tolist() != ids:
            raise UserError(f"{results / 'models' / m / name}: other images than {models[0]}'s; retrain on the same data and folds")
    return frames


def blend(results: str | Path, models: list[str], data_dir: str | Path) -> dict:
    results, out = Path(results), Path(results) / "ensemble"
    oofs = _load(results, models, "oof.parquet", "run the model's merge rule (python -m src.ensemble merge-oof --model-dir ...)")
    tests = _load(results, models, "test_pred.parquet", "predict it (python -m src.predict --model-dir results/models/{model} ...)")
    y = oofs[0][TRUE].to_numpy()
    p_oof = np.stack([f[PRED].to_numpy() for f in oofs])
    folds = oofs[0]["fold"].to_numpy()
    method, weights, scores, chosen = choose_blend(p_oof, y, folds)

    oof = oofs[0][["image_id", "fold", "State", *TRUE]].copy()
    oof[PRED] = chosen
    metrics = {**score(oof), "method": method}
    test = tests[0][["image_id"]].copy()
    test[list(TARGETS)] = np.tensordot(weights, np.stack([f[list(TARGETS)].to_numpy() for f in tests]), axes=1)
    sub = submission(test, data_dir)  # checked against sample_submission.csv before anything is written

    write_parquet(out / "oof.parquet", oof)
    write_json(out / "oof_metrics.json", metrics)
    write_json(out / "weights.json", {"method": method, "weights": dict(zip(models, weights.tolist())),
                                      "oof_weighted_r2": scores})  # fmt: skip
    write_parquet(out / "test_pred.parquet", test)
    write_csv(out / "submission.csv", sub)
    best = max(models, key=lambda m: weighted_r2(y, p_oof[models.index(m)]))
    nnls_r2 = scores.get("nnls", float("nan"))  # no NNLS score with under two folds
    print(f"ensemble of {len(models)}: {method} (OOF weighted_r2 mean {scores['mean']:.4f}, nnls {nnls_r2:.4f}); "
          f"best single {best} {weighted_r2(y, p_oof[models.index(best)]):.4f}")
    solution = Path(data_dir) / "test_solution.csv"
    if solution.exists():
        from .score import holdout_scores
        from .score import score as score_submission

        holdout = score_submission(out / "submission.csv", solution)
        # Each model's own (the mean of its folds), so the report can set it beside the model's OOF scores.
        holdout["models"] = {m: holdout_scores(f, solution) for m, f in zip(models, tests)}
        write_json(out / "holdout.json", holdout)
        print(f"holdout weighted_r2 (demo's hidden test truth): {holdout['weighted_r2']:.4f}; "
              + ", ".join(f"{m} {s['weighted_r2']:.4f}" for m, s in holdout["models"].items()))
    print(f"wrote {out / 'submission.csv'}")
    return metrics
