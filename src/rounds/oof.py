"""Out-of-fold predictions: merge a model's per-fold files and score them, honestly.

Each fold saves its best epoch as picked on its own validation images (``fold<k>/oof.parquet``):
scored on those same images, that choice flatters the model, noisy runs most. So the merge also
scores each fold at an epoch it did not choose: the epoch whose pooled weighted R^2 on the OTHER
folds' validation images is highest (cross-fold epoch selection, from every epoch's validation
predictions, ``fold<k>/epoch_preds.parquet``), and at its last epoch. Files under the model folder:

- ``oof.parquet``: the unbiased OOF (cross-fold epochs; with ``--swa-select last`` the averaged
  weights' own OOF, which nothing chose). What the ensemble, post-processing and the report use.
- ``oof_selected.parquet``: each fold's own best epoch (optimistic: the epoch was chosen on it).
- ``oof_last.parquet``: each fold's last epoch.
- ``oof_metrics.json``: the unbiased scores at the top level (``score`` says which kind), and
  ``selected`` / ``last`` beside them, ``epochs``: each fold's chosen epoch.

Epochs are aligned across folds by (stage, epoch within the stage): Stage 1 may end early on
patience, so Stage 2's first epoch is a different run epoch in each fold. Only positions every fold
reached are candidates. Still chosen on the fold's own images (as the guide's schedule has it):
when Stage 1 ends (patience) and the weights Stage 2 starts from (Stage 1's best).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.io_utils import write_json, write_parquet
from ..core.metrics import summary, weighted_r2
from ..core.targets import TARGETS

TRUE = [f"true_{t}" for t in TARGETS]
PRED = [f"pred_{t}" for t in TARGETS]
EPOCH_PREDS = "epoch_preds.parquet"
SELECTED, LAST = "oof_selected.parquet", "oof_last.parquet"
CROSSFOLD = "crossfold_epoch"  # oof_metrics.json "score": how the unbiased OOF was made
KINDS = {
    CROSSFOLD: "each fold at the epoch chosen on the other folds' validation images (unbiased)",
    "swa_last": "each fold's mean of its last K epochs' weights, chosen on nothing (unbiased)",
    "unselected": "each fold's last epoch of a fixed schedule, chosen on nothing (unbiased: the refit checks)",
    "selected": "each fold's best epoch on its own validation images (optimistic: the epoch was chosen on them)",
}


def score(oof: pd.DataFrame) -> dict:
    return {**summary(oof[TRUE].to_numpy(), oof[PRED].to_numpy(), oof["State"].to_numpy()),
            "folds": sorted(int(f) for f in oof["fold"].unique()), "n_images": len(oof)}  # fmt: skip


def _positions(frame: pd.DataFrame) -> list[tuple[str, int]]:
    first = frame.groupby(["stage", "stage_epoch"], sort=False)["epoch"].min().sort_values()
    return list(first.index)


def crossfold_epochs(epochs: dict[int, pd.DataFrame]) -> dict[int, dict]:
    """``{fold: epoch_preds frame}`` -> ``{fold: {"stage", "stage_epoch", "epoch", "others_weighted_r2"}}``:
    per fold, the position (present in every fold) with the best pooled weighted R^2 of the OTHER
    folds' predictions there; ties go to the earlier position. Fold k's own curve never enters."""
    if len(epochs) < 2:
        raise ValueError("cross-fold epoch selection needs at least 2 folds")
    common = set.intersection(*(set(_positions(f)) for f in epochs.values()))
    order = [p for p in _positions(next(iter(epochs.values()))) if p in common]
    at = {k: {p: g for p, g in f.groupby(["stage", "stage_epoch"], sort=False) if p in common} for k, f in epochs.items()}
    out = {}
    for k in epochs:
        best, best_score = None, -np.inf
        for p in order:
            others = pd.concat([at[j][p] for j in epochs if j != k], ignore_index=True)
            s = weighted_r2(others[TRUE].to_numpy(), others[PRED].to_numpy())
            if np.isfinite(s) and s > best_score:
                best, best_score = p, s
        if best is None:  # every position diverged on the other folds: fall back to the last common one
            best = order[-1]
        row = at[k][best]
        out[k] = {"stage": best[0], "stage_epoch": int(best[1]), "epoch": int(row["epoch"].iloc[0]),
                  "others_weighted_r2": float(best_score)}  # fmt: skip
    return out


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a cut file
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__}); retrain that fold") from exc


def _selection(fold_dir: Path) -> str:
    path = fold_dir / "metrics.json"
    return json.loads(path.read_text()).get("selection", "best_epoch") if path.exists() else "best_epoch"


def epoch_frames(model_dir: Path, folds: list[int]) -> dict[int, pd.DataFrame] | None:
    """Every fold's ``epoch_preds.parquet``, or None when a fold has none (runs before they were kept)."""
    paths = {k: model_dir / f"fold{k}" / EPOCH_PREDS for k in folds}
    return {k: _read(p) for k, p in paths.items()} if all(p.exists() for p in paths.values()) else None


