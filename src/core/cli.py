"""What the command-line tools (``src/*.py``) share: the parser of ``python -m src.<name>`` and the
flags several of them take."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import Parser


def parser(name: str, doc: str) -> Parser:
    """The parser of ``python -m src.<name>``, described by the first paragraph of ``doc``."""
    return Parser(prog=f"python -m src.{name}", description=doc.split("\n\n")[0])


def add_data_dir(p: argparse.ArgumentParser, required: bool = False, what: str = "Kaggle-layout folder") -> None:
    if required:
        p.add_argument("--data-dir", required=True, help=what)
    else:
        p.add_argument("--data-dir", default="data", help=f"{what} (default: data)")


def add_photo_prep(p: argparse.ArgumentParser) -> None:
    """The photo cleaning flags of the cache builders, as the trainer's (src.data.photo_prep.PhotoPrep)."""
    p.add_argument("--clean-date-stamp", action="store_true", help="as the trainer's --clean-date-stamp")
    p.add_argument("--crop-bottom", type=float, default=0.0, help="as the trainer's --crop-bottom")


def results_args(argv, name: str, doc: str, default_out: str) -> tuple[Path, list[str], Path]:
    """The CLIs that read a results folder (src.report, src.dvc_metrics): results dir, models, out dir."""
    ap = parser(name, doc)
    ap.add_argument("--results-dir", required=True, help="the pipeline's results folder (holds models/ and ensemble/)")
    ap.add_argument("--models", nargs="+", required=True, help="model names under <results>/models/")
    ap.add_argument("--out-dir", help=f"where to write (default <results>/{default_out})")
    args = ap.parse_args(argv)
    return Path(args.results_dir), args.models, Path(args.out_dir or Path(args.results_dir) / default_out)


def add_device(p: argparse.ArgumentParser) -> None:
    """--device of the inference CLIs (the trainer's is its config field)."""
    p.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto",
                   help="auto (cuda > mps > cpu), cuda, mps or cpu (default: auto)")  # fmt: skip
