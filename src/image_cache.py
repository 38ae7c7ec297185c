"""CLI: decode, split and resize a split's photos once into an image cache (src/data/image_cache.py)."""

from __future__ import annotations

from .core.cli import add_data_dir, add_photo_prep, parser
from .core.errors import cli_main
from .data.image_cache import build, cache_path
from .data.photo_prep import PhotoPrep


@cli_main
def main(argv=None) -> None:
    p = parser("image_cache", __doc__)
    add_data_dir(p)
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--size", type=int, default=512, help="pixels per side of each half (the trainer's --image-size)")
    p.add_argument("--pad-to-square", action="store_true", help="as the trainer's --use-pad-to-square")
    add_photo_prep(p)
    p.add_argument("--out", default=None, help="default: results/cache/images/<size>[_pad][cleaning]/<split>.npy")
    args = p.parse_args(argv)
    prep = PhotoPrep(args.clean_date_stamp, args.crop_bottom)
    out = args.out or cache_path("results/cache/images", args.size, args.split, args.pad_to_square, prep)
    build(args.data_dir, args.split, args.size, out, args.pad_to_square, prep)


if __name__ == "__main__":
    main()
