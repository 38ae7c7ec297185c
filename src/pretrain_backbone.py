"""Label-free pre-training of the demo's tiny DINOv3-shaped backbone on synthetic photos disjoint
from the demo's (issue #27); writes timm-format weights for --backbone-weights PATH.

    python -m src.pretrain_backbone --out results/demo/pretrained/tiny.safetensors \\
        --image-size 64 --photos 1200 --seed 1000 --epochs 60 --exclude data/demo

See ``src.pretrain`` for the objective. Deterministic given --seed (unless --minutes cuts it short).
"""

from __future__ import annotations

from .core.errors import Parser, cli_main


def parse(argv: list[str] | None = None):
    from .pretrain.train import PretrainConfig

    d = PretrainConfig(out="")
    p = Parser(prog="python -m src.pretrain_backbone", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="side of each square half, px (multiple of 16)")
    p.add_argument("--photos", type=int, default=d.photos, help="synthetic 2:1 photos to pre-train on")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of photos, weights and batches (not the demo's 0)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the photos' halves")
    p.add_argument("--minutes", type=float, default=None, help="stop after the epoch that passes this wall time")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="halves per step")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate (warm-up, cosine decay)")
    p.add_argument("--sub", type=int, default=d.sub, help="target cells per 16 px patch side")
    p.add_argument("--cls-weight", type=float, default=d.cls_weight, help="weight of the CLS (image-level) loss")
    p.add_argument("--brightness", type=float, default=d.brightness, help="brightness/contrast jitter of the pixels")
    p.add_argument("--photo-root", default=d.photo_root, help="where the synthetic photos are made once and reused")
    p.add_argument("--width", type=int, default=d.width, help="photo width, px")
    p.add_argument("--height", type=int, default=d.height, help="photo height, px")
    p.add_argument("--exclude", nargs="*", default=[], help="data folders whose photos must not be ours (ids, bytes)")
    a = p.parse_args(argv)
    return PretrainConfig(**{k: (tuple(v) if k == "exclude" else v) for k, v in vars(a).items()})


@cli_main
def main(argv: list[str] | None = None) -> None:
    from .pretrain.train import run

    s = run(parse(argv))
    last = s["history"][-1] if s["history"] else {}
    print(f"wrote {s['config']['out']} ({s['wall_s']} s wall, {s['cpu_s']} s CPU; last epoch {last})", flush=True)


if __name__ == "__main__":
    main()
