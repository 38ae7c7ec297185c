"""Train one model on one fold: the two-stage schedule, best/last checkpoints, history and OOF.

Files under ``<output_dir>/fold<k>/``: ``best.safetensors`` + ``config.yaml`` (best validation
weighted R^2 over both stages), ``last.safetensors`` + ``last_state.pt`` (resume),
``history.csv`` (one row per epoch), ``oof.parquet`` (the best epoch's validation predictions),
``epoch_preds.parquet`` (every epoch's validation predictions: the model's merge scores each fold
at an epoch chosen on the other folds, ``src.rounds.oof``) and ``metrics.json`` (written when the fold is
finished).

An epoch with a non-finite training loss, weight or validation score ends the fold (no later epoch
or stage) and nothing of it is kept: the fold finishes with its best finite epoch, or, with none,
stops with a UserError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from ..core.config import RUNTIME_ONLY, TrainConfig
from ..core.errors import UserError
from ..core.io_utils import write_csv, write_json, write_parquet
from ..core.metrics import summary
from ..core.targets import SHORT, TARGETS
from ..data.dataset import BiomassDataset, EpochIndices
from ..data.depth import load_for_config
from ..data.fingerprint import files_hash, frame_hash
from ..data.fold_stats import aux_targets, fold_statistics, vocabularies
from ..data.mixup import Mixup
from ..data.photo_prep import PhotoPrep
from ..data.pseudo import PSEUDO, load_pseudo
from ..data.transforms import HalfTransform
from ..losses import build_criterion
from ..models.biomass import BiomassModel, export_frame
from ..rounds.oof import EPOCH_PREDS, PRED, TRUE
from . import checkpoint as ckpt
from . import cpu_budget, fold_files
from .averaging import TopK, make_ema
from .distributed import DistInfo, all_equal_check, any_rank, barrier
from .engine import evaluate, train_one_epoch
from .feature_cache import CachedBatches, CachedValidation, FeatureCache
from .monitor import Hints
from .optim import build_optimizer, build_scheduler, current_lrs


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    train_backbone: bool
    patience: int | None = None


def plan_stages(cfg: TrainConfig) -> list[Stage]:
    if cfg.two_stage:
        return [
            Stage("stage1", cfg.freeze_epochs, False, cfg.stage1_patience),
            Stage("stage2", cfg.stage2_epochs, not cfg.freeze_backbone),
        ]
    return [Stage("single", cfg.epochs, not cfg.freeze_backbone)]


@dataclass
class FoldState:
    """Counters that define where a fold is; saved every epoch for --resume."""

    stage: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    updates: int = 0
    best: float = float("-inf")
    best_epoch: int = -1
    stage_best: float = float("-inf")
    bad_epochs: int = 0
    stage2_start: int = -1
    history: list = field(default_factory=list)
    top: list = field(default_factory=list)  # [score, epoch] of the last stage's best epochs (--swa-top-k)
    swa: dict = field(default_factory=dict)  # the averaged weights' epochs and scores, once computed
    diverged: dict = field(default_factory=dict)  # {"what", "fix"} of the epoch that ended the fold non-finite


def _build_feature_caches(model, cfg, info, train_ds, val_ds, batch_size):
    """Tokens of the frozen backbone: ``--feature-cache-views`` augmented samples of every training
    image, drawn by the training dataset itself (its transform and seed), and the unaugmented
    validation images. Under DDP each rank computes its share and all ranks end with all."""
    workers = cpu_budget.for_run(cfg, info).workers
    with train_ds.unmixed():  # plain views; CachedBatches mixes their tokens
        train_cache = FeatureCache(model, train_ds, cfg.feature_cache_views, info, batch_size, "feature cache (train)",
                                   workers)  # fmt: skip
    val_cache = FeatureCache(model, val_ds, 1, info, batch_size, "feature cache (val)", workers)
    if info.is_main:
        mib = (train_cache.nbytes + val_cache.nbytes) / 2**20
        print(f"feature cache: {len(train_ds)} images x {cfg.feature_cache_views} augmented views + {len(val_ds)} val, "
              f"{mib:.0f} MiB", flush=True)  # fmt: skip
    return train_cache, val_cache


def _rows(halves: tuple | None, mask: np.ndarray) -> tuple | None:
    return None if halves is None else (halves[0], halves[1][mask])


def _train_dataset(cfg: TrainConfig, train: pd.DataFrame, stats: dict, extras: dict, fold: int, inputs: dict,
                   depth: np.ndarray | None, halves: tuple | None, *, prep: PhotoPrep,
                   mixup: Mixup | None) -> tuple[BiomassDataset, dict]:  # fmt: skip
    """The fold's training images, plus its pseudo-labelled ones (--pseudo-labels), whose labels
    then become part of what a resume must match. ``prep`` and ``mixup``: the run's, built once
    (``PhotoPrep.of(cfg)``, ``Mixup.of(cfg, seed)``) and shared with the other datasets and the
    frozen-feature batches."""
    aux = aux_targets(train, stats, extras)
    if cfg.pseudo_labels:
        pseudo = load_pseudo(cfg.pseudo_labels, fold, cfg.data_dir, train)
        inputs = {**inputs, "pseudo labels": frame_hash(pseudo),
                  "pseudo photos": files_hash(cfg.data_dir, pseudo["image_path"])}  # fmt: skip
        extra_aux = aux_targets(pseudo, stats, extras)
        aux = {k: np.concatenate([v, extra_aux[k]]) for k, v in aux.items()}
        aux[PSEUDO] = np.r_[np.zeros(len(train), bool), np.ones(len(pseudo), bool)]
        if depth is not None:
            depth = np.concatenate([depth, load_for_config(cfg, "test", pseudo["image_id"].tolist())])
        if halves is not None:  # not in the training image cache: decoded from the JPEG
            halves = (halves[0], np.r_[halves[1], np.full(len(pseudo), -1)])
        train = pd.concat([train, pseudo.drop(columns=PSEUDO)], ignore_index=True)
    tf = dict(size=cfg.image_size, border_mask=cfg.use_border_mask, pad_to_square=cfg.use_pad_to_square)
    ds = BiomassDataset(train, cfg.data_dir, HalfTransform(train=True, strong_aug=cfg.strong_aug,
                        perspective=cfg.use_perspective_jitter, aos=cfg.use_aos_hallucination, **tf),
                        seed=cfg.seed + fold, depth=depth, aux=aux, halves=halves, prep=prep, mixup=mixup)  # fmt: skip
    return ds, inputs


def val_dataset(cfg: TrainConfig, val: pd.DataFrame, stats: dict, extras: dict, depth: np.ndarray | None,
                halves: tuple | None, prep: PhotoPrep) -> BiomassDataset:
    """Validation images, unaugmented (a CV fold's, and the refit check's)."""
    tf = dict(size=cfg.image_size, border_mask=cfg.use_border_mask, pad_to_square=cfg.use_pad_to_square)
    return BiomassDataset(val, cfg.data_dir, HalfTransform(train=False, **tf), depth=depth,
                          aux=aux_targets(val, stats, extras), halves=halves, prep=prep)  # fmt: skip


def oof_frame(val: pd.DataFrame, fold: int, outputs: dict[str, np.ndarray]) -> pd.DataFrame:
    """True and predicted grams per validation image, plus any auxiliary predictions."""
    df = pd.DataFrame({"image_id": val["image_id"].to_numpy(), "fold": fold, "State": val["State"].to_numpy()})
    for i, t in enumerate(TARGETS):
        df[f"true_{t}"] = val[t].to_numpy()
        df[f"pred_{t}"] = outputs["pred"][:, i]
    return df.join(export_frame(outputs))


def _format(fold: int, stage: Stage, stage_epoch: int, row: dict, parts: list[str]) -> str:
    lrs = " ".join(f"{k} {row[f'lr_{k}']:.1e}" for k in ("heads", "backbone") if f"lr_{k}" in row)
    comp = lambda prefix: ", ".join(f"{p} {row[f'{prefix}_{p}']:.4f}" for p in parts)  # noqa: E731
    return (
        f"fold {fold} | {stage.name} {stage_epoch + 1}/{stage.epochs} | lr {lrs} | "
        f"train {row['train_loss']:.4f} ({comp('train')}) | val {row['val_loss']:.4f} ({comp('val')}) | "
        f"weighted_r2 {row['weighted_r2']:.4f} r2_dead {row['r2_dead']:.3f} r2_clover {row['r2_clover']:.3f} "
        f"r2_total {row['r2_total']:.3f}"
    )


@dataclass
class FoldRun:
    """What one fold's stages and epochs share, built once: its images, model, datasets, loaders and folder."""

    cfg: TrainConfig
    info: DistInfo
    fold: int
    fold_dir: Path
    n_train: int
    val: pd.DataFrame
    extras: dict
    model: BiomassModel
    criterion: torch.nn.Module
    train_ds: BiomassDataset
    val_ds: BiomassDataset
    sampler: DistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader
    steps: int  # optimiser updates per epoch
    per_rank_batch: int
    inputs: dict  # what a resume must match
    mixup: Mixup | None
    caches: tuple | None = None  # (train, val) frozen-feature caches, built when a frozen stage first needs them


