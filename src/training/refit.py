"""A full-data refit (--refit-from CV_DIR): one model on every training image, with no validation.

How long it trains comes from the CV run's folds: per fold, Stage 1 up to the epoch Stage 2
started from (its best), then Stage 2 up to the fold's best epoch (none when Stage 2 never beat
Stage 1); the refit runs the median of each over the folds. Without validation nothing picks an
epoch: each stage runs its epochs (no patience), Stage 2 starts from Stage 1's last weights, and
the last epoch's weights (the EMA's with --ema) are saved as ``<output_dir>/full/best.safetensors``
with ``config.yaml`` (holding the chosen epoch counts), ``history.csv`` and ``metrics.json``.
With --pseudo-labels (a path without '{fold}': the pipeline's ``round2/pseudo/all.csv``) those
images train too, as in round 2's folds.

The refit check (--refit-from CV_DIR --folds k): the evidence for or against a refit. The same
procedure runs on fold k's training images only (the fold CSV's other folds), for the median epochs
of the OTHER folds' histories (fold k's own curve, drawn on the images it is scored on, never
enters), with no selection and a seed no CV fold or refit uses; its last weights then predict fold
k's validation images. Files under ``<output_dir>/fold<k>/``: ``oof.parquet`` (the columns of a CV
fold's), ``history.csv`` and ``metrics.json`` (its scores, the epochs it ran); no weights. Merged
over the folds, its OOF says whether a refit beats the fold models (``src.final``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from ..core.config import TrainConfig
from ..core.errors import UserError
from ..core.io_utils import write_csv, write_json, write_parquet
from ..core.metrics import summary
from ..core.targets import TARGETS
from ..data.dataset import BiomassDataset, EpochIndices
from ..data.fold_stats import fold_statistics, vocabularies
from ..data.mixup import Mixup
from ..data.photo_prep import PhotoPrep
from ..losses import build_criterion
from ..models.biomass import BiomassModel
from . import checkpoint as ckpt
from . import cpu_budget, fold_files
from .averaging import make_ema
from .distributed import DistInfo, any_rank, barrier
from .engine import evaluate, train_one_epoch
from .feature_cache import CachedBatches, FeatureCache
from .fit import (
    Stage,
    _divergence_fix,
    _rows,
    _train_dataset,
    _why_not_resume,
    nonfinite_weights,
    oof_frame,
    val_dataset,
)
from .optim import build_optimizer, build_scheduler

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


def chosen_epochs(cv_dir: str | Path, cfg: TrainConfig, exclude: int | None = None) -> tuple[dict, list]:
    """The refit's epoch settings (the median over the CV folds) and each fold's counts;
    ``exclude``: a fold left out (the refit check of fold k: its epochs come from the other folds)."""
    files = sorted(Path(cv_dir).glob("fold*/history.csv"))
    done = [f for f in files if (f.parent / "metrics.json").exists() and f.parent.name != f"fold{exclude}"]
    if not done:
        other = "" if exclude is None else f" other than fold {exclude}"
        raise UserError(f"--refit-from {cv_dir}: no finished fold{other} (fold<k>/metrics.json and history.csv); train "
                        "the CV folds first, with the same --output-dir")  # fmt: skip
    per = [_fold_epochs(pd.read_csv(f), cfg.two_stage) for f in done]
    e1, e2 = (int(np.round(np.median([p[i] for p in per]))) for i in (0, 1))
    if not cfg.two_stage:
        return {"epochs": max(e1, 1)}, per
    if e1 == 0 and e2 == 0:
        e1 = 1
    return {"freeze_epochs": e1, "stage2_epochs": e2}, per


def refit(cfg: TrainConfig, info: DistInfo, images: pd.DataFrame, per_rank_batch: int, inputs: dict,
          depth: np.ndarray | None = None, halves: tuple | None = None) -> dict:
    """The full-data refit; with --folds, the refit check of each of those folds instead."""
    if not cfg.folds:
        return _refit(cfg, info, images, per_rank_batch, inputs, depth, halves)
    from .run import resolve_folds  # run imports this module when it is called: no cycle

    if Path(cfg.output_dir).resolve() == Path(cfg.refit_from).resolve():
        raise UserError(f"--refit-from {cfg.refit_from} --folds {cfg.folds}: the refit check would overwrite the CV "
                        "folds it reads; give it another --output-dir")  # fmt: skip
    folds = resolve_folds(cfg, images)
    out = {}
    for k in cfg.folds:
        with fold_files.fold_lock(cfg.output_dir, k) if info.is_main else contextlib.nullcontext():
            if info.is_main:
                fold_files.remove_stale_temporaries(Path(cfg.output_dir) / f"fold{k}")
            out[k] = _refit(cfg, info, images, per_rank_batch, inputs, depth, halves, check=k,
                            is_val=(folds == k).to_numpy())  # fmt: skip
    return out


def _validation(cfg: TrainConfig, val: pd.DataFrame, stats: dict, extras: dict, depth: np.ndarray | None,
                halves: tuple | None, per_rank_batch: int, info: DistInfo, prep: PhotoPrep) -> DataLoader:
    """Fold k's validation images, loaded as a CV fold validates them (fit.train_fold)."""
    ds = val_dataset(cfg, val, stats, extras, depth, halves, prep)
    return DataLoader(ds, batch_size=per_rank_batch, shuffle=False,
                      **cpu_budget.loader_kwargs(cpu_budget.for_run(cfg, info), info.device))


