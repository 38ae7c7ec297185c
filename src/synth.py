"""CLI: synthetic pasture-biomass data in the exact Kaggle "CSIRO Image2Biomass" layout.

    python -m src.synth --out data/demo --n-train 120 --n-test 30 --seed 0

What is painted and why: ``src/data/synth.py``.
"""

from __future__ import annotations

from pathlib import Path

from .core.cli import parser
from .data.synth import generate


def main(argv: list[str] | None = None) -> None:
    p = parser("synth", __doc__)
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--n-train", type=int, default=120, help="number of training images")
    p.add_argument("--n-test", type=int, default=30, help="number of test images")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, byte-identical output")
    p.add_argument("--width", type=int, default=1000, help="image width in px (two square halves)")
    p.add_argument("--height", type=int, default=500, help="image height in px")
    a = p.parse_args(argv)
    generate(a.out, a.n_train, a.n_test, seed=a.seed, width=a.width, height=a.height)


if __name__ == "__main__":
    main()
