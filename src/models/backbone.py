"""timm DINOv3 backbones: hub weights, a local weights file, or random init; ``tiny`` for tests.

DINOv3 ViTs emit CLS + 4 register tokens + one token per 16x16 patch; ``dynamic_img_size``
lets one model take any multiple of 16, so ``--image-size`` is free.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch.nn as nn

from ..core.config import HUB_TAG, TIMM_NAMES
from ..core.errors import UserError

# A 2-layer, 32-wide ViT with DINOv3's token layout: seconds per epoch on a laptop CPU.
TINY_KWARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def create_backbone(size: str, weights: str = "hub", image_size: int = 512, gradient_checkpointing: bool = False) -> nn.Module:
    """``weights``: 'hub' (timm's ``timm/...lvd1689m`` release: open, no log-in; network once),
    'none' (random init), or a path to a local .safetensors/.pth file with timm's key names."""
    if size not in TIMM_NAMES:
        raise UserError(f"--backbone-size {size!r} is not one of {', '.join(TIMM_NAMES)}")
    kwargs = {"img_size": image_size, "dynamic_img_size": True, "num_classes": 0}
    name = TIMM_NAMES[size]
    if size == "tiny":
        kwargs.update(TINY_KWARGS)
    pretrained = weights != "none"
    if weights == "hub":
        if size == "tiny":
            raise UserError("--backbone-size tiny has no hub weights; use --backbone-weights none or a local file")
        name = f"{name}.{HUB_TAG}"
    elif pretrained:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"--backbone-weights {weights}: file not found; give a timm weights file, 'hub' or 'none'")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"could not load {name} weights from {weights} ({first[:200]}); timm's copies on the Hugging Face hub need "
            "network once (no log-in); offline, pass --backbone-weights PATH to a downloaded file (or none for random init)"
        )
    if gradient_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def add_lora(backbone: nn.Module, rank: int, blocks: int) -> list[str]:
    """LoRA adapters (peft, alpha = rank) on every Linear of the last ``blocks`` blocks; the
    adapters start as zero updates, so the backbone computes what it did. Returns the layers."""
    from peft import LoraConfig, inject_adapter_in_model

    n = len(backbone.blocks)
    if blocks > n:
        raise UserError(f"--lora-blocks {blocks}: this backbone has {n} blocks")
    prefixes = tuple(f"blocks.{k}." for k in range(n - blocks, n))
    layers = [name for name, m in backbone.named_modules() if isinstance(m, nn.Linear) and name.startswith(prefixes)]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=layers), backbone)
    return layers


def is_lora(name: str) -> bool:
    return ".lora_" in name
