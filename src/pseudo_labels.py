"""CLI: pseudo-labels for round 2, one CSV per fold, and the blend of round 1 with round 2.

    python -m src.pseudo_labels make --results-dir results --models M1 M2 --data-dir data --n-folds 5
    python -m src.pseudo_labels blend --results-dir results

How each fold's labels stay honest, and the blend: ``src/rounds/pseudo_labels.py``.
"""

from __future__ import annotations

from .core.cli import parser
from .core.errors import UserError, cli_main
from .rounds.pseudo_labels import blend, make


@cli_main
def main(argv=None) -> None:
    ap = parser("pseudo_labels", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="round2/pseudo/fold<k>.csv from the round-1 fold models' test predictions")
    m.add_argument("--results-dir", required=True)
    m.add_argument("--models", nargs="+", required=True)
    m.add_argument("--data-dir", required=True)
    m.add_argument("--n-folds", type=int, required=True)
    m.add_argument("--keep-fraction", type=float, default=0.7)
    b = sub.add_parser("blend", help="round2/blend.json: round 1 and round 2 blended on OOF")
    b.add_argument("--results-dir", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "make":
        if not 0 < args.keep_fraction <= 1:
            raise UserError(f"--keep-fraction {args.keep_fraction} must be within 0..1 (0 excluded)")
        make(args.results_dir, args.models, args.data_dir, args.n_folds, args.keep_fraction)
    else:
        blend(args.results_dir)


if __name__ == "__main__":
    main()
