"""What ``python -m src.predict`` writes: a table for the user's own photos, or a split's
predictions (the mean over folds, or each fold's) and its submission."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.io_utils import write_csv, write_parquet
from .predictor import predict_photos, predict_split, submission


def photos_table(models: list, photos: list[Path], out: str | None, **kw) -> pd.DataFrame:
    """Grams per quadrat and kg/ha per photo, printed; also written to ``out`` (CSV) when given."""
    table = predict_photos(models, photos, **kw)
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.float_format", "{:.2f}".format):
        print(table.to_string(index=False))
    print("grams per 70 x 30 cm quadrat; *_kg_ha = kg dry matter per hectare")
    if out:
        write_csv(out, table)
        print(f"wrote {out}")
    return table


def split_predictions(models: list, data_dir: str, split: str, out_dir: Path, per_fold: bool = False,
                      depth_cache_dir: str | None = None, **kw) -> None:
    """``<split>_pred.parquet`` (the fold models' mean) and, for the test split, ``submission.csv``;
    with ``per_fold`` each fold model's own predictions, ``<split>_pred_folds.parquet``, instead."""
    if per_fold:
        per = pd.concat([predict_split([m], data_dir, split, depth_cache_dir=depth_cache_dir, **kw)
                         .assign(fold=m[0]) for m in models], ignore_index=True)  # fmt: skip
        write_parquet(out_dir / f"{split}_pred_folds.parquet", per)
        print(f"wrote {out_dir / f'{split}_pred_folds.parquet'} ({len(models)} folds x {per['image_id'].nunique()} images)")
        return
    pred = predict_split(models, data_dir, split, depth_cache_dir=depth_cache_dir, **kw)
    sub = submission(pred, data_dir) if split == "test" else None  # checked before anything is written
    pred_path = out_dir / f"{split}_pred.parquet"
    write_parquet(pred_path, pred)
    print(f"wrote {pred_path} ({len(pred)} images)")
    if sub is not None:
        sub_path = out_dir / "submission.csv"
        write_csv(sub_path, sub)
        print(f"wrote {sub_path} ({len(sub)} rows)")
