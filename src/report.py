"""CLI: plots and the model table for a results folder (which phase of the guide won).

    python -m src.report --results-dir results --models M1 M2 --out-dir results/report

What it reads and writes, and how the table scores models: ``src/reporting/report.py``.
"""

from __future__ import annotations

from .core.cli import results_args
from .core.errors import cli_main
from .reporting.report import make_report


@cli_main
def main(argv=None) -> None:
    make_report(*results_args(argv, "report", __doc__, "report"))


if __name__ == "__main__":
    main()
