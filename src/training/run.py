"""Entry point of a training run: data, folds, DDP set-up, then one fold after another.

After a run over every fold, rank 0 merges the ``fold*/oof.parquet`` files under the output
directory into ``oof.parquet`` + ``oof_metrics.json`` and prints the OOF weighted R^2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd

from ..core.config import TrainConfig, idle_flags
from ..core.errors import UserError
from ..data import image_cache
from ..data.depth import load_for_config
from ..data.fingerprint import fold_inputs
from ..data.folds import make_folds, read_fold_csv
from ..data.photos import check_photos
from ..data.schema import load_train
from ..rounds.oof import merge_oof
from .distributed import cleanup, per_rank_batch, setup
from .fit import train_fold
from .fold_files import fold_lock, remove_stale_temporaries


def resolve_folds(cfg: TrainConfig, images: pd.DataFrame) -> pd.Series:
    if cfg.use_predefined_folds:
        folds = read_fold_csv(cfg.fold_csv, images, cfg.n_folds)
    else:
        folds = make_folds(images, cfg.n_folds, cfg.cv_strategy, cfg.fold_seed)["fold"]
    missing = [k for k in cfg.folds if k not in set(folds)]
    if missing:
        raise UserError(f"--folds {missing} not present in the folds ({sorted(set(folds))})")
    return folds


def data_notes(cfg: TrainConfig, sizes: list[tuple[int, int]]) -> list[str]:
    """Flags that cannot act on photos of these (width, height) (``idle_flags``: the config alone)."""
    if not cfg.use_pad_to_square:
        return []
    sizes = sorted(set(sizes))
    if all(w == 2 * h for w, h in sizes):  # both halves square: nothing to pad
        shown = ", ".join(f"{w}x{h}" for w, h in sizes[:5])
        return [f"--use-pad-to-square acts only on photos whose halves are not square; these photos are {shown} "
                "(halves square): it changes nothing here"]
    return []


def run(cfg: TrainConfig) -> dict | None:
    images = load_train(cfg.data_dir)
    folds = resolve_folds(cfg, images)
    depth = load_for_config(cfg, "train", images["image_id"].tolist())
    halves = image_cache.load_for_config(cfg, "train", images["image_id"].tolist())
    info = setup(cfg.device)
    try:
        # Every photo decoded once now, unless the image cache already did: a damaged one stops the run here.
        # Without a cache folder the same pass fills an in-memory image cache, so no epoch decodes a photo
        # again (each rank holds its own; DataLoader workers share their rank's).
        memory = image_cache.in_memory_for_config(cfg, "train", len(images), info.local_world_size, info.is_main)
        sizes = check_photos(cfg.data_dir, images, decode=halves is None, warn=info.is_main,
                             each=None if memory is None else memory.add)  # fmt: skip
        halves = halves if memory is None else memory.halves()
        inputs = fold_inputs(images, folds, cfg.data_dir, depth)  # what every fold's resume must match
        per_rank = per_rank_batch(cfg.batch_size, info, cfg.grad_accum)
        todo = cfg.folds or sorted(set(folds))
        if info.is_main:
            photos = ("image cache file" if cfg.image_cache_dir else "decoded every epoch" if memory is None else
                      f"decoded once into memory ({halves[0].nbytes / 2**20:.0f} MiB)")  # fmt: skip
            print(f"device {info.device} x {info.world_size} | backbone {cfg.backbone_size} | folds {todo} | photos "
                  f"{photos}", flush=True)  # fmt: skip
            for line in idle_flags(cfg) + data_notes(cfg, sizes):
                print(f"note: {line}", flush=True)
        if cfg.refit_from:
            from .refit import refit

            return refit(cfg, info, images, per_rank, inputs, depth, halves)
        for k in todo:
            with fold_lock(cfg.output_dir, k) if info.is_main else contextlib.nullcontext():
                if info.is_main:
                    remove_stale_temporaries(Path(cfg.output_dir) / f"fold{k}")
                train_fold(cfg, info, images, folds, k, per_rank, inputs, depth, halves)
        if not info.is_main:
            return None
        # Only a run over every fold merges; one-fold jobs (the pipeline's) leave that to the merge rule.
        if len(todo) < folds.nunique():
            return None
        scores = merge_oof(Path(cfg.output_dir), folds.nunique())
        if scores:
            print(f"OOF over folds {scores['folds']}: weighted_r2 {scores['weighted_r2']:.4f} "
                  f"(log {scores['weighted_r2_log']:.4f}) -> {cfg.output_dir}/oof_metrics.json", flush=True)
        return scores
    finally:
        cleanup()