@dataclass
class RefitRun:
    """One refit (or refit check): its settings with the chosen epochs, images, model, loader and folder."""

    cfg: TrainConfig
    info: DistInfo
    check: int | None  # the fold of a refit check, None for the full-data refit
    out_dir: Path
    what: str  # the first line it prints
    images: pd.DataFrame  # the training images (pseudo-labelled ones are in train_ds only)
    seed: int
    per_rank_batch: int
    inputs: dict = field(default_factory=dict)
    val: pd.DataFrame | None = None  # a refit check's validation images, depth rows and cache rows
    val_depth: np.ndarray | None = None
    val_halves: tuple | None = None
    extras: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    model: BiomassModel | None = None
    criterion: torch.nn.Module | None = None
    train_ds: BiomassDataset | None = None
    prep: PhotoPrep | None = None
    mixup: Mixup | None = None
    sampler: DistributedSampler | None = None
    loader: DataLoader | None = None
    steps: int = 0
    workers: int = 0


def _refit(cfg: TrainConfig, info: DistInfo, images: pd.DataFrame, per_rank_batch: int, inputs: dict,
           depth: np.ndarray | None = None, halves: tuple | None = None, check: int | None = None,
           is_val: np.ndarray | None = None) -> dict:
    """One refit: on every image (``check`` None), or the check of fold ``check`` (``is_val``: its
    validation rows), which trains on the other folds' images and scores its last weights on them."""
    plan, per_fold = chosen_epochs(cfg.refit_from, cfg, exclude=check)
    run, depth, halves = _refit_split(dataclasses.replace(cfg, **plan), info, images, per_rank_batch, depth, halves,
                                      check, is_val, plan, per_fold)  # fmt: skip
    saved = _prepare_refit(run, inputs, depth, halves)
    history, epoch = _train_refit(run, saved)
    return _finish_refit(run, plan, per_fold, history, epoch)


