"""CLI: write the fold CSV (one row per image) and print a per-fold summary."""

from __future__ import annotations

import argparse

from .core.cli import add_data_dir, parser
from .core.errors import cli_main
from .core.io_utils import write_csv
from .data.folds import STRATEGIES, make_folds, summarize
from .data.schema import load_train


def parse_args(argv=None) -> argparse.Namespace:
    p = parser("make_folds", __doc__)
    add_data_dir(p, what="folder holding train.csv and train/")
    p.add_argument("--out", default=None, help="fold CSV to write (default: DATA_DIR/trainfold_<strategy>.csv)")
    p.add_argument("--n-folds", type=int, default=5, help="number of folds (default: 5)")
    p.add_argument("--cv-strategy", choices=STRATEGIES, default="group_location", help="default: group_location")
    p.add_argument("--seed", type=int, default=42, help="default: 42")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> None:
    args = parse_args(argv)
    images = load_train(args.data_dir)
    folds = make_folds(images, args.n_folds, args.cv_strategy, args.seed)
    out = args.out or f"{args.data_dir}/trainfold_{args.cv_strategy}.csv"
    write_csv(out, folds)
    print(f"{args.cv_strategy}: {len(folds)} images, {folds['group'].nunique()} site visits -> {out}")
    print(summarize(folds, images).to_string())


if __name__ == "__main__":
    main()
