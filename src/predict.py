"""CLI: predict biomass with the fold models of a training run (mean over folds, flip TTA).

Kaggle layout -> ``<out-dir>/test_pred.parquet`` (one row per image, grams) + ``submission.csv``:

    python -m src.predict --model-dir outputs --data-dir data --split test

Your own quadrat photos -> a table in grams per quadrat and kg dry matter per hectare:

    python -m src.predict --model-dir outputs --images a.jpg b.jpg [--out masses.csv]
"""

from __future__ import annotations

import argparse

from .core.cli import add_device, parser
from .core.errors import UserError, cli_main
from .inference.outputs import predict


def build_parser() -> argparse.ArgumentParser:
    p = parser("predict", __doc__)
    p.add_argument("--model-dir", required=True, help="training --output-dir holding fold<k>/best.safetensors + config.yaml")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", help="Kaggle-layout folder with test.csv (and sample_submission.csv)")
    src.add_argument("--images", nargs="+", metavar="PHOTO", help="quadrat photos (2:1, both halves side by side)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="with --data-dir: which CSV to predict (train is for checks; no submission) (default: test)")
    p.add_argument("--out-dir", help="with --data-dir: where the files go (default: --model-dir)")
    p.add_argument("--depth-cache-dir", help="with --data-dir, for depth models: folder of <size>/<split>.safetensors "
                   "depth caches (default: the one in each model's config.yaml)")
    p.add_argument("--out", metavar="FILE.csv", help="with --images: also write the table as CSV")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average identity, horizontal and vertical flips (default: on)")
    p.add_argument("--tta-scales", nargs="+", type=float, default=[1.0], metavar="S",
                   help="also average over these multiples of each model's --image-size (multi-scale TTA, e.g. "
                        "0.875 1 1.125; rounded to multiples of 16) (default: 1)")
    p.add_argument("--per-fold", action="store_true",
                   help="with --data-dir: each fold model's own predictions, <split>_pred_folds.parquet (a fold column; "
                        "no mean, no submission): what the pseudo-label round labels each fold's test images with")
    p.add_argument("--allow-mixed-folds", action="store_true",
                   help="average fold models trained with different settings or on different data (refused by "
                        "default), with a warning")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    add_device(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.images and (args.out_dir or args.split != "test"):
        raise UserError("--out-dir and --split go with --data-dir; with --images use --out FILE.csv")
    if args.images and args.per_fold:
        raise UserError("--per-fold goes with --data-dir")
    if args.data_dir and args.out:
        raise UserError("--out goes with --images; with --data-dir use --out-dir DIR")
    if args.batch_size < 1 or args.num_workers < 0:
        raise UserError("--batch-size must be >= 1 and --num-workers >= 0")


@cli_main
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    _check_args(args)
    predict(args.model_dir, args.images, args.data_dir, args.split, args.out_dir, args.out, args.per_fold,
            args.depth_cache_dir, args.allow_mixed_folds, args.device, tta=args.tta, tta_scales=args.tta_scales,
            batch_size=args.batch_size, num_workers=args.num_workers)

if __name__ == "__main__":
    main()