def honest_oof(model_dir: Path, folds: list[int], selected: dict[int, pd.DataFrame],
               epochs: dict[int, pd.DataFrame] | None) -> tuple[pd.DataFrame | None, str, dict]:
    """The unbiased OOF frame, its kind (``KINDS``) and each fold's chosen epoch; None when the folds
    cannot give one (a single fold, no per-epoch predictions, or SWA's best K)."""
    how = {k: _selection(model_dir / f"fold{k}") for k in folds}
    for saved, kind in (("swa_last", "swa_last"), ("none", "unselected")):  # nothing chose the saved weights
        if all(h == saved for h in how.values()):
            return pd.concat([selected[k] for k in folds], ignore_index=True), kind, {}
    if len(folds) < 2 or any(h != "best_epoch" for h in how.values()) or epochs is None:
        return None, "selected", {}
    chosen = crossfold_epochs(epochs)
    rows = [epochs[k][epochs[k]["epoch"] == chosen[k]["epoch"]] for k in folds]
    return pd.concat(rows, ignore_index=True), CROSSFOLD, chosen


def last_oof(epochs: dict[int, pd.DataFrame] | None) -> pd.DataFrame | None:
    if epochs is None:
        return None
    return pd.concat([f[f["epoch"] == f["epoch"].max()] for f in epochs.values()], ignore_index=True)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def merge_oof(model_dir: str | Path, n_folds: int | None = None, require_all: bool = False) -> dict | None:
    """``<model_dir>/fold*/{oof,epoch_preds}.parquet`` -> ``<model_dir>/{oof,oof_selected,oof_last}.parquet``
    + ``oof_metrics.json`` (see the module docstring)."""
    model_dir = Path(model_dir)
    parts = sorted(model_dir.glob("fold*/oof.parquet"))
    if not parts:
        if require_all:
            raise UserError(f"{model_dir}: no fold*/oof.parquet; train the folds first (python -m src.dinov3_train)")
        return None
    selected = {int(p.parent.name.removeprefix("fold")): _read(p) for p in parts}
    folds = sorted(selected)
    if require_all and n_folds is not None and len(folds) != n_folds:
        raise UserError(f"{model_dir}: folds {folds} present, {n_folds} expected; train the missing folds")
    sel = _sorted(pd.concat(selected.values(), ignore_index=True))
    epochs = epoch_frames(model_dir, folds)  # read once: the cross-fold choice and the last epochs
    honest, kind, chosen = honest_oof(model_dir, folds, selected, epochs)
    last = last_oof(epochs)
    oof = sel if honest is None else _sorted(honest[["image_id", "fold", "State", *TRUE, *PRED]])
    scores = {**score(oof), "score": kind, "score_means": KINDS[kind], "selected": score(sel)}
    if last is not None:
        scores["last"] = score(last)
    if chosen:
        scores["epochs"] = {str(k): v for k, v in chosen.items()}
    scores["complete"] = n_folds is not None and len(scores["folds"]) == n_folds
    write_parquet(model_dir / SELECTED, sel)
    if last is not None:
        write_parquet(model_dir / LAST, _sorted(last[["image_id", "fold", "State", *TRUE, *PRED]]))
    write_parquet(model_dir / "oof.parquet", oof)
    write_json(model_dir / "oof_metrics.json", scores)
    return scores