def _refit_split(cfg: TrainConfig, info: DistInfo, images: pd.DataFrame, per_rank_batch: int,
                 depth: np.ndarray | None, halves: tuple | None, check: int | None, is_val: np.ndarray | None,
                 plan: dict, per_fold: list) -> tuple[RefitRun, np.ndarray | None, tuple | None]:  # fmt: skip
    """What the refit trains on (every image, or a check's other folds), where it writes, and its seed;
    with the training images' depth and cache rows."""
    slot = cfg.n_folds if check is None else cfg.n_folds + 1 + check  # seed + slot: a seed no CV fold uses
    if check is None:
        what = f"refit on all {len(images)} images: {plan} (the median of the folds' {per_fold})"
        return RefitRun(cfg, info, None, Path(cfg.output_dir) / FOLDER, what, images, cfg.seed + slot,
                        per_rank_batch), depth, halves  # fmt: skip
    # Fold k's own pseudo-labels ('{fold}'), made without its validation images, as round 2's fold k.
    cfg = dataclasses.replace(cfg, pseudo_labels=cfg.pseudo_labels.replace("{fold}", str(check)))
    val = images[is_val].reset_index(drop=True)
    if val.empty:
        raise UserError(f"fold {check} has no validation images in the fold CSV; check --fold-csv and --folds")
    val_depth, val_halves = None if depth is None else depth[is_val], _rows(halves, is_val)
    images, halves = images[~is_val].reset_index(drop=True), _rows(halves, ~is_val)
    depth = None if depth is None else depth[~is_val]
    what = (f"refit check of fold {check}: {len(images)} training images, {plan} (the median of the other folds' "
            f"{per_fold}), scored on its {len(val)} validation images")  # fmt: skip
    run = RefitRun(cfg, info, check, Path(cfg.output_dir) / f"fold{check}", what, images, cfg.seed + slot,
                   per_rank_batch, val=val, val_depth=val_depth, val_halves=val_halves)  # fmt: skip
    return run, depth, halves


def _prepare_refit(run: RefitRun, inputs: dict, depth: np.ndarray | None, halves: tuple | None) -> dict | None:
    """The model and criterion (seeded), the training set and its loader; the saved state a
    --resume goes on from (None: a fresh start)."""
    cfg, info, images, seed = run.cfg, run.info, run.images, run.seed
    run.extras = vocabularies(images)
    run.stats = fold_statistics(images, run.extras)
    torch.manual_seed(seed)
    run.model = BiomassModel(cfg, run.stats, run.extras).to(info.device)
    run.criterion = build_criterion(cfg, run.stats).to(info.device)
    run.prep, run.mixup = PhotoPrep.of(cfg), Mixup.of(cfg, seed)
    run.train_ds, run.inputs = _train_dataset(cfg, images, run.stats, run.extras, seed - cfg.seed, inputs, depth, halves,
                                              prep=run.prep, mixup=run.mixup)  # seed + slot  # fmt: skip
    saved = _resume_state(run.out_dir, cfg, run.inputs, info) if cfg.resume else None
    if info.is_main:
        print(run.what if saved is None else f"{run.what}: resuming after epoch {saved['refit_state']['epoch']}",
              flush=True)  # fmt: skip
    barrier(info)
    run.sampler = DistributedSampler(run.train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=seed, drop_last=True)  # fmt: skip
    budget = cpu_budget.for_run(cfg, info)
    if info.is_main and budget.note():
        print(f"note: {budget.note()}", flush=True)
    run.workers = budget.workers
    run.loader = DataLoader(run.train_ds, batch_size=run.per_rank_batch, sampler=EpochIndices(run.sampler, len(run.train_ds)),
                            drop_last=True, **cpu_budget.loader_kwargs(budget, info.device))  # fmt: skip
    run.steps = len(run.loader) // cfg.grad_accum
    if run.steps == 0:
        raise UserError(f"refit: {len(images)} images give no full update at --batch-size {cfg.batch_size}; lower it")
    return saved


def _refit_stages(cfg: TrainConfig) -> list[Stage]:
    if cfg.two_stage:
        return [Stage("stage1", cfg.freeze_epochs, False), Stage("stage2", cfg.stage2_epochs, not cfg.freeze_backbone)]
    return [Stage("single", cfg.epochs, not cfg.freeze_backbone)]


