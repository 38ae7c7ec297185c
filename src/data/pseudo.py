"""Pseudo-labelled images for a fold (--pseudo-labels, --pseudo-weight).

A pseudo-label CSV holds one row per image: image_id, image_path (under --data-dir) and the five
targets in grams. The rows join a fold's training images only. They carry no metadata: their
height, NDVI, species and State are neutral placeholders that the auxiliary losses never see
(``losses.Criterion`` trains those heads on real images only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.targets import RELATION_TOLERANCE_G, TARGETS
from .schema import _check_image_paths, _numeric, read_csv

COLUMNS = ("image_id", "image_path", *TARGETS)
PSEUDO = "is_pseudo"  # the column that marks them in a fold's training table


def path_for(template: str, fold: int) -> Path:
    return Path(template.replace("{fold}", str(fold)))


def load_pseudo(template: str, fold: int, data_dir: str | Path, train: pd.DataFrame) -> pd.DataFrame:
    """The fold's pseudo-labelled rows, shaped like ``train`` (placeholders for its metadata)."""
    path = path_for(template, fold)
    df = read_csv(path, COLUMNS, "make it with python -m src.pseudo_labels (the pipeline's round-2 rules)")
    if df.empty:
        raise UserError(f"{path}: has no rows; keep at least one image or leave --pseudo-labels empty")
    _check_image_paths(df, Path(data_dir), path, check_images=True)
    for t in TARGETS:
        df[t] = _numeric(df, t, path)
        if (df[t] < 0).any():
            i = (df[t] < 0).idxmax()
            raise UserError(f"{path}: row {i + 2}: {t} = {df.at[i, t]} is negative; masses are >= 0 g")
    gap = np.maximum((df["GDM_g"] - df["Dry_Green_g"] - df["Dry_Clover_g"]).abs(),
                     (df["Dry_Total_g"] - df["GDM_g"] - df["Dry_Dead_g"]).abs())  # fmt: skip
    if (gap > RELATION_TOLERANCE_G).any():
        i = (gap > RELATION_TOLERANCE_G).idxmax()
        raise UserError(f"{path}: row {i + 2}: the masses break GDM = Green + Clover or Total = GDM + Dead; "
                        "write predictions that obey them")  # fmt: skip
    clash = sorted(set(df["image_id"]) & set(train["image_id"]))
    if clash or df["image_id"].duplicated().any():
        which = clash[0] if clash else df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise UserError(f"{path}: image_id {which!r} is a training image or appears twice; pseudo-label other images")
    out = pd.DataFrame({c: df[c] for c in COLUMNS})
    for col in train.columns.difference(out.columns):
        # Neutral metadata: the State and species vocabularies come from real images, so these map to
        # "unknown"; the numbers are placeholders (never a target: aux losses skip pseudo rows).
        numeric = pd.api.types.is_numeric_dtype(train[col])
        out[col] = train[col].median() if numeric else ""
    out[PSEUDO] = True
    return out[[*train.columns, PSEUDO]]
