"""CLI: merge a model's fold OOF files, and blend several models into the ensemble submission.

    python -m src.ensemble merge-oof --model-dir results/models/M1 --n-folds 5
    python -m src.ensemble blend --results-dir results --models M1 M2 --data-dir data

The work: ``src/rounds/ensemble.py`` (the blend) and ``src/rounds/oof.py`` (the merge).
"""

from __future__ import annotations

from .core.cli import parser
from .core.errors import cli_main
from .rounds.ensemble import blend
from .rounds.oof import merge_oof


@cli_main
def main(argv=None) -> None:
    ap = parser("ensemble", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge-oof", help="fold*/oof.parquet -> oof.parquet + oof_metrics.json")
    m.add_argument("--model-dir", required=True)
    m.add_argument("--n-folds", type=int, required=True)
    b = sub.add_parser("blend", help="ensemble models into results/ensemble/submission.csv")
    b.add_argument("--results-dir", required=True)
    b.add_argument("--models", nargs="+", required=True)
    b.add_argument("--data-dir", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "merge-oof":
        s = merge_oof(args.model_dir, args.n_folds, require_all=True)
        print(f"{args.model_dir}: OOF weighted_r2 {s['weighted_r2']:.4f} over folds {s['folds']}")
    else:
        blend(args.results_dir, args.models, args.data_dir)


if __name__ == "__main__":
    main()
