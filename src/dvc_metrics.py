"""CLI: the results folder as DVC reads it: metrics for `dvc exp show` / `dvc metrics diff` and
plot data for `dvc plots show`.

    python -m src.dvc_metrics --results-dir results --models M1 M2 --out-dir results/metrics

The files written: ``src/reporting/dvc_metrics.py``.
"""

from __future__ import annotations

from .core.cli import results_args
from .core.errors import cli_main
from .reporting.dvc_metrics import write_dvc_metrics


@cli_main
def main(argv=None) -> None:
    write_dvc_metrics(*results_args(argv, "dvc_metrics", __doc__, "metrics"))


if __name__ == "__main__":
    main()
