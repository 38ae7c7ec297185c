"""GPU memory of training DINOv3 7B with LoRA adapters at 512 px, computed (not measured) from the
real model's shapes: timm's vit_7b_patch16_dinov3 and our heads, built on the meta device, with
the adapters --lora-rank R --lora-blocks N puts on it.

    python -m benchmarks.lora_memory [--rank 16] [--blocks 4] [--batch 4]

Per GPU: frozen weights, adapters + heads with their gradients and AdamW moments (fp32), and
activations with --gradient-checkpointing: only the adapted blocks keep anything for backward (no
gradient reaches the frozen blocks below them), each its input, plus one block recomputed at a
time. Activations are bf16 (autocast); attention by PyTorch's SDPA, whose memory is linear in the
tokens. Writes benchmarks/results/lora_memory.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from src.core.config import TrainConfig
from src.models.backbone import is_lora
from src.models.biomass import BiomassModel

OUT = Path(__file__).resolve().parent / "results" / "lora_memory.md"
GB = 1e9


def estimate(rank: int, blocks: int, batch: int, image_size: int = 512) -> dict[str, float]:
    cfg = TrainConfig(backbone_size="7b", backbone_weights="none", image_size=image_size, lora_rank=rank,
                      lora_blocks=blocks, use_depth=False, depth_attention=False, gradient_checkpointing=True)  # fmt: skip
    with torch.device("meta"):
        model = BiomassModel(cfg)
    backbone = model.backbone
    base = sum(p.numel() for n, p in backbone.named_parameters() if not is_lora(n))
    adapters = sum(p.numel() for n, p in backbone.named_parameters() if is_lora(n))
    heads = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    dim = backbone.num_features
    hidden = max(m.out_features for n, m in backbone.blocks[0].named_modules() if isinstance(m, nn.Linear))
    tokens = 2 * ((image_size // 16) ** 2 + backbone.num_prefix_tokens)  # both halves of one photo
    kept = blocks * tokens * dim * 2  # each adapted block's input, bf16
    recompute = tokens * (3 * dim + dim + 3 * hidden + dim) * 2  # qkv, attention out, SwiGLU, residual
    trainable = adapters + heads
    return {
        "backbone parameters (B)": base / 1e9,
        "adapter parameters (M)": adapters / 1e6,
        "head parameters (M)": heads / 1e6,
        "frozen weights, fp32 as the trainer keeps them (GB)": base * 4 / GB,
        "frozen weights, if held in bf16 (GB)": base * 2 / GB,
        "adapters + heads: weights, grads, AdamW m and v, fp32 (GB)": trainable * 16 / GB,
        f"activations, batch {batch} per GPU, checkpointed (GB)": batch * (kept + recompute) / GB,
        "total today, fp32 frozen weights (GB)": (base * 4 + trainable * 16 + batch * (kept + recompute)) / GB,
        "total with bf16 frozen weights (GB)": (base * 2 + trainable * 16 + batch * (kept + recompute)) / GB,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    rows = estimate(args.rank, args.blocks, args.batch)
    text = (f"DINOv3 7B + LoRA rank {args.rank} on the last {args.blocks} blocks, 512 px, batch {args.batch} per GPU "
            "(computed from the model's shapes, not measured)\n\n| | |\n|---|--:|\n"
            + "".join(f"| {k} | {v:.2f} |\n" for k, v in rows.items()))  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text + f"\nwritten to {OUT}")


if __name__ == "__main__":
    main()
