"""CLI: download the dependency wheels the offline Kaggle package carries (``src.packaging.wheelhouse``):
the closure of the project's runtime requirements at this environment's versions, minus what every
Kaggle GPU image has, for each CPython a Kaggle image may run. Needs the package index once.

    python -m src.kaggle_wheels --out .venv/wheels      # make .venv/.installed runs it
"""

from __future__ import annotations

from pathlib import Path

from .core.cli import parser
from .core.errors import cli_main
from .packaging import wheelhouse


@cli_main
def main(argv=None) -> None:
    p = parser("kaggle_wheels", __doc__)
    p.add_argument("--out", required=True, help="folder of the wheels (the package build's --wheels-dir)")
    p.add_argument("--list", action="store_true", help="print what would be carried and the floors; download nothing")
    args = p.parse_args(argv)
    pins = wheelhouse.carried()
    if args.list:
        print("\n".join(f"{n}=={v}" for n, v in pins.items()))
        print("floors (an image's older version is replaced):", "; ".join(wheelhouse.floors()))
        return
    wheels = wheelhouse.download(Path(args.out))
    print(f"{args.out}: {len(wheels)} wheels of {len(pins)} distributions for CPython {', '.join(wheelhouse.PYTHONS)}")


if __name__ == "__main__":
    main()
