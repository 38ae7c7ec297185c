"""Weight averaging within one fold: an exponential moving average of the weights during a stage
(--ema, timm's ModelEmaV3, in the stages of --ema-stages) and the mean of K epochs' weights of the
last stage (--swa-top-k: its last K, or with --swa-select best its K best on the fold's own
validation images). The DINOv3 ViTs have no BatchNorm, so averaged weights need no statistics pass.

Both yield a plain BiomassModel state dict: best.safetensors holds it, and prediction loads it
like any other checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.utils.model_ema import ModelEmaV3

from ..core.config import TrainConfig
from ..models.biomass import compile_backbone
from . import checkpoint as ckpt


def ema_decay(cfg: TrainConfig, updates: int | None) -> float:
    """--ema-decay, capped at 1 - 2/updates for a stage of ``updates`` optimiser updates: the average
    then spans at most half the stage. An average longer than its stage is mostly its starting
    weights (0.99 over 32 updates keeps 72 % of them): with EMA on by default, a short run on
    little data fell from OOF 0.32 to 0.12, and to 0.24 with this cap (benchmarks/finetune_gap.py)."""
    if not updates:
        return cfg.ema_decay
    return min(cfg.ema_decay, max(0.0, 1.0 - 2.0 / updates))


def make_ema(model: torch.nn.Module, cfg: TrainConfig, last_stage: bool = True,
             updates: int | None = None) -> ModelEmaV3 | None:
    """The stage's EMA, starting at the model's current weights: None without --ema, and in a stage
    that is not the last with --ema-stages last. ``updates``: the stage's optimiser updates, which
    cap the decay (``ema_decay``). With --ema-warmup timm's warm-up caps the decay at
    1 - (1 + t)^(-2/3) at update t, which in a short run decides the decay instead of --ema-decay."""
    if not cfg.ema or (cfg.ema_stages == "last" and not last_stage):
        return None
    ema = ModelEmaV3(model, decay=ema_decay(cfg, updates), use_warmup=cfg.ema_warmup)
    if cfg.compile:
        # The copy's compiled forward is still bound to the original backbone: compile its own.
        ema.module.backbone.__dict__.pop("forward_features", None)
        compile_backbone(ema.module.backbone)
    return ema


def average_state(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Mean of the floating-point tensors of several state dicts (integer buffers: the first one's)."""
    states = [load_file(str(p)) for p in paths]
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].double() for s in states]).mean(0).to(first.dtype)
        else:
            out[key] = first
    return out


class TopK:
    """K epochs of a stage, their weights in ``<fold>/top/``: the best K by validation score, or
    (``by_score=False``) the last K, whose choice sees no validation image.

    ``kept`` ([score, epoch] pairs) lives in the fold's resume state. A file is written when its
    epoch enters the list and deleted only by ``prune`` after the state that dropped it has been
    committed, so a kill at any point leaves every listed file on disk."""

    def __init__(self, fold_dir: Path, k: int, kept: list, by_score: bool = True):
        self.folder = Path(fold_dir) / "top"
        self.k = k
        self.kept = kept
        self.by_score = by_score

    @property
    def active(self) -> bool:
        return self.k > 1

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch{epoch:04d}.safetensors"

    def offer(self, score: float, epoch: int, model: torch.nn.Module, is_main: bool) -> None:
        score = score if self.by_score else float(epoch)  # last K: the later epoch wins
        if not self.active or (len(self.kept) >= self.k and score <= min(s for s, _ in self.kept)):
            return
        if is_main:
            ckpt.save_weights(model, self.path(epoch))
        self.kept.append([score, epoch])
        self.kept.sort(key=lambda se: (-se[0], se[1]))
        del self.kept[self.k:]

    def prune(self, is_main: bool) -> None:
        if is_main and self.folder.is_dir():
            keep = {self.path(e).name for _, e in self.kept}
            for p in self.folder.glob("*.safetensors"):
                if p.name not in keep:
                    p.unlink()

    def epochs(self) -> list[int]:
        return sorted(e for _, e in self.kept)

    def average(self) -> dict[str, torch.Tensor]:
        return average_state([self.path(e) for e in self.epochs()])

    def clear(self, is_main: bool) -> None:
        if is_main:
            shutil.rmtree(self.folder, ignore_errors=True)