def _train_refit(run: RefitRun, saved: dict | None) -> tuple[list, int]:
    """Each stage's epochs, from the start or from ``saved``; returns the history and the epochs run."""
    stages = _refit_stages(run.cfg)
    at = dict(saved["refit_state"]) if saved else {"stage": 0, "stage_epoch": 0, "epoch": 0, "updates": 0, "history": []}
    if saved:
        run.model.load_state_dict(saved["model"], strict=True)
    history, epoch = at["history"], at["epoch"]
    last = max(i for i, s in enumerate(stages) if s.epochs > 0) if any(s.epochs > 0 for s in stages) else -1
    for si, stage in enumerate(stages):
        if stage.epochs <= 0 or si < at["stage"]:
            continue
        parts = _start_refit_stage(run, stage, si, si == last, at, saved)
        first = at["stage_epoch"] if si == at["stage"] else 0
        for e in range(first, stage.epochs):
            epoch = _refit_epoch(run, stage, si, e, epoch, history, parts)
    return history, epoch


def _start_refit_stage(run: RefitRun, stage: Stage, si: int, is_last: bool, at: dict, saved: dict | None) -> dict:
    """The stage's batches, DDP wrapper, optimiser, schedule and EMA: fresh, or the saved ones mid-stage."""
    cfg, info, model = run.cfg, run.info, run.model
    model.freeze_backbone(not stage.train_backbone)
    batches = run.loader
    if not stage.train_backbone and cfg.feature_cache and not cfg.use_aos_hallucination:
        with run.train_ds.unmixed():
            cache = FeatureCache(model, run.train_ds, cfg.feature_cache_views, info, run.per_rank_batch,
                                 "feature cache (refit)", run.workers)  # fmt: skip
        batches = CachedBatches(cache, run.sampler, run.per_rank_batch, run.seed, run.mixup)
    wrapped = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) if info.distributed else model
    optimizer = build_optimizer(model, cfg, stage.train_backbone)
    scheduler = build_scheduler(optimizer, cfg, stage.epochs, run.steps)
    scheduler.step_update(0)
    ema, updates = make_ema(model, cfg, is_last, stage.epochs * run.steps), 0  # --ema-stages as in the CV folds
    if si == at["stage"] and at["stage_epoch"] > 0:  # resumed mid-stage: the saved optimiser, schedule and EMA
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        updates = at["updates"]
        if ema is not None:
            ema.module.load_state_dict(saved["ema"], strict=True)
    return {"wrapped": wrapped, "batches": batches, "optimizer": optimizer, "scheduler": scheduler, "ema": ema,
            "updates": updates}  # fmt: skip


def _refit_epoch(run: RefitRun, stage: Stage, si: int, e: int, epoch: int, history: list, parts: dict) -> int:
    """Epoch ``e`` of the stage (``epoch`` overall), then its commit; returns the epochs run."""
    cfg, info, model, ema = run.cfg, run.info, run.model, parts["ema"]
    run.loader.sampler.set_epoch(epoch)
    if isinstance(parts["batches"], CachedBatches):
        parts["batches"].set_epoch(epoch)
    loss, parts["updates"] = train_one_epoch(parts["wrapped"], model, parts["batches"], run.criterion,
                                             parts["optimizer"], parts["scheduler"], info, grad_accum=cfg.grad_accum,
                                             grad_clip=cfg.grad_clip, updates_done=parts["updates"],
                                             desc=f"refit {stage.name} ep {e + 1}", ema=ema)  # fmt: skip
    if any_rank(info, not np.isfinite(loss["loss"]) or nonfinite_weights(model)):
        # Nothing chose an epoch here, so nothing finite can be kept: stop before the commit.
        raise UserError(f"{run.out_dir}: the refit diverged in {stage.name} epoch {e + 1} (train loss {loss['loss']:.4g}"
                        f" or non-finite weights); {_divergence_fix(cfg, stage)}. Nothing of it is saved")  # fmt: skip
    history.append({"epoch": epoch, "stage": stage.name, **{f"train_{k}" if k != "loss" else "train_loss": v
                                                           for k, v in loss.items()}})  # fmt: skip
    if info.is_main:
        print(f"refit | {stage.name} {e + 1}/{stage.epochs} | train {loss['loss']:.4f}", flush=True)
    epoch += 1
    done = e + 1 == stage.epochs
    if done and ema is not None:  # the next stage goes on from what this one would save
        model.load_state_dict(ema.module.state_dict())
    # One commit per epoch (as a CV fold's): a preempted or timed-out refit resumes here.
    _commit(run.out_dir, info, model, cfg, run.inputs, history,
            {"stage": si + 1, "stage_epoch": 0, "epoch": epoch, "updates": 0} if done else
            {"stage": si, "stage_epoch": e + 1, "epoch": epoch, "updates": parts["updates"]},
            None if done else (parts["optimizer"], parts["scheduler"], ema))  # fmt: skip
    return epoch


