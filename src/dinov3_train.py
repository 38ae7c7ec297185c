"""CLI: train DINOv3 biomass models with k-fold CV.

    python -m src.dinov3_train [OPTIONS]
    torchrun --nproc_per_node=N -m src.dinov3_train [OPTIONS]

Flags are generated from ``src.config.TrainConfig``; see ``--help``.
"""

from __future__ import annotations

from src.config import parse_config
from src.errors import cli_main
from src.training.run import run


@cli_main
def main(argv=None) -> None:
    run(parse_config(argv))


if __name__ == "__main__":
    main()
