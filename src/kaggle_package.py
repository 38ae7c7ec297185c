"""CLI: the offline Kaggle dataset of a run: the final recipe's models, the depth model, this
project's wheel and the dependency wheels a stock Kaggle image lacks, one inference script.

    python -m src.kaggle_package --results-dir results --out results/kaggle [--kaggle-user NAME]

The package's layout: ``src/packaging/kaggle_package.py``.
"""

from __future__ import annotations

from pathlib import Path

from .core.cli import parser
from .core.errors import cli_main
from .packaging.kaggle_package import PLACEHOLDER_USER, build


@cli_main
def main(argv=None) -> None:
    p = parser("kaggle_package", __doc__)
    p.add_argument("--results-dir", required=True, help="the run's results folder (final/recipe.json, models/)")
    p.add_argument("--out", help="package folder (default: <results-dir>/kaggle)")
    p.add_argument("--wheels-dir", help="where the dependency wheels are (default: <this venv>/wheels, "
                   "filled by make .venv/.installed)")  # fmt: skip
    p.add_argument("--kaggle-user", default="", help=f"Kaggle username of the dataset id (default: $KAGGLE_USERNAME, "
                   f"else {PLACEHOLDER_USER}: edit dataset-metadata.json before uploading)")  # fmt: skip
    p.add_argument("--slug", default="pasture-biomass-inference", help="the dataset's name in its id and its "
                   "/kaggle/input/<slug> folder (default: pasture-biomass-inference)")  # fmt: skip
    p.add_argument("--license", default="other", help="Kaggle licence name of the dataset (default: other)")
    args = p.parse_args(argv)
    build(args.results_dir, args.out or Path(args.results_dir) / "kaggle", args.wheels_dir, args.kaggle_user,
          args.slug, license_name=args.license)  # fmt: skip


if __name__ == "__main__":
    main()
