"""The pre-training loop and the weights file it leaves: the backbone's state dict in timm's key
names, as ``create_backbone("tiny", weights=PATH)`` loads it (strict), written atomically.

Deterministic given the seed: photos, initial weights, batch order and augmentation all derive
from it (``--minutes`` is a wall-clock cap on top: a run it cuts short depends on the machine).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..core.io_utils import atomic_path
from ..core.progress import progress
from ..models.backbone import create_backbone
from .data import Halves, check_disjoint, ensure_photos, load_halves, photo_dir
from .objective import Objective, image_targets


@dataclass
class PretrainConfig:
    """Defaults: the best of ``benchmarks.pretrain_ablation`` within ~3 CPU minutes."""

    out: str
    image_size: int = 64
    photos: int = 1200
    seed: int = 1000
    epochs: int = 60
    minutes: float | None = None  # wall-clock cap (makes the result depend on the machine's speed)
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    sub: int = 4  # target cells per patch side
    cls_weight: float = 1.0
    brightness: float = 0.0  # photometric jitter of the input (targets: the true pixels); 0.15 scored lower
    photo_root: str = "data/pretrain"
    width: int = 1000
    height: int = 500
    exclude: tuple[str, ...] = ()  # data folders (Kaggle layout) whose photos must not be among ours
    backbone_size: str = "tiny"


def augment(images: torch.Tensor, cells: torch.Tensor, gen: torch.Generator, brightness: float):
    """The same random flip / quarter turn of each half and its target grid; a brightness and
    contrast jitter of the pixels only (the targets describe the photographed pasture)."""
    n = images.shape[0]
    k = torch.randint(0, 8, (n,), generator=gen)
    images, cells = images.float(), cells.clone()
    out_i, out_c = images.clone(), cells
    for t in range(8):
        idx = (k == t).nonzero().flatten()
        if len(idx) == 0:
            continue
        im, ce = images[idx], cells[idx]
        if t & 4:
            im, ce = im.flip(-1), ce.flip(-1)
        out_i[idx] = torch.rot90(im, t & 3, (-2, -1))
        out_c[idx] = torch.rot90(ce, t & 3, (-2, -1))
    if brightness:
        gain = 1 + brightness * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
        contrast = 1 + brightness * (2 * torch.rand(n, 1, 1, 1, generator=gen) - 1)
        mean = out_i.mean((1, 2, 3), keepdim=True)
        out_i = ((out_i - mean) * contrast + mean * gain).clamp(0, 255)
    return out_i, out_c


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices only: not on LayerScale gammas, norms, biases or tokens."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and name.endswith("weight") else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build(cfg: PretrainConfig, data: Halves) -> Objective:
    torch.manual_seed(cfg.seed)
    backbone = create_backbone(cfg.backbone_size, "none", cfg.image_size)
    img = image_targets(data.cells)
    return Objective(backbone, cfg.sub, (img.mean(0), img.std(0)), cfg.cls_weight)


def train(cfg: PretrainConfig, data: Halves, log_every: int = 0) -> tuple[Objective, list[dict]]:
    """Train the objective on ``data``; returns it and the mean losses per epoch."""
    model = build(cfg, data)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total))))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history = time.monotonic(), []
    bar = progress(total=total, desc="pretrain", unit="step")
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen)
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            images, cells = augment(data.images[idx], data.cells[idx], gen, cfg.brightness)
            losses = model(images, cells)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / steps_per_epoch
            bar.update(1)
        history.append({"epoch": epoch, **{k: round(v, 5) for k, v in sums.items()}})
        bar.set_postfix(loss=f"{sums['loss']:.4f}", kl=f"{sums['dense_kl']:.4f}", cls=f"{sums['image_mse']:.3f}")
        if cfg.minutes is not None and time.monotonic() - start > 60 * cfg.minutes:
            print(f"pretrain: --minutes {cfg.minutes:g} reached after epoch {epoch + 1} of {cfg.epochs}", flush=True)
            break
    bar.close()
    return model, history


def save_backbone(backbone: torch.nn.Module, path: str | Path, meta: dict) -> None:
    """The backbone's state dict (timm key names, contiguous tensors) with ``meta`` as strings."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})


def run(cfg: PretrainConfig) -> dict:
    """Photos, targets, training, weights file; returns the summary written into its metadata."""
    t0, cpu0 = time.monotonic(), time.process_time()
    folder = photo_dir(cfg.photo_root, cfg.photos, cfg.seed, cfg.width, cfg.height)
    paths = ensure_photos(folder, cfg.photos, cfg.seed, cfg.width, cfg.height)
    disjoint = {}
    for other in cfg.exclude:
        others = sorted(Path(other).glob("*/*.jpg"))
        disjoint[other] = check_disjoint(paths, others)
    t_photos = time.monotonic()
    data = load_halves(paths, cfg.image_size, cfg.sub)
    t_data = time.monotonic()
    model, history = train(cfg, data)
    summary = {
        "config": asdict(cfg),
        "photo_dir": str(folder),
        "disjoint_from": disjoint,
        "history": history[-1:],
        "wall_s": round(time.monotonic() - t0, 1),
        "phases_wall_s": {
            "photos": round(t_photos - t0, 1),
            "halves_and_targets": round(t_data - t_photos, 1),
            "training": round(time.monotonic() - t_data, 1),
        },
        "cpu_s": round(time.process_time() - cpu0, 1),
    }
    save_backbone(model.backbone, cfg.out, {"pretrain": summary})
    return summary