def _finish_refit(run: RefitRun, plan: dict, per_fold: list, history: list, epoch: int) -> dict:
    """The refit's metrics; a full refit's last weights saved, a check's scored on its fold's validation images."""
    cfg, info, check, out_dir, judged = run.cfg, run.info, run.check, run.out_dir, run.model
    result = {**plan, "epochs_run": epoch, "folds_epochs": [list(p) for p in per_fold], "n_images": len(run.images),
              "n_pseudo": len(run.train_ds) - len(run.images),
              "train_loss": history[-1]["train_loss"] if history else None}  # fmt: skip
    if check is not None:  # the last weights, on images they never saw and nothing was chosen on
        val = run.val
        val_loader = _validation(cfg, val, run.stats, run.extras, run.val_depth, run.val_halves, run.per_rank_batch,
                                 info, run.prep)  # fmt: skip
        val_out, val_loss = evaluate(judged, val_loader, run.criterion, info.device)
        scores = summary(val[list(TARGETS)].to_numpy(), val_out["pred"], val["State"].to_numpy())
        result = {**scores, "fold": check, "selection": "none", **result, "n_val": len(val),
                  "val_loss": val_loss.get("loss"), "seed": run.seed}  # fmt: skip
    if info.is_main:
        if check is None:
            ckpt.save_weights(judged, out_dir / "best.safetensors", cfg, run.extras)
        else:
            write_parquet(out_dir / "oof.parquet", oof_frame(val, check, val_out))
        write_csv(out_dir / "history.csv", pd.DataFrame(history))
        write_json(out_dir / "metrics.json", result)
        if check is None:
            print(f"refit: saved {out_dir / 'best.safetensors'} after {epoch} epochs", flush=True)
        else:
            print(f"refit check of fold {check}: weighted_r2 {result['weighted_r2']:.4f} after {epoch} epochs "
                  f"-> {out_dir / 'oof.parquet'}", flush=True)  # fmt: skip
    barrier(info)
    return result


STATE = "last_state.pt"


def _resume_state(out_dir: Path, cfg: TrainConfig, inputs: dict, info: DistInfo) -> dict | None:
    """The refit's committed state when it matches this run (settings, epochs, inputs); otherwise
    the folder starts over (rank 0 empties it), with the reason printed."""
    saved, why = fold_files.saved_state(out_dir, key="refit_state")
    if saved is not None:
        why = _why_not_resume(saved, cfg, inputs)
        saved = None if why else saved
    barrier(info)  # every rank has read the old state before rank 0 removes it
    if info.is_main:
        if why:
            print(f"{out_dir}: {why}: starting over", flush=True)
        if saved is None:
            fold_files.start_over(out_dir)
    barrier(info)
    return saved


def _commit(out_dir: Path, info: DistInfo, model, cfg: TrainConfig, inputs: dict, history: list, at: dict,
            running: tuple | None) -> None:
    """The epoch's resume state in one atomic file; ``running``: (optimizer, scheduler, ema) of a
    stage still under way (a finished stage's next one starts fresh from the weights)."""
    if info.is_main:
        state = {"refit_state": {**at, "history": history}, "model": ckpt.cpu_state(model), "config": cfg.to_dict(),
                 "inputs": inputs}
        if running is not None:
            optimizer, scheduler, ema = running
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
            if ema is not None:
                state["ema"] = ckpt.cpu_state(ema.module)
        ckpt.save_state(out_dir / STATE, state)
    barrier(info)
