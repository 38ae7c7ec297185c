"""CLI: build a Depth Anything V2 depth cache for one split (see src/data/depth.py)."""

from __future__ import annotations

import argparse

from .core.cli import add_data_dir, add_photo_prep, parser
from .core.errors import cli_main
from .data.depth import build_cache, cache_path
from .data.photo_prep import PhotoPrep
from .models.depth_anything import BACKENDS, HUB_IDS, make_tiny, model_id


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("depth_cache", __doc__)
    add_data_dir(p)
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--model-size", choices=tuple(HUB_IDS), default="small", help="default: small")
    p.add_argument("--model", default="", help="hub id or local directory (default: the hub id of --model-size)")
    p.add_argument("--backend", choices=BACKENDS, default="torchvision", help="image processor backend")
    p.add_argument("--resolution", type=int, default=64, help="stored pixels per side of each half (default: 64)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    add_photo_prep(p)
    p.add_argument("--out", default=None, help="cache file (default: results/depth/<size>[cleaning]/<split>.safetensors)")
    p.add_argument("--make-tiny-model", metavar="DIR", default=None,
                   help="write a tiny random-init Depth Anything V2 to DIR and exit (offline tests/demo)")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.make_tiny_model:
        print(f"tiny random Depth Anything V2 -> {make_tiny(args.make_tiny_model)}")
        return
    prep = PhotoPrep(args.clean_date_stamp, args.crop_bottom)
    out = args.out or cache_path("results/depth", args.model_size, args.split, prep)
    build_cache(args.data_dir, args.split, model_id(args.model_size, args.model), out, backend=args.backend,
                resolution=args.resolution, batch_size=args.batch_size, prep=prep)


if __name__ == "__main__":
    main()