@dataclass
class StageRun:
    """One stage under way: its optimiser, schedule, EMA and batches."""

    stage: Stage
    index: int
    is_last: bool  # the last stage with epochs (--ema-stages, --swa-top-k)
    wrapped: torch.nn.Module  # DDP around the model, or the model
    batches: object
    val_batches: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    ema: object


def train_fold(cfg: TrainConfig, info: DistInfo, images: pd.DataFrame, folds: pd.Series, fold: int, per_rank_batch: int,
               inputs: dict[str, str], depth: np.ndarray | None = None, halves: tuple | None = None) -> dict:
    """``inputs``: the run's ``fold_inputs`` fingerprint, which a resume must match;
    ``depth``: cached half depth maps in ``images`` row order (None without --use-depth);
    ``halves``: the image cache (memory map, row per image in ``images`` order), or None.

    The fold's stages: resume or start, each stage's epochs (each committed), the finish."""
    run = _prepare_fold(cfg, info, images, folds, fold, per_rank_batch, inputs, depth, halves)
    state, saved = _resume_or_start(run)
    hints = Hints(cfg)
    stages = plan_stages(cfg)
    last_stage = max(i for i, s in enumerate(stages) if s.epochs > 0)
    top = TopK(run.fold_dir, cfg.swa_top_k, state.top, by_score=cfg.swa_select == "best")
    epoch_preds = _saved_epoch_preds(run.fold_dir, state.epoch) if state.epoch else []
    for si in range(state.stage, len(stages)):
        if stages[si].epochs <= 0:
            state.stage = si + 1
            continue
        s = _start_stage(run, state, stages[si], si, si == last_stage, saved)
        saved = None  # only the first stage run resumes mid-stage
        while state.stage == si:
            if _epoch(run, state, s, stages, top, epoch_preds, hints):
                break
        if state.diverged:
            _end_at_last_finite_epoch(state, len(stages))
            break
    return _finish_fold(run, state, top)


