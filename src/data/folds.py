"""Cross-validation folds that do not leak near-duplicate photos between train and validation.

Each site visit (State + Sampling_Date) yields 4-6 near-identical photos, so a random KFold
scores memory, not skill. ``group_location`` keeps a visit in one fold and stratifies on
State x Season x Species so folds are comparable; the other strategies exist to compare against.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.errors import UserError

STRATEGIES = ("group_location", "group_date", "stratified", "kfold")
_SEASONS = {12: "Summer", 1: "Summer", 2: "Summer", 3: "Autumn", 4: "Autumn", 5: "Autumn",
            6: "Winter", 7: "Winter", 8: "Winter", 9: "Spring", 10: "Spring", 11: "Spring"}  # fmt: skip


def season(dates: pd.Series) -> pd.Series:
    """Southern-hemisphere season from 'Y/M/D' dates."""
    month = pd.to_datetime(dates, format="%Y/%m/%d").dt.month
    return month.map(_SEASONS)


def _merge_rare(df: pd.DataFrame, n_folds: int) -> pd.Series:
    """State x Season x Species, coarsened to State x Season, State, then 'rare' until every
    stratum spans at least ``n_folds`` groups, so each fold can get a share of it."""
    levels = [
        df["State"] + "|" + df["Season"] + "|" + df["Species"],
        df["State"] + "|" + df["Season"],
        df["State"],
    ]
    stratum = levels[0].copy()
    for coarser in [*levels[1:], pd.Series("rare", index=df.index)]:
        n_groups = df.groupby(stratum)["group"].transform("nunique")
        rare = n_groups < n_folds
        if not rare.any():
            break
        stratum[rare] = coarser[rare]
    return stratum


def make_folds(images: pd.DataFrame, n_folds: int = 5, strategy: str = "group_location", seed: int = 42) -> pd.DataFrame:
    """Assign a fold to every image of a one-row-per-image table (from ``schema.load_train``)."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown --cv-strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    df = images[["image_id", "image_path", "Sampling_Date", "State", "Species"]].copy()
    df["Season"] = season(df["Sampling_Date"])
    df["group"] = df["State"] + "_" + df["Sampling_Date"]
    n_groups = df["group"].nunique()
    if n_folds < 2 or n_folds > (n_groups if strategy.startswith("group") else len(df)):
        raise UserError(
            f"--n-folds {n_folds} is impossible with {len(df)} images in {n_groups} site visits; "
            f"use 2..{n_groups if strategy.startswith('group') else len(df)}"
        )
    df["stratum"] = _merge_rare(df, n_folds)
    # Imported here: scikit-learn takes a second to load, and a run on a fold CSV never needs it.
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    x = np.zeros(len(df))
    if strategy == "group_location":
        split = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(x, df["stratum"], df["group"])
    elif strategy == "group_date":
        split = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(x, df["State"], df["Sampling_Date"])
    elif strategy == "stratified":
        split = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, df["stratum"])
    else:
        split = KFold(n_folds, shuffle=True, random_state=seed).split(x)
    df["fold"] = -1
    for k, (_, val_idx) in enumerate(split):
        df.iloc[val_idx, df.columns.get_loc("fold")] = k
    cols = ["image_id", "image_path", "fold", "group", "State", "Season", "Species", "Sampling_Date", "stratum"]
    return df[cols]


def summarize(folds: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Per fold: images, site visits, images per State and mean Total, to eyeball comparability."""
    df = folds.merge(images[["image_id", "Dry_Total_g"]], on="image_id")
    table = df.groupby("fold").agg(
        images=("image_id", "size"), groups=("group", "nunique"), mean_total_g=("Dry_Total_g", "mean")
    )
    states = df.pivot_table(index="fold", columns="State", values="image_id", aggfunc="size", fill_value=0)
    return table.join(states).round(2)


def read_fold_csv(path, images: pd.DataFrame, n_folds: int | None = None) -> pd.Series:
    """Fold per image (indexed like ``images``) from a fold CSV; every training image must have one."""
    from .schema import read_csv

    df = read_csv(path, ("image_id", "fold"), "build it with: python -m src.make_folds --data-dir DIR --out FILE")
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds.isna().any() or (folds < 0).any() or (folds != folds.round()).any():
        i = (folds.isna() | (folds < 0) | (folds != folds.round())).idxmax()
        raise UserError(f"{path}: row {i + 2}: fold {df.at[i, 'fold']!r} is not a non-negative integer")
    rebuild = "rebuild it with python -m src.make_folds"
    dup = df["image_id"].duplicated()
    if dup.any():
        i = dup.idxmax()
        raise UserError(f"{path}: row {i + 2}: image {df.at[i, 'image_id']} has a second fold; give each image one row")
    known = set(images["image_id"])
    unknown = ~df["image_id"].isin(known)
    if unknown.any():
        i = unknown.idxmax()
        raise UserError(f"{path}: row {i + 2}: image {df.at[i, 'image_id']} is not in train.csv ({int(unknown.sum())} such "
                        f"rows): this fold CSV belongs to other data; {rebuild}")  # fmt: skip
    if n_folds is not None and (folds >= n_folds).any():
        i = (folds >= n_folds).idxmax()
        raise UserError(f"{path}: row {i + 2}: fold {int(folds[i])} is outside 0..{n_folds - 1} (--n-folds {n_folds}); "
                        f"fold ids must be 0..n_folds-1: {rebuild}")  # fmt: skip
    mapping = dict(zip(df["image_id"], folds.astype(int)))
    missing = [i for i in images["image_id"] if i not in mapping]
    if missing:
        raise UserError(f"{path}: image {missing[0]} ({len(missing)} in all) of train.csv has no fold; {rebuild}")
    out = images["image_id"].map(mapping).astype(int)
    if n_folds is not None and out.nunique() != n_folds:
        raise UserError(f"{path}: has {out.nunique()} folds but --n-folds is {n_folds}; make them agree")
    return out
