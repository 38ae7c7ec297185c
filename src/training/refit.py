"""A full-data refit (--refit-from CV_DIR): one model on every training image, with no validation.

How long it trains comes from the CV run's folds: per fold, Stage 1 up to the epoch Stage 2
started from (its best), then Stage 2 up to the fold's best epoch (none when Stage 2 never beat
Stage 1); the refit runs the median of each over the folds. Without validation nothing picks an
epoch: each stage runs its epochs (no patience), Stage 2 starts from Stage 1's last weights, and
the last epoch's weights (the EMA's with --ema) are saved as ``<output_dir>/full/best.safetensors``
with ``config.yaml`` (holding the chosen epoch counts), ``history.csv`` and ``metrics.json``.
With --pseudo-labels (a path without '{fold}': the pipeline's ``round2/pseudo/all.csv``) those
images train too, as in round 2's folds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from src.config import TrainConfig
from src.data.dataset import EpochIndices
from src.data.fold_stats import fold_statistics, vocabularies
from src.data.mixup import Mixup
from src.errors import UserError
from src.io_utils import write_csv, write_json
from src.losses import build_criterion
from src.models.biomass import BiomassModel
from src.training import checkpoint as ckpt
from src.training import fold_files
from src.training.averaging import make_ema
from src.training.distributed import DistInfo, barrier
from src.training.engine import train_one_epoch
from src.training.feature_cache import CachedBatches, FeatureCache
from src.training.fit import Stage, _train_dataset
from src.training.optim import build_optimizer, build_scheduler

FOLDER = "full"


def _fold_epochs(history: pd.DataFrame, two_stage: bool) -> tuple[int, int]:
    """(Stage 1 epochs, Stage 2 epochs) of one fold up to its best epoch (single stage: (E, 0))."""
    best = int(history["weighted_r2"].fillna(-np.inf).to_numpy().argmax())
    if not two_stage:
        return best + 1, 0
    s1 = history[history["stage"] == "stage1"]
    if best < len(s1) or len(s1) == len(history):  # Stage 2 never beat Stage 1 (or did not run)
        return best + 1, 0
    s1_best = int(s1["weighted_r2"].fillna(-np.inf).to_numpy().argmax()) + 1 if len(s1) else 0
    return s1_best, best - len(s1) + 1


def chosen_epochs(cv_dir: str | Path, cfg: TrainConfig) -> tuple[dict, list]:
    """The refit's epoch settings (the median over the CV folds) and each fold's counts."""
    files = sorted(Path(cv_dir).glob("fold*/history.csv"))
    done = [f for f in files if (f.parent / "metrics.json").exists()]
    if not done:
        raise UserError(f"--refit-from {cv_dir}: no finished fold (fold<k>/metrics.json and history.csv); train the "
                        "CV folds first, with the same --output-dir")  # fmt: skip
    per = [_fold_epochs(pd.read_csv(f), cfg.two_stage) for f in done]
    e1, e2 = (int(np.round(np.median([p[i] for p in per]))) for i in (0, 1))
    if not cfg.two_stage:
        return {"epochs": max(e1, 1)}, per
    if e1 == 0 and e2 == 0:
        e1 = 1
    return {"freeze_epochs": e1, "stage2_epochs": e2}, per


def refit(cfg: TrainConfig, info: DistInfo, images: pd.DataFrame, per_rank_batch: int, inputs: dict,
          depth: np.ndarray | None = None, halves: tuple | None = None) -> dict:
    plan, per_fold = chosen_epochs(cfg.refit_from, cfg)
    cfg = dataclasses.replace(cfg, **plan)
    out_dir = Path(cfg.output_dir) / FOLDER
    if info.is_main:
        fold_files.start_over(out_dir)
        print(f"refit on all {len(images)} images: {plan} (the median of the folds' {per_fold})", flush=True)
    barrier(info)
    seed = cfg.seed + cfg.n_folds  # a seed no CV fold uses
    extras = vocabularies(images)
    stats = fold_statistics(images, extras)
    torch.manual_seed(seed)
    model = BiomassModel(cfg, stats, extras).to(info.device)
    criterion = build_criterion(cfg, stats).to(info.device)
    train_ds, _ = _train_dataset(cfg, images, stats, extras, cfg.n_folds, inputs, depth, halves)  # seed + n_folds
    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                                 drop_last=True)  # fmt: skip
    loader = DataLoader(train_ds, batch_size=per_rank_batch, sampler=EpochIndices(sampler, len(train_ds)),
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0, drop_last=True,
                        pin_memory=info.device.type == "cuda")  # fmt: skip
    steps = len(loader) // cfg.grad_accum
    if steps == 0:
        raise UserError(f"refit: {len(images)} images give no full update at --batch-size {cfg.batch_size}; lower it")
    if cfg.two_stage:
        stages = [Stage("stage1", cfg.freeze_epochs, False), Stage("stage2", cfg.stage2_epochs, not cfg.freeze_backbone)]
    else:
        stages = [Stage("single", cfg.epochs, not cfg.freeze_backbone)]
    history, epoch, judged = [], 0, model
    for stage in stages:
        if stage.epochs <= 0:
            continue
        model.freeze_backbone(not stage.train_backbone)
        batches = loader
        if not stage.train_backbone and cfg.feature_cache and not cfg.use_aos_hallucination:
            with train_ds.unmixed():
                cache = FeatureCache(model, train_ds, cfg.feature_cache_views, info, per_rank_batch,
                                     "feature cache (refit)", cfg.num_workers)  # fmt: skip
            batches = CachedBatches(cache, sampler, per_rank_batch, seed, Mixup.of(cfg, seed))
        wrapped = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) if info.distributed else model
        optimizer = build_optimizer(model, cfg, stage.train_backbone)
        scheduler = build_scheduler(optimizer, cfg, stage.epochs, steps)
        scheduler.step_update(0)
        ema, updates = make_ema(model, cfg), 0
        for e in range(stage.epochs):
            loader.sampler.set_epoch(epoch)
            if isinstance(batches, CachedBatches):
                batches.set_epoch(epoch)
            loss, updates = train_one_epoch(wrapped, model, batches, criterion, optimizer, scheduler, info,
                                            grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip, updates_done=updates,
                                            desc=f"refit {stage.name} ep {e + 1}", ema=ema)  # fmt: skip
            history.append({"epoch": epoch, "stage": stage.name, **{f"train_{k}" if k != "loss" else "train_loss": v
                                                                   for k, v in loss.items()}})  # fmt: skip
            if info.is_main:
                print(f"refit | {stage.name} {e + 1}/{stage.epochs} | train {loss['loss']:.4f}", flush=True)
            epoch += 1
        judged = model if ema is None else ema.module
        if judged is not model:  # the next stage goes on from what this one would save
            model.load_state_dict(judged.state_dict())
    result = {**plan, "epochs_run": epoch, "folds_epochs": [list(p) for p in per_fold], "n_images": len(images),
              "n_pseudo": len(train_ds) - len(images),
              "train_loss": history[-1]["train_loss"] if history else None}  # fmt: skip
    if info.is_main:
        ckpt.save_weights(judged, out_dir / "best.safetensors", cfg, extras)
        write_csv(out_dir / "history.csv", pd.DataFrame(history))
        write_json(out_dir / "metrics.json", result)
        print(f"refit: saved {out_dir / 'best.safetensors'} after {epoch} epochs", flush=True)
    barrier(info)
    return result