def _prepare_fold(cfg: TrainConfig, info: DistInfo, images: pd.DataFrame, folds: pd.Series, fold: int,
                  per_rank_batch: int, inputs: dict[str, str], depth: np.ndarray | None,
                  halves: tuple | None) -> FoldRun:  # fmt: skip
    """The fold's split, model and criterion (seeded by the fold), datasets and loaders."""
    is_val = (folds == fold).to_numpy()
    train, val = images[~is_val].reset_index(drop=True), images[is_val].reset_index(drop=True)
    if val.empty:
        raise UserError(f"fold {fold} has no validation images in the fold CSV; check --fold-csv and --folds")
    extras = vocabularies(train)
    stats = fold_statistics(train, extras)  # real images only: the heads start at the data
    torch.manual_seed(cfg.seed + fold)
    model = BiomassModel(cfg, stats, extras).to(info.device)
    criterion = build_criterion(cfg, stats).to(info.device)
    prep, mixup = PhotoPrep.of(cfg), Mixup.of(cfg, cfg.seed + fold)
    train_ds, inputs = _train_dataset(cfg, train, stats, extras, fold, inputs, None if depth is None else depth[~is_val],
                                      _rows(halves, ~is_val), prep=prep, mixup=mixup)  # fmt: skip
    val_ds = val_dataset(cfg, val, stats, extras, None if depth is None else depth[is_val], _rows(halves, is_val), prep)
    # One sampler for one or many ranks: rank r takes perm[r::world], so the union of the ranks'
    # i-th batches is exactly one process's i-th batch and DDP matches single-process training.
    sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed + fold, drop_last=True)
    budget = cpu_budget.for_run(cfg, info)
    if info.is_main and budget.note():
        print(f"note: {budget.note()}", flush=True)
    loading = cpu_budget.loader_kwargs(budget, info.device)
    train_loader = DataLoader(train_ds, batch_size=per_rank_batch, sampler=EpochIndices(sampler, len(train_ds)), **loading,
                              drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=per_rank_batch, shuffle=False, **loading)
    steps = len(train_loader) // cfg.grad_accum
    if steps == 0:
        raise UserError(
            f"fold {fold}: {len(train)} training images give no full update at --batch-size {cfg.batch_size} "
            f"x --grad-accum {cfg.grad_accum}; lower them"
        )
    return FoldRun(cfg, info, fold, Path(cfg.output_dir) / f"fold{fold}", len(train), val, extras, model, criterion,
                   train_ds, val_ds, sampler, train_loader, val_loader, steps, per_rank_batch, inputs, mixup)


