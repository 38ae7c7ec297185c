"""Out-of-fold predictions: merge a model's per-fold ``oof.parquet`` files and score them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.errors import UserError
from src.io_utils import write_json, write_parquet
from src.metrics import summary
from src.targets import TARGETS

TRUE = [f"true_{t}" for t in TARGETS]
PRED = [f"pred_{t}" for t in TARGETS]


def score(oof: pd.DataFrame) -> dict:
    return {**summary(oof[TRUE].to_numpy(), oof[PRED].to_numpy(), oof["State"].to_numpy()),
            "folds": sorted(int(f) for f in oof["fold"].unique()), "n_images": len(oof)}  # fmt: skip


def merge_oof(model_dir: str | Path, n_folds: int | None = None, require_all: bool = False) -> dict | None:
    """``<model_dir>/fold*/oof.parquet`` -> ``<model_dir>/oof.parquet`` + ``oof_metrics.json``."""
    model_dir = Path(model_dir)
    parts = sorted(model_dir.glob("fold*/oof.parquet"))
    if not parts:
        if require_all:
            raise UserError(f"{model_dir}: no fold*/oof.parquet; train the folds first (python -m src.dinov3_train)")
        return None
    oof = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True).sort_values("image_id", kind="stable")
    scores = score(oof)
    scores["complete"] = n_folds is not None and len(scores["folds"]) == n_folds
    if require_all and not scores["complete"]:
        raise UserError(f"{model_dir}: folds {scores['folds']} present, {n_folds} expected; train the missing folds")
    write_parquet(model_dir / "oof.parquet", oof.reset_index(drop=True))
    write_json(model_dir / "oof_metrics.json", scores)
    return scores
