"""The results folder as DVC reads it: metrics for `dvc exp show` / `dvc metrics diff` and
plot data for `dvc plots show`.

    python -m src.dvc_metrics --results-dir results --models M1 M2 --out-dir results/metrics

Writes into the output folder (dvc.yaml declares it; git keeps it, `cache: false`):

- ``models.json``: ``{model: {weighted_r2, weighted_r2_selected, weighted_r2_last, weighted_r2_log,
  r2_<target>...}}`` for every model and the ensemble (+ ``holdout`` on the demo), the same scores
  as the report's model table: ``weighted_r2`` is the unbiased one (each fold at an epoch chosen
  on the other folds), ``weighted_r2_selected`` the optimistic one (each fold's own best epoch);
  and ``submission``: the final submission's honest OOF score (post-processing scored by an outer
  CV around its whole fit) and its holdout (``final/steps.json``);
- ``curves/<model>.csv``: per epoch, the validation weighted R² and losses averaged over the folds
  that reached that epoch (``folds`` says how many);
- ``pred_vs_true/<target>.csv``: the ensemble's OOF prediction against the truth per image.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from ..core.errors import UserError
from ..core.io_utils import write_json
from ..core.targets import SHORT, TARGETS
from ..rounds.oof import PRED, TRUE
from .report import (
    ENSEMBLE,
    HOLDOUT,
    METRIC_COLUMNS,
    load_ensemble_oof,
    load_model_oofs,
    model_table,
    read_histories,
    read_json,
)

CURVE_COLUMNS = ["weighted_r2", "val_loss", "train_loss"]


def metrics(table: pd.DataFrame) -> dict:
    """The model table as nested JSON; an undefined R² (NaN: a constant truth) is left out, as DVC
    shows it ('-') and as JSON cannot hold it."""
    out = {}
    for row in table.to_dict("records"):
        name = "holdout" if row["model"] == HOLDOUT else row["model"]
        out[name] = {k: float(row[k]) for k in METRIC_COLUMNS if not math.isnan(float(row[k]))}
    return out


def curve(model_dir: Path) -> pd.DataFrame:
    """Mean over folds per epoch of the validation weighted R² and the losses."""
    hist = read_histories(model_dir)
    if not hist:
        raise UserError(f"{model_dir}: no fold*/history.csv; train the model first (snakemake rule train)")
    long = pd.concat([h.assign(fold=k) for k, h in hist.items()], ignore_index=True)
    cols = [c for c in CURVE_COLUMNS if c in long.columns]
    by_epoch = long.groupby("epoch", sort=True)
    out = by_epoch[cols].mean().join(by_epoch["fold"].nunique().rename("folds")).reset_index()
    return out[["epoch", *cols, "folds"]]


def submission_scores(results: Path) -> dict:
    """The submission after every step (``final/steps.json``): its honest OOF score (the last step's
    outer CV: data that chose no step scores it) and its holdout on the demo; empty before the final rule ran."""
    steps = read_json(results / "final" / "steps.json")
    if not steps:
        return {}
    last = steps["steps"][-1]
    out = {"oof_weighted_r2_honest": last.get("oof_honest_with"), "holdout_weighted_r2": steps.get("holdout_weighted_r2")}
    return {"submission": {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}}


def pred_vs_true(oof: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {
        SHORT[t]: pd.DataFrame({"image_id": oof["image_id"], "true_g": oof[tc], "pred_g": oof[pc]})
        for t, tc, pc in zip(TARGETS, TRUE, PRED)
    }


def write_dvc_metrics(results: str | Path, models: list[str], out_dir: str | Path) -> Path:
    """Everything is read and computed first; the folder is then replaced in one rename."""
    results, out_dir = Path(results), Path(out_dir)
    models = list(dict.fromkeys(models))
    oofs = load_model_oofs(results, models)
    ensemble = load_ensemble_oof(results)
    scores = metrics(model_table(results, oofs, ensemble))
    scores.update(submission_scores(results))
    curves = {m: curve(results / "models" / m) for m in models}
    ranked = sorted(oofs, key=lambda m: scores[m].get("weighted_r2", -math.inf), reverse=True)
    scatter = pred_vs_true(ensemble if ensemble is not None else oofs[ranked[0]])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the folder is shared like any other output
    try:
        write_json(tmp / "models.json", scores)
        for sub, frames in (("curves", curves), ("pred_vs_true", scatter)):
            (tmp / sub).mkdir()
            for name, df in frames.items():
                df.to_csv(tmp / sub / f"{name}.csv", index=False)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    source = ENSEMBLE if ensemble is not None else ranked[0]
    print(f"wrote {out_dir}: scores of {', '.join(scores)}; {len(curves)} learning curves; OOF scatters of {source}")
    return out_dir