def _resume_or_start(run: FoldRun) -> tuple[FoldState, dict | None]:
    """The fold's state and the saved one it resumes (its weights loaded into the model) under
    --resume when that matches this run; otherwise a fresh state in an emptied folder, and None."""
    cfg, info, fold, fold_dir = run.cfg, run.info, run.fold, run.fold_dir
    saved, why = _resume_point(fold_dir, cfg, run.inputs) if cfg.resume else (None, "")
    if saved is None:
        # A fresh start leaves nothing of an earlier run in the folder: no old best, OOF or config
        # can be mistaken for this run's.
        if info.is_main and why:
            print(f"fold {fold}: {why}: starting over", flush=True)
        barrier(info)  # every rank has read the old state before rank 0 removes it
        if info.is_main:
            fold_files.start_over(fold_dir)
        barrier(info)
        if info.is_main:
            print(f"fold {fold}: {run.n_train} train / {len(run.val)} val images, {run.steps} updates per epoch",
                  flush=True)  # fmt: skip
        return FoldState(), None
    if "model" in saved:  # last_state.pt is the one commit point: a kill between two files cannot split it
        run.model.load_state_dict(saved["model"], strict=True)
    else:
        ckpt.load_weights(run.model, fold_dir / "last.safetensors")  # a finished fold keeps no weights in its state
    state = FoldState(**saved["fold_state"])
    if info.is_main:
        print(f"fold {fold}: resuming after epoch {state.epoch}", flush=True)
    return state, saved


def _stage_batches(run: FoldRun, stage: Stage) -> tuple:
    """The stage's training and validation batches: the loaders, or in a frozen stage with
    --feature-cache the frozen backbone's cached tokens (the caches built once, when first needed)."""
    cfg = run.cfg
    if stage.train_backbone or not cfg.feature_cache or cfg.use_aos_hallucination:
        return run.train_loader, run.val_loader
    if run.caches is None:
        run.caches = _build_feature_caches(run.model, cfg, run.info, run.train_ds, run.val_ds, run.per_rank_batch)
    return (CachedBatches(run.caches[0], run.sampler, run.per_rank_batch, cfg.seed + run.fold, run.mixup),
            CachedValidation(run.caches[1], run.per_rank_batch))  # fmt: skip


