"""One training epoch and one evaluation pass. No file I/O, no printing beyond the progress bar."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.distributed as dist

from ..core.progress import progress
from ..models.biomass import EXPORTS
from .distributed import DistInfo


def autocast(device: torch.device):
    # bf16 on CUDA only: CPU autocast is slow here and MPS bf16 support is partial.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _float(outputs: dict) -> dict:
    return {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}


def train_one_epoch(model, raw_model, loader, criterion, optimizer, scheduler, info: DistInfo, *,
                    grad_accum: int, grad_clip: float, updates_done: int, desc: str, ema=None) -> tuple[dict[str, float], int]:
    """Returns the mean loss and its components over the epoch (averaged over ranks) and the
    optimiser update count after it. Micro-batches beyond a whole number of updates are skipped
    so every update sees exactly ``grad_accum`` micro-batches. ``ema`` (timm ModelEmaV3) follows
    every update; all ranks hold the same weights after one, so their EMAs stay equal too."""
    model.train()
    if raw_model.backbone_frozen:
        raw_model.backbone.eval()
    steps = (len(loader) // grad_accum) * grad_accum
    sums: dict[str, float] = {}
    n = 0
    optimizer.zero_grad(set_to_none=True)
    bar = progress(loader, total=steps, desc=desc, leave=False, disable=not info.is_main, dynamic_ncols=True)
    for i, batch in enumerate(bar):
        if i >= steps:
            break
        batch = _to(batch, info.device)
        sync_now = (i + 1) % grad_accum == 0
        no_sync = model.no_sync() if info.distributed and not sync_now else contextlib.nullcontext()
        with no_sync:
            with autocast(info.device):
                outputs = model(batch)
            loss, parts = criterion(_float(outputs), batch)
            (loss / grad_accum).backward()
        if sync_now:
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            updates_done += 1
            scheduler.step_update(updates_done)
            if ema is not None:
                ema.update(raw_model, step=updates_done)
        b = len(batch["index"])
        n += b
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * b
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
        if info.is_main:
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [n], dtype=torch.float64)
    if info.distributed:
        t = t.to(info.device) if info.device.type == "cuda" else t
        dist.all_reduce(t)
        t = t.cpu()
    total_n = max(float(t[-1]), 1.0)
    return {k: float(v) / total_n for k, v in zip(keys, t[:-1])}, updates_done


@torch.no_grad()
def evaluate(raw_model, loader, criterion, device: torch.device) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Predictions over the whole loader (``pred``: grams (N, 5), plus the model's exported
    auxiliary outputs) and the mean loss with its components. Always the unwrapped model:
    calling a DDP wrapper on one rank alone would deadlock."""
    raw_model.eval()
    preds: dict[str, list] = {}
    sums, n = {}, 0
    for batch in loader:
        batch = _to(batch, device)
        with autocast(device):
            outputs = raw_model(batch)
        outputs = _float(outputs)
        for key in ("pred", *EXPORTS):
            if key in outputs:
                preds.setdefault(key, []).append(outputs[key].cpu().numpy())
        if "targets" in batch:
            loss, parts = criterion(outputs, batch)
            b = len(batch["index"])
            n += b
            sums["loss"] = sums.get("loss", 0.0) + float(loss) * b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * b
    return {k: np.concatenate(v) for k, v in preds.items()}, {k: v / max(n, 1) for k, v in sums.items()}
