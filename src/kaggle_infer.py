"""CLI: Kaggle-side inference of a package built by ``src.kaggle_package``: the recipe's members run on
``<data-dir>/test.csv`` exactly as the pipeline ran them, then ``submission.csv``.

The package's ``infer.py`` calls ``main`` (installed: ``pasture_biomass.kaggle_infer``); the work is
``src/packaging/kaggle_infer.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .core.cli import add_device
from .core.errors import Parser, cli_main
from .packaging.kaggle_infer import KAGGLE_DATA, KAGGLE_WORK, run


def build_parser(package_dir: Path) -> argparse.ArgumentParser:
    p = Parser(prog="python infer.py", description=__doc__.split("\n\n")[0].removeprefix("CLI: "))
    p.add_argument("--data-dir", default=KAGGLE_DATA, help=f"competition folder with test.csv, sample_submission.csv "
                   f"and test/ (default: {KAGGLE_DATA}; when absent, the one such folder under /kaggle/input)")  # fmt: skip
    p.add_argument("--package-dir", default=str(package_dir), help="this package: recipe.json, models/, depth/ "
                   "(default: the folder holding infer.py)")  # fmt: skip
    p.add_argument("--work-dir", default=KAGGLE_WORK, help=f"writable scratch folder (default: {KAGGLE_WORK})")
    p.add_argument("--out", help="submission file (default: <work-dir>/submission.csv)")
    add_device(p)
    return p



@cli_main
def main(argv=None, package_dir: Path | None = None) -> None:
    args = build_parser(package_dir or Path.cwd()).parse_args(argv)
    run(args.package_dir, args.data_dir, args.work_dir, args.out, args.device)


if __name__ == "__main__":
    main()
