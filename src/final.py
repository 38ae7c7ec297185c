"""CLI: the final submission: the chosen models' test predictions blended, then post-processed.

    python -m src.final --results-dir results --data-dir data/raw [--round2] [--refit [--no-refit-evidence]]

The recipe, the refit evidence and the files written: ``src/rounds/final.py``.
"""

from __future__ import annotations

from .core.cli import parser
from .core.errors import cli_main
from .rounds.final import build


@cli_main
def main(argv=None) -> None:
    ap = parser("final", __doc__)
    ap.add_argument("--results-dir", required=True)
    ap.add_argument("--data-dir", required=True, help="Kaggle-layout folder with test.csv")
    ap.add_argument("--round2", action="store_true", help="blend in the pseudo-label round (round2/blend.json)")
    ap.add_argument("--refit", action="store_true", help="test predictions from the full-data refits (refit/<model>, "
                    "round2/refit/<model>) instead of the folds' mean")
    ap.add_argument("--no-refit-evidence", dest="refit_evidence", action="store_false", help="with --refit: use every "
                    "refit as configured; by default only the models whose refit check (refit_check/<model>/oof.parquet) "
                    "beats the fold models' OOF (models/<model>/oof.parquet) by more than its standard error over the "
                    "folds, and final/refit_evidence.json says why")
    ap.add_argument("--no-tta", dest="tta", action="store_false", help="the recipe's prediction settings (as the predict rule)")
    ap.add_argument("--tta-scales", nargs="+", type=float, default=[1.0])
    args = ap.parse_args(argv)
    build(args.results_dir, args.data_dir, args.round2, args.refit, {"tta": args.tta, "tta_scales": args.tta_scales},
          refit_evidence_required=args.refit_evidence)


if __name__ == "__main__":
    main()