def _start_stage(run: FoldRun, state: FoldState, stage: Stage, si: int, is_last: bool, saved: dict | None) -> StageRun:
    """The stage's optimiser, schedule and EMA: fresh, or mid-stage the saved ones (``saved``)."""
    cfg, info, model = run.cfg, run.info, run.model
    if stage.name == "stage2" and state.stage_epoch == 0:
        state.stage2_start = state.epoch
    model.freeze_backbone(not stage.train_backbone)
    batches, val_batches = _stage_batches(run, stage)
    wrapped = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None) if info.distributed else model
    optimizer = build_optimizer(model, cfg, stage.train_backbone)
    scheduler = build_scheduler(optimizer, cfg, stage.epochs, run.steps)
    ema = make_ema(model, cfg, is_last, stage.epochs * run.steps)  # from the stage's first weights
    if saved is not None and state.stage_epoch > 0:  # mid-stage: the saved optimiser is this stage's
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(saved["ema"], strict=True)
    else:
        scheduler.step_update(state.updates)
    return StageRun(stage, si, is_last, wrapped, batches, val_batches, optimizer, scheduler, ema)


def _epoch(run: FoldRun, state: FoldState, s: StageRun, stages: list[Stage], top: TopK, epoch_preds: list,
           hints: Hints) -> bool:  # fmt: skip
    """One epoch: train, validate, keep what is best, commit. True when the stage ends early
    (patience) or the fold diverged (then nothing of the epoch is kept)."""
    cfg, info, fold, stage = run.cfg, run.info, run.fold, s.stage
    run.train_loader.sampler.set_epoch(state.epoch)
    if isinstance(s.batches, CachedBatches):
        s.batches.set_epoch(state.epoch)
    train_loss, state.updates = train_one_epoch(
        s.wrapped, run.model, s.batches, run.criterion, s.optimizer, s.scheduler, info, grad_accum=cfg.grad_accum,
        grad_clip=cfg.grad_clip, updates_done=state.updates, desc=f"fold {fold} {stage.name} ep {state.stage_epoch + 1}",
        ema=s.ema,
    )
    judged = run.model if s.ema is None else s.ema.module  # what is validated is what is saved
    val_out, val_loss, scores, why = _validate(run.model, judged, train_loss, run.val, s.val_batches, run.criterion, info)
    if why:  # nothing of this epoch is kept, and no later epoch or stage runs
        state.diverged = {"what": f"{stage.name} diverged at epoch {state.epoch} ({why})",
                          "fix": _divergence_fix(cfg, stage)}  # fmt: skip
        return True
    row = {"epoch": state.epoch, "stage": stage.name, **{f"lr_{k}": v for k, v in current_lrs(s.optimizer).items()},
           **{f"train_{k}" if k != "loss" else "train_loss": v for k, v in train_loss.items()},
           **{f"val_{k}" if k != "loss" else "val_loss": v for k, v in val_loss.items()}, **scores}
    state.history.append(row)
    epoch_preds.append(oof_frame(run.val, fold, val_out)[["image_id", "fold", "State", *TRUE, *PRED]].assign(
        epoch=state.epoch, stage=stage.name, stage_epoch=state.stage_epoch))
    score = scores["weighted_r2"]  # finite: _validate saw to it
    all_equal_check(info, score)
    if info.is_main:
        parts = [k[len("train_"):] for k in row if k.startswith("train_") and k != "train_loss"]
        print(_format(fold, stage, state.stage_epoch, row, parts), flush=True)
        for msg in hints.check(row["epoch"], row):
            print(msg, flush=True)
    _keep_best(run, state, s, score, judged, val_out, top)
    stop_stage = _advance(run, state, s, stages)
    _commit_epoch(run, state, s, epoch_preds)
    top.prune(info.is_main)  # only now: the committed state no longer lists what it drops
    if stop_stage and info.is_main:
        print(f"fold {fold}: no weighted_r2 gain for {stage.patience} epochs, leaving {stage.name}", flush=True)
    return stop_stage


