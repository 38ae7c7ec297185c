"""Score a Kaggle-format submission against a solution file (e.g. the demo's hidden truth)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.metrics import summary
from ..core.targets import TARGETS
from ..data.schema import read_csv


def long_to_wide(df: pd.DataFrame, path) -> pd.DataFrame:
    parts = df["sample_id"].str.split("__", n=1, regex=False)
    df = df.assign(image_id=parts.str[0], target_name=parts.str[1], target=pd.to_numeric(df["target"], errors="coerce"))
    if df["target"].isna().any():
        i = df["target"].isna().idxmax()
        raise UserError(f"{path}: row {i + 2}: target is not a number")
    wide = df.pivot(index="image_id", columns="target_name", values="target")
    missing = [t for t in TARGETS if t not in wide.columns]
    if missing:
        raise UserError(f"{path}: no rows for target(s) {', '.join(missing)}")
    return wide[list(TARGETS)]


def score(submission_path, solution_path) -> dict[str, float]:
    sub = read_csv(submission_path, ("sample_id", "target"), "write one with python -m src.predict")
    sol = read_csv(solution_path, ("sample_id", "target"), "the solution file holds the true values")
    missing = sorted(set(sol["sample_id"]) - set(sub["sample_id"]))
    if missing:
        raise UserError(f"{submission_path}: {len(missing)} sample_id(s) of the solution are missing, e.g. {missing[0]}")
    y, p = long_to_wide(sol, solution_path), long_to_wide(sub, submission_path)
    p = p.loc[y.index]
    if not np.isfinite(p.to_numpy()).all():
        raise UserError(f"{submission_path}: predictions must be finite numbers")
    return summary(y.to_numpy(), p.to_numpy())


def holdout_scores(pred: pd.DataFrame, solution_path) -> dict[str, float]:
    """Scores of a prediction frame (image_id + the five targets) on a solution file (the demo's hidden truth)."""
    y = long_to_wide(read_csv(solution_path, ("sample_id", "target"), "the solution file holds the true values"),
                     solution_path)  # fmt: skip
    missing = sorted(set(y.index) - set(pred["image_id"]))
    if missing:
        raise UserError(f"{len(missing)} image(s) of {solution_path} have no prediction, e.g. {missing[0]}")
    return summary(y.to_numpy(), pred.set_index("image_id").loc[y.index, list(TARGETS)].to_numpy(np.float64))
