"""The data contract: read and validate the Kaggle CSVs, one row per image out.

``train.csv`` is long (one row per image x target); everything downstream wants one row per
image with the five targets as columns. Every problem a user can cause is a ``UserError`` whose
message names the file, the row (1-based line in the file, header = line 1) or id, and the fix.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.targets import KAGGLE_ORDER, RELATION_TOLERANCE_G, TARGETS
from .photos import photo_size

TRAIN_COLUMNS = (
    "sample_id", "image_path", "Sampling_Date", "State", "Species",
    "Pre_GSHH_NDVI", "Height_Ave_cm", "target_name", "target",
)  # fmt: skip
TEST_COLUMNS = ("sample_id", "image_path", "target_name")
META_COLUMNS = ("Sampling_Date", "State", "Species", "Pre_GSHH_NDVI", "Height_Ave_cm")


def _line(idx: int) -> int:
    return int(idx) + 2  # pandas index 0 is line 2 of the file (line 1 is the header)


def read_csv(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; {what}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); fix or re-export the file")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; expected columns {', '.join(required)}"
        )
    return df


def _numeric(df: pd.DataFrame, col: str, path: Path, allow_negative: bool = False) -> pd.Series:
    raw = df[col].str.strip()
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & (raw != "")
    if bad.any():
        i = bad.idxmax()
        raise UserError(f"{path}: row {_line(i)}: {col} = {df.at[i, col]!r} is not a number; fix the value")
    if values.isna().any():
        i = values.isna().idxmax()
        raise UserError(f"{path}: row {_line(i)}: {col} is empty (NaN); fill it in or drop the image")
    if not np.isfinite(values).all():
        i = (~np.isfinite(values)).idxmax()
        raise UserError(f"{path}: row {_line(i)}: {col} = {df.at[i, col]} is not finite; fix the value")
    if not allow_negative and (values < 0).any():
        i = (values < 0).idxmax()
        raise UserError(f"{path}: row {_line(i)}: {col} = {values[i]} is negative; masses and measurements must be >= 0")
    return values


def _check_image_paths(df: pd.DataFrame, data_dir: Path, path: Path, check_images: bool) -> None:
    """Paths must stay inside ``data_dir`` as the CSV writes them (relative, no '..'); with
    ``check_images`` each distinct file must open. Links inside ``data_dir`` are followed wherever
    they point: they are the user's (a ``train/`` folder on another disk, DVC's ``cache.type
    symlink``, which makes every photo a link into ``.dvc/cache``)."""
    for i, rel in df["image_path"].items():
        p = PurePosixPath(rel)
        if rel == "" or p.is_absolute() or ".." in p.parts:
            raise UserError(
                f"{path}: row {_line(i)}: image_path {rel!r} must be a relative path inside {data_dir} "
                "(no '..', not absolute)"
            )
    if not check_images:
        return
    for i, rel in df["image_path"].drop_duplicates().items():
        try:
            photo_size(data_dir / rel)  # the header only: full decoding is the trainer's and the image cache's first pass
        except UserError as exc:
            raise UserError(f"{path}: row {_line(i)}: {exc}")


def _check_sample_ids(df: pd.DataFrame, path: Path) -> pd.Series:
    dup = df["sample_id"].duplicated(keep="first")
    if dup.any():
        i = dup.idxmax()
        raise UserError(f"{path}: row {_line(i)}: duplicated sample_id {df.at[i, 'sample_id']!r}; keep one row per sample_id")
    parts = df["sample_id"].str.split("__", n=1, regex=False)
    ok = parts.str.len().eq(2) & parts.str[1].eq(df["target_name"])
    if not ok.all():
        i = (~ok).idxmax()
        raise UserError(
            f"{path}: row {_line(i)}: sample_id {df.at[i, 'sample_id']!r} is not '<image_id>__{df.at[i, 'target_name']}'"
        )
    bad_t = ~df["target_name"].isin(TARGETS)
    if bad_t.any():
        i = bad_t.idxmax()
        raise UserError(
            f"{path}: row {_line(i)}: unknown target_name {df.at[i, 'target_name']!r}; expected one of {', '.join(TARGETS)}"
        )
    return parts.str[0]


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def load_train(data_dir: str | Path, check_images: bool = True) -> pd.DataFrame:
    """Read ``<data_dir>/train.csv`` into one row per image: image_id, image_path, metadata, 5 targets."""
    data_dir = Path(data_dir)
    path = data_dir / "train.csv"
    df = read_csv(path, TRAIN_COLUMNS, "put the Kaggle train.csv in the data directory (see README)")
    if df.empty:
        raise UserError(f"{path}: has no rows; it needs five rows per training image")
    df["image_id"] = _check_sample_ids(df, path)
    df["target"] = _numeric(df, "target", path)
    df["Pre_GSHH_NDVI"] = _numeric(df, "Pre_GSHH_NDVI", path, allow_negative=True)
    df["Height_Ave_cm"] = _numeric(df, "Height_Ave_cm", path)
    for col in ("Sampling_Date", "State", "Species"):
        empty = df[col].str.strip() == ""
        if empty.any():
            i = empty.idxmax()
            raise UserError(f"{path}: row {_line(i)}: {col} is empty; fill it in")
    dates = pd.to_datetime(df["Sampling_Date"], format="%Y/%m/%d", errors="coerce")
    if dates.isna().any():
        i = dates.isna().idxmax()
        raise UserError(f"{path}: row {_line(i)}: Sampling_Date {df.at[i, 'Sampling_Date']!r} is not Y/M/D like 2015/9/4")

    _check_image_paths(df, data_dir, path, check_images)
    # Per image: one image path, one set of metadata, all five targets.
    per_image = ["image_path", *META_COLUMNS]
    n_distinct = df.groupby("image_id", sort=False)[per_image].nunique()
    bad = n_distinct[(n_distinct > 1).any(axis=1)]
    if not bad.empty:
        img = bad.index[0]
        col = bad.columns[(bad.iloc[0] > 1).to_numpy()][0]
        raise UserError(f"{path}: image {img} has conflicting {col} values across its rows; make them equal")
    counts = df.groupby("image_id", sort=False)["target_name"].nunique()
    if (counts != len(TARGETS)).any():
        img = counts[counts != len(TARGETS)].index[0]
        have = sorted(df.loc[df["image_id"] == img, "target_name"])
        raise UserError(f"{path}: image {img} has targets {have}; every image needs all of {', '.join(TARGETS)}")

    first = df.drop_duplicates("image_id").set_index("image_id")
    wide = df.pivot(index="image_id", columns="target_name", values="target")
    out = first[per_image].join(wide[list(TARGETS)]).reset_index()
    out = out.sort_values("image_id", kind="stable").reset_index(drop=True)

    g, d, c, gdm, tot = (out[t].to_numpy() for t in TARGETS)
    err_gdm, err_total = np.abs(gdm - (g + c)), np.abs(tot - (g + d + c))
    off = out.loc[(err_gdm > RELATION_TOLERANCE_G) | (err_total > RELATION_TOLERANCE_G), "image_id"].tolist()
    if off:
        shown = ", ".join(off[:10]) + (f" and {len(off) - 10} more" if len(off) > 10 else "")
        warn(
            f"{path}: {len(off)} image(s) break GDM = Green + Clover or Total = Green + Dead + Clover "
            f"by more than {RELATION_TOLERANCE_G} g: {shown}"
        )
    return out


def load_test(data_dir: str | Path, check_images: bool = True) -> pd.DataFrame:
    """Read ``<data_dir>/test.csv`` into one row per image (image_id, image_path), in file order."""
    data_dir = Path(data_dir)
    path = data_dir / "test.csv"
    df = read_csv(path, TEST_COLUMNS, "put the Kaggle test.csv in the data directory (see README)")
    df["image_id"] = _check_sample_ids(df, path)
    _check_image_paths(df, data_dir, path, check_images)
    return df.drop_duplicates("image_id")[["image_id", "image_path"]].reset_index(drop=True)


def wide_to_long(wide: pd.DataFrame, value_cols: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per image -> Kaggle long rows (sample_id, target), targets in Kaggle order per image."""
    value_cols = value_cols or {t: t for t in TARGETS}
    rows = [
        (f"{img}__{t}", float(v))
        for img, vals in zip(wide["image_id"], wide[[value_cols[t] for t in KAGGLE_ORDER]].to_numpy())
        for t, v in zip(KAGGLE_ORDER, vals)
    ]
    return pd.DataFrame(rows, columns=["sample_id", "target"])