def _keep_best(run: FoldRun, state: FoldState, s: StageRun, score: float, judged, val_out: dict, top: TopK) -> None:
    """The fold's best weights and OOF so far, the last stage's top epochs (--swa-top-k), patience."""
    if score > state.best:
        state.best, state.best_epoch = score, state.epoch
        if run.info.is_main:
            ckpt.save_weights(judged, run.fold_dir / "best.safetensors", run.cfg, run.extras)
            write_parquet(run.fold_dir / "oof.parquet", oof_frame(run.val, run.fold, val_out))
    if s.is_last:
        top.offer(score, state.epoch, judged, run.info.is_main)
    if score > state.stage_best:
        state.stage_best, state.bad_epochs = score, 0
    else:
        state.bad_epochs += 1


def _advance(run: FoldRun, state: FoldState, s: StageRun, stages: list[Stage]) -> bool:
    """The counters past this epoch; at the stage's end (its epochs, or --stage1-patience: then
    True) the next stage starts from this one's best weights."""
    stage, si = s.stage, s.index
    state.epoch += 1
    state.stage_epoch += 1
    stop_stage = stage.patience is not None and state.bad_epochs >= stage.patience
    if stop_stage or state.stage_epoch >= stage.epochs:
        state.stage, state.stage_epoch, state.updates = si + 1, 0, 0
        state.stage_best, state.bad_epochs = float("-inf"), 0
        if any(x.epochs > 0 for x in stages[si + 1:]):  # same answer on every rank: safe to barrier
            # The next stage starts from this one's best. Load it now so the commit below holds it:
            # a resume must not read best.safetensors later, when the next epoch may have replaced it.
            barrier(run.info)  # rank 0 may have just written it
            if (run.fold_dir / "best.safetensors").exists():
                ckpt.load_weights(run.model, run.fold_dir / "best.safetensors")
    return stop_stage


def _commit_epoch(run: FoldRun, state: FoldState, s: StageRun, epoch_preds: list) -> None:
    """The epoch's files, then its resume state in one atomic file (the commit point); all ranks wait."""
    fold_dir, model = run.fold_dir, run.model
    if run.info.is_main:
        write_csv(fold_dir / "history.csv", pd.DataFrame(state.history))
        write_parquet(fold_dir / EPOCH_PREDS, pd.concat(epoch_preds, ignore_index=True))
        ckpt.save_weights(model, fold_dir / "last.safetensors", metadata={"epoch": str(state.epoch)})
        ckpt.save_state(fold_dir / "last_state.pt", {
            "fold_state": state.__dict__, "model": ckpt.cpu_state(model), "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "config": run.cfg.to_dict(), "inputs": run.inputs,
            **({"ema": ckpt.cpu_state(s.ema.module)} if s.ema is not None else {})})  # fmt: skip
    barrier(run.info)


def _finish_fold(run: FoldRun, state: FoldState, top: TopK) -> dict:
    """The fold's result: its best epoch (or the average of its top epochs), committed, then metrics.json."""
    cfg, info, fold, fold_dir = run.cfg, run.info, run.fold, run.fold_dir
    if state.best_epoch < 0:  # nothing is committed: a resume starts over
        raise UserError(_outcome(fold, state) + f". {fold_dir} has no best.safetensors, OOF or metrics.json")
    if top.active and len(top.kept) > 1 and not state.swa and not state.diverged:  # diverged: keep the best epoch
        _average_top_k(run.model, top, state, cfg, info, run.val, run.val_loader, run.criterion, fold, run.extras)
    result = fold_metrics(fold_dir, state)
    if info.is_main:
        # A finished fold needs no optimiser state to resume (it has nothing left to do): keep it small.
        ckpt.save_state(fold_dir / "last_state.pt", {"fold_state": state.__dict__, "config": cfg.to_dict(),
                                                     "inputs": run.inputs})  # fmt: skip
    top.clear(info.is_main)  # after the commit: a kill before it redoes the average from the files
    if info.is_main:
        write_json(fold_dir / "metrics.json", result)
        print(_outcome(fold, state), flush=True)
    barrier(info)
    return result


