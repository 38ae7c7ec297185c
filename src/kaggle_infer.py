"""Kaggle-side inference of a package built by ``src.kaggle_package``: the recipe's members run on
``<data-dir>/test.csv`` exactly as the pipeline ran them, then ``submission.csv``.

The package's ``infer.py`` calls ``main``; the wheel of this project must be installed
(``pip install --no-index --find-links <package>/wheels pasture-biomass``). The input folder is
read-only on Kaggle, so everything made here (the members' configs with the depth model's path
resolved, the test depth caches) goes under ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import yaml

from src.data.depth import build_cache, cache_path
from src.data.photo_prep import PhotoPrep
from src.data.schema import load_test
from src.errors import Parser, UserError, cli_main
from src.final import predict_members, submission_of
from src.inference import CHECKPOINT
from src.io_utils import write_csv, write_text
from src.models.depth_anything import model_id
from src.training.checkpoint import load_config
from src.training.distributed import pick_device

# The competition's data as Kaggle mounts it in a notebook (kaggle.com/competitions/csiro-biomass).
KAGGLE_DATA = "/kaggle/input/csiro-biomass"
KAGGLE_WORK = "/kaggle/working"
DEPTH_BATCH = 8  # the pipeline's depth.batch_size in every shipped config


def build_parser(package_dir: Path) -> argparse.ArgumentParser:
    p = Parser(prog="python infer.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=KAGGLE_DATA, help=f"competition folder with test.csv, sample_submission.csv "
                   f"and test/ (default: {KAGGLE_DATA})")  # fmt: skip
    p.add_argument("--package-dir", default=str(package_dir), help="this package: recipe.json, models/, depth/ "
                   "(default: the folder holding infer.py)")  # fmt: skip
    p.add_argument("--work-dir", default=KAGGLE_WORK, help=f"writable scratch folder (default: {KAGGLE_WORK})")
    p.add_argument("--out", help="submission file (default: <work-dir>/submission.csv)")
    p.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto",
                   help="auto (cuda > mps > cpu), cuda, mps or cpu (default: auto)")  # fmt: skip
    return p


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst)
    except OSError:  # a file system without symlinks: a copy reads the same
        shutil.copy2(src, dst)


def resolve_members(recipe: dict, package_dir: Path, root: Path) -> Path:
    """``root/<model_dir>/<fold>/`` for each member: links to the packaged weights, and a
    config.yaml whose ``depth_model`` (relative to the package) is an absolute path, so the depth
    cache built here and the models agree on its name wherever Kaggle mounts the package."""
    for m in recipe["members"]:
        src_dir = package_dir / m["model_dir"]
        folds = sorted(p.parent for p in src_dir.glob(f"*/{CHECKPOINT}"))
        if not folds:
            raise UserError(f"{src_dir}: no */{CHECKPOINT}; rebuild the package with python -m src.kaggle_package")
        for fold in folds:
            dst = root / m["model_dir"] / fold.name
            if dst.exists():
                shutil.rmtree(dst)
            dst.mkdir(parents=True)
            for f in fold.iterdir():
                if f.name != "config.yaml":
                    _link(f.resolve(), dst / f.name)
            values = yaml.safe_load((fold / "config.yaml").read_text())
            if values.get("depth_model") and not Path(values["depth_model"]).is_absolute():
                values["depth_model"] = str((package_dir / values["depth_model"]).resolve())
            write_text(dst / "config.yaml", yaml.safe_dump(values, sort_keys=False))
    return root


def build_depth_caches(recipe: dict, root: Path, data_dir: Path, depth_dir: Path, device) -> list[Path]:
    """The test depth cache of each depth setting the members use, as the pipeline's depth_cache
    rule builds it (same model, backend, resolution, photo cleaning)."""
    wanted: dict[Path, tuple] = {}
    for m in recipe["members"]:
        for fold in sorted(p.parent for p in (root / m["model_dir"]).glob(f"*/{CHECKPOINT}")):
            cfg = load_config(fold)
            if not cfg.use_depth:
                continue
            prep = PhotoPrep.of(cfg)
            setting = (model_id(cfg.depth_model_size, cfg.depth_model), cfg.depth_backend, cfg.depth_resolution, prep)
            path = cache_path(depth_dir, cfg.depth_model_size, "test", prep)
            if wanted.setdefault(path, setting) != setting:
                raise UserError(f"{m['model_dir']}: its depth settings differ from another member's that shares "
                                f"{path.parent.name}/; the pipeline keeps one cache per folder, retrain them "
                                "alike")  # fmt: skip
    for path, (model, backend, resolution, prep) in wanted.items():
        build_cache(data_dir, "test", model, path, backend=backend, resolution=resolution, batch_size=DEPTH_BATCH,
                    device=device, prep=prep)  # fmt: skip
    return list(wanted)


def run(package_dir: str | Path, data_dir: str | Path, work_dir: str | Path, out: str | Path | None = None,
        device: str = "auto") -> pd.DataFrame:
    """Write the package's submission for ``data_dir``'s test images; returns it."""
    package_dir, data_dir, work_dir = Path(package_dir).resolve(), Path(data_dir), Path(work_dir)
    recipe_path = package_dir / "recipe.json"
    if not recipe_path.exists():
        raise UserError(f"{recipe_path} not found; --package-dir must be the folder src.kaggle_package wrote")
    recipe = json.loads(recipe_path.read_text())
    dev = pick_device(device)
    n = len(load_test(data_dir))
    start = time.perf_counter()
    root = resolve_members(recipe, package_dir, work_dir / "models")
    build_depth_caches(recipe, root, data_dir, work_dir / "depth", dev)
    preds = predict_members(recipe, root, data_dir, depth_cache_dir=str(work_dir / "depth"), device=str(dev))
    sub = submission_of(recipe, preds, data_dir)
    out = Path(out) if out else work_dir / "submission.csv"
    write_csv(out, sub)
    took = time.perf_counter() - start
    print(f"wrote {out} ({len(sub)} rows, {len(recipe['members'])} member(s))")
    print(f"{took:.1f} s for {n} test images on {dev}: {took / max(n, 1):.3f} s per image (depth + models)")
    return sub


@cli_main
def main(argv=None, package_dir: Path | None = None) -> None:
    args = build_parser(package_dir or Path.cwd()).parse_args(argv)
    run(args.package_dir, args.data_dir, args.work_dir, args.out, args.device)
