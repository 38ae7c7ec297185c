"""CLI: decode, split and resize a split's photos once into an image cache (src/data/image_cache.py)."""

from __future__ import annotations

from src.data.image_cache import build, cache_path
from src.errors import Parser, cli_main


@cli_main
def main(argv=None) -> None:
    p = Parser(prog="python -m src.image_cache", description=__doc__)
    p.add_argument("--data-dir", default="data", help="Kaggle-layout folder (default: data)")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--size", type=int, default=512, help="pixels per side of each half (the trainer's --image-size)")
    p.add_argument("--pad-to-square", action="store_true", help="as the trainer's --use-pad-to-square")
    p.add_argument("--out", default=None, help="default: results/cache/images/<size>/<split>.npy")
    args = p.parse_args(argv)
    build(args.data_dir, args.split, args.size, args.out or cache_path("results/cache/images", args.size, args.split,
                                                                      args.pad_to_square), args.pad_to_square)


if __name__ == "__main__":
    main()