def nonfinite_weights(*models: torch.nn.Module) -> bool:
    """Whether any floating-point weight or buffer of these models holds a NaN or inf (one device sync)."""
    bad = [~torch.isfinite(t).all() for m in dict.fromkeys(models) for t in m.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(bad).any()) if bad else False


def _validate(model, judged, train_loss: dict, val: pd.DataFrame, val_batches, criterion,
              info: DistInfo) -> tuple[dict, dict, dict, str]:  # fmt: skip
    """The epoch's validation outputs, loss and scores, and why the epoch diverged ('' when it did not):
    a non-finite training loss (the epoch's sum: any step's NaN or inf reaches it; then nothing is
    validated), non-finite weights, or a non-finite validation weighted_r2. All ranks decide alike."""
    val_out, val_loss, scores, why = {}, {}, {}, ""
    if not np.isfinite(train_loss["loss"]):  # averaged over the ranks: the same on each
        why = f"train loss {train_loss['loss']}"
    elif nonfinite_weights(model, judged):
        why = "non-finite weights"
    else:
        val_out, val_loss = evaluate(judged, val_batches, criterion, info.device)
        scores = summary(val[list(TARGETS)].to_numpy(), val_out["pred"], val["State"].to_numpy())
        why = "" if np.isfinite(scores["weighted_r2"]) else f"validation weighted_r2 {scores['weighted_r2']}"
    if any_rank(info, bool(why)):
        return val_out, val_loss, scores, why or "non-finite on another DDP rank"
    return val_out, val_loss, scores, ""


def _end_at_last_finite_epoch(state: FoldState, n_stages: int) -> None:
    """A diverged fold is finished: no later epoch or stage runs, and its counters are its last finite epoch's."""
    state.stage, state.stage_epoch, state.updates = n_stages, 0, 0
    if not any(row["stage"] == "stage2" for row in state.history):
        state.stage2_start = -1  # Stage 2 diverged in its first epoch: none of it is kept


def _divergence_fix(cfg: TrainConfig, stage: Stage) -> str:
    lrs = f"--backbone-lr ({cfg.backbone_lr:g}) or --lr ({cfg.lr:g})" if stage.train_backbone else f"--lr ({cfg.lr:g})"
    return f"lower {lrs}" + (", or set --grad-clip 1" if cfg.grad_clip <= 0 else "")


def _outcome(fold: int, state: FoldState) -> str:
    """The fold's last line: its best epoch, or the divergence that ended it and what it kept."""
    if not state.diverged:
        if state.best_epoch < 0:  # a run saved before divergence stopped a fold
            return f"fold {fold}: no epoch gave a finite validation weighted_r2 in {state.epoch} epochs; lower --lr / --backbone-lr"
        saved = f"; saved: the average of epochs {state.swa['epochs']} ({state.swa['weighted_r2']:.4f})" if state.swa else ""
        return f"fold {fold}: best weighted_r2 {state.best:.4f} at epoch {state.best_epoch}{saved}"
    what, fix = state.diverged["what"], state.diverged["fix"]
    if state.best_epoch < 0:
        return f"fold {fold}: {what}, with no finite epoch before it; {fix}"
    return f"fold {fold}: {what}; keeping the best finite epoch {state.best_epoch} (weighted_r2 {state.best:.4f}); {fix}"


def _average_top_k(model, top: TopK, state: FoldState, cfg: TrainConfig, info: DistInfo, val: pd.DataFrame, val_loader,
                   criterion, fold: int, extras: dict) -> None:
    """The mean of the kept epochs' weights becomes the fold's final weights and OOF (scored on
    the images, not on cached features, whichever stage came last)."""
    barrier(info)  # rank 0 wrote the files
    model.load_state_dict(top.average(), strict=True)
    val_out, _ = evaluate(model, val_loader, criterion, info.device)
    scores = summary(val[list(TARGETS)].to_numpy(), val_out["pred"], val["State"].to_numpy())
    state.swa = {"epochs": top.epochs(), "select": cfg.swa_select, **scores}
    fold_dir = top.folder.parent
    if info.is_main:
        ckpt.save_weights(model, fold_dir / "best.safetensors", cfg, extras)
        write_parquet(fold_dir / "oof.parquet", oof_frame(val, fold, val_out))
        print(f"fold {fold}: --swa-top-k {cfg.swa_top_k} --swa-select {cfg.swa_select}: weights of epochs {top.epochs()} "
              f"averaged, weighted_r2 {scores['weighted_r2']:.4f} (the best epoch alone: {state.best:.4f})", flush=True)
    barrier(info)


