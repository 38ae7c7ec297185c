"""Optimiser and LR schedule for one training stage.

Backbone parameter groups come from timm's ``param_groups_layer_decay`` (``--lr-mult`` per
block). Every group's peak LR is written as ``lr_scale`` x ``--lr`` (heads 1, backbone
``--backbone-lr / --lr`` x its layer decay): timm's schedulers multiply their value by
``lr_scale``, so each group warms up to its own peak and decays to a floor of ``LR_FLOOR`` x
that peak. Stepped per optimiser update; a plain torch scheduler would ignore ``lr_scale``.

The schedule is timm's warmup-stable-decay (``WSDLRScheduler``): warm-up, the peak LR held,
then a 1-sqrt decay over the stage's last ``DECAY_FRACTION``. A cosine over the whole stage
spends half its updates below half the peak: at 8 epochs that left the frozen-backbone trainer
at OOF 0.29 where a constant-LR linear probe reached 0.39 (benchmarks/quality.py); WSD holds the
peak and still anneals at the end (and a Stage 1 ended by patience has not decayed yet).

Each stage builds a fresh optimiser and schedule: Stage 2 starts new AdamW moments for the
newly trainable backbone and warms up again over ``--warmup-epochs``.
"""

from __future__ import annotations

import torch
from timm.optim import param_groups_layer_decay
from timm.scheduler import WSDLRScheduler

from ..core.config import LORA_LR_MULT, TrainConfig

LR_FLOOR = 0.01  # of each group's peak, at the end of the stage
DECAY_FRACTION = 0.2  # of the stage's updates after the warm-up; timm's default for WSD
WARMUP_START = 0.01  # of each group's peak, for the first update of a stage


def backbone_peak_lr(cfg: TrainConfig) -> float:
    """The backbone groups' peak LR: --backbone-lr, or under LoRA (only adapters train) --lora-lr."""
    if cfg.lora_rank:
        return cfg.lora_lr or LORA_LR_MULT * cfg.backbone_lr
    return cfg.backbone_lr


def build_optimizer(model, cfg: TrainConfig, train_backbone: bool) -> torch.optim.Optimizer:
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    groups = [{"params": head_params, "lr": cfg.lr, "lr_scale": 1.0, "weight_decay": cfg.weight_decay, "name": "heads"}]
    if train_backbone:
        for g in param_groups_layer_decay(model.backbone, weight_decay=cfg.weight_decay, layer_decay=cfg.lr_mult):
            scale = g.get("lr_scale", 1.0) * backbone_peak_lr(cfg) / cfg.lr
            groups.append({**g, "lr": cfg.lr * scale, "lr_scale": scale, "name": "backbone"})
    fused = all(p.is_cuda for g in groups for p in g["params"]) and torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)


def build_scheduler(optimizer, cfg: TrainConfig, epochs: int, steps_per_epoch: int) -> WSDLRScheduler:
    """Linear warm-up over ``--warmup-epochs`` to each group's peak, held, then decayed to its floor
    at the stage's last update."""
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr  # the scheduler's base value; its update applies each group's lr_scale
        g.pop("initial_lr", None)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    after = max(1, total - warmup - 1)  # the last update (total - 1) lands on the floor
    sched = WSDLRScheduler(
        optimizer, t_initial=after, decay_t=max(1, round(DECAY_FRACTION * after)), lr_min=LR_FLOOR * cfg.lr,
        decay_fn="1-sqrt", warmup_t=warmup, warmup_lr_init=WARMUP_START * cfg.lr, t_in_epochs=False,
    )  # fmt: skip
    sched.step_update(0)
    return sched


def current_lrs(optimizer) -> dict[str, float]:
    """Largest LR per named group (the backbone's top block carries the undecayed LR)."""
    out: dict[str, float] = {}
    for g in optimizer.param_groups:
        out[g.get("name", "group")] = max(out.get(g.get("name", "group"), 0.0), g["lr"])
    return out
