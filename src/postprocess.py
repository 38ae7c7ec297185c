"""CLI: post-processing of the ensemble's predictions, fitted on OOF predictions and kept only where nested CV says so.

    python -m src.postprocess --oof results/ensemble/oof.parquet --out results/ensemble/postprocess.json

The steps, their order and the keep rule: ``src/rounds/postprocess.py``.
"""

from __future__ import annotations

from .core.cli import parser
from .core.errors import cli_main
from .core.io_utils import write_json
from .rounds.postprocess import fit, read_oof, table


@cli_main
def main(argv=None) -> None:
    ap = parser("postprocess", __doc__)
    ap.add_argument("--oof", required=True, help="merged OOF parquet of the blend (image_id, fold, State, true_*, pred_*)")
    ap.add_argument("--out", required=True, help="JSON of the chosen steps and their parameters")
    args = ap.parse_args(argv)
    params = fit(read_oof(args.oof), source=args.oof)
    write_json(args.out, params)
    print(table(params))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
