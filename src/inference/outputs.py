"""What ``python -m src.predict`` writes: a table for the user's own photos, or a split's
predictions (the mean over folds, or each fold's) and its submission."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.io_utils import write_csv, write_parquet
from ..training.distributed import pick_device
from .predictor import load_fold_models, open_photos, predict_photos, predict_split, submission


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


def predict(model_dir: str, images: list[str] | None, data_dir: str | None, split: str, out_dir: str | None,
            out: str | None, per_fold: bool, depth_cache_dir: str | None, allow_mixed: bool, device: str,
            tta: bool, tta_scales: list[float], **kw) -> None:
    """``python -m src.predict``: the fold models of ``model_dir`` on photos (a table) or a split (files)."""
    photos = open_photos(images) if images else None  # before the models load: a bad photo fails fast
    device = pick_device(device)
    models = load_fold_models(model_dir, device, allow_mixed=allow_mixed)
    scales = f", scales {' '.join(f'{s:g}' for s in tta_scales)}" if tta_scales != [1.0] else ""
    print(f"{len(models)} fold model(s) {[k for k, _, _ in models]} on {device}, TTA {'on' if tta else 'off'}{scales}",
          flush=True)  # fmt: skip
    kw.update(tta=tta, tta_scales=tta_scales, device=device)
    if photos is not None:
        photos_table(models, photos, out, **kw)
    else:
        split_predictions(models, data_dir, split, Path(out_dir or model_dir), per_fold, depth_cache_dir, **kw)
