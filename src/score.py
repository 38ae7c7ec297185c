"""CLI: score a Kaggle-format submission against a solution file (e.g. the demo's hidden truth).

    python -m src.score --submission submission.csv --solution data/demo/test_solution.csv
"""

from __future__ import annotations

from .core.cli import parser
from .core.errors import cli_main
from .rounds.score import score


@cli_main
def main(argv=None) -> None:
    ap = parser("score", __doc__)
    ap.add_argument("--submission", required=True, help="sample_id,target CSV")
    ap.add_argument("--solution", required=True, help="sample_id,target CSV with the true values")
    args = ap.parse_args(argv)
    s = score(args.submission, args.solution)
    print(f"holdout weighted_r2 {s['weighted_r2']:.4f} (log {s['weighted_r2_log']:.4f}) | "
          + " ".join(f"{k} {v:.3f}" for k, v in s.items() if k.startswith("r2_")))


if __name__ == "__main__":
    main()