def _saved_epoch_preds(fold_dir: Path, epochs: int) -> list[pd.DataFrame]:
    """The committed epochs' validation predictions of a resumed fold (a kill after the file was
    written and before the state commit leaves one epoch too many in it: dropped)."""
    df = pd.read_parquet(fold_dir / EPOCH_PREDS)  # readable: _resume_point checked
    return [df[df["epoch"] < epochs]]


def _resume_point(fold_dir: Path, cfg: TrainConfig, inputs: dict[str, str]) -> tuple[dict | None, str]:
    """The saved state this run goes on from, or None and why not ('' when there is none): a damaged
    last_state.pt, other settings or inputs, or a damaged or missing weights file the state rests on."""
    saved, why = fold_files.saved_state(fold_dir)
    if saved is not None:
        why = _why_not_resume(saved, cfg, inputs) or _why_not_weights(fold_dir, saved)
        if not why and saved["fold_state"].get("epoch"):  # the committed epochs' predictions go on from there
            why = fold_files.unreadable_table(fold_dir / EPOCH_PREDS)
    return (None if why else saved), why


def _why_not_weights(fold_dir: Path, saved: dict) -> str:
    """A finished fold's state holds no weights: they are last.safetensors, of the state's epoch.
    best.safetensors is the fold's result, which a later stage starts from; SWA's kept epochs are averaged."""
    fs, last = saved["fold_state"], fold_dir / "last.safetensors"
    needed = [] if "model" in saved else [last]
    needed += [fold_dir / "best.safetensors"] if fs.get("best_epoch", -1) >= 0 else []
    needed += [p for _, e in fs.get("top", []) if (p := TopK(fold_dir, 0, []).path(e)).exists()]
    why = fold_files.unusable_weights(needed)
    if not why and "model" not in saved and ckpt.weights_metadata(last).get("epoch") != str(fs["epoch"]):
        why = f"{last} is not of the saved epoch {fs['epoch']}"
    return why


def _why_not_resume(saved: dict, cfg: TrainConfig, inputs: dict[str, str]) -> str:
    """Why the saved run is not this one ('' when it is): settings or inputs that changed."""
    changed = _changed_settings(saved.get("config", {}), cfg)
    moved = [k for k in inputs if saved.get("inputs", {}).get(k) != inputs[k]]
    why = [f"settings changed since the saved run ({', '.join(changed)})"] if changed else []
    why += [f"inputs changed since the saved run ({', '.join(moved)})"] if moved else []
    return " and ".join(why)


def _changed_settings(saved: dict, cfg: TrainConfig) -> list[str]:
    now = cfg.to_dict()
    return sorted(k for k in now if k not in RUNTIME_ONLY and k in saved and saved[k] != now[k])


def fold_metrics(fold_dir: Path, state: FoldState) -> dict:
    """The scores of the saved weights: the best epoch's, or with --swa-top-k the average's."""
    best = state.swa or (state.history[state.best_epoch] if state.best_epoch >= 0 else {})
    keys = ["weighted_r2", "weighted_r2_log", *[f"r2_{SHORT[t]}" for t in TARGETS]]
    # What chose the saved weights: the fold's own validation images (best epoch, SWA's best K), or nothing (SWA's last K).
    selection = f"swa_{state.swa.get('select', 'best')}" if state.swa else "best_epoch"
    return {**{k: best.get(k) for k in keys}, "best_epoch": state.best_epoch, "selection": selection,
            **({"swa_epochs": state.swa["epochs"]} if state.swa else {}),
            "stage2_start_epoch": state.stage2_start if state.stage2_start >= 0 else None, "epochs": state.epoch}
