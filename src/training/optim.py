"""Optimiser and LR schedule for one training stage.

Backbone parameter groups come from timm's ``param_groups_layer_decay`` (``--lr-mult`` per
block); timm stores the decay as ``lr_scale`` and only timm's schedulers apply it, so the
schedule is timm's ``CosineLRScheduler``, stepped per optimiser update.
"""

from __future__ import annotations

import torch
from timm.optim import param_groups_layer_decay
from timm.scheduler import CosineLRScheduler

from src.config import TrainConfig


def build_optimizer(model, cfg: TrainConfig, train_backbone: bool) -> torch.optim.Optimizer:
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    groups = [{"params": head_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "heads"}]
    if train_backbone:
        for g in param_groups_layer_decay(model.backbone, weight_decay=cfg.weight_decay, layer_decay=cfg.lr_mult):
            groups.append({**g, "lr": cfg.backbone_lr, "name": "backbone"})
    fused = all(p.is_cuda for g in groups for p in g["params"]) and torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def build_scheduler(optimizer, cfg: TrainConfig, epochs: int, steps_per_epoch: int) -> CosineLRScheduler:
    total = max(1, epochs * steps_per_epoch)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    return CosineLRScheduler(
        optimizer, t_initial=total, lr_min=0.01 * cfg.backbone_lr, warmup_t=warmup,
        warmup_lr_init=0.01 * cfg.backbone_lr, t_in_epochs=False,
    )  # fmt: skip


def current_lrs(optimizer) -> dict[str, float]:
    """Largest LR per named group (the backbone's top block carries the undecayed LR)."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        out[g.get("name", "group")] = max(out.get(g.get("name", "group"), 0.0), g["lr"])
    return out
