"""Kaggle-side inference of a package built by ``src.kaggle_package``: the recipe's members run on
``<data-dir>/test.csv`` exactly as the pipeline ran them, then ``submission.csv``.

The package's ``infer.py`` calls ``main`` of ``src/kaggle_infer.py`` (``pasture_biomass.kaggle_infer``
once installed), which calls ``run``; the wheel of this project must be installed (``pip install --no-index --find-links <package>/wheels pasture-biomass``). The input folder is
read-only on Kaggle, so everything made here (the members' configs with the depth model's path
resolved, the test depth caches) goes under ``--work-dir``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd
import yaml

from ..core.errors import UserError
from ..core.io_utils import write_csv, write_text
from ..data.depth import build_cache, cache_path
from ..data.photo_prep import PhotoPrep
from ..data.schema import load_test
from ..inference.predictor import CHECKPOINT
from ..models.depth_anything import model_id
from ..rounds.final import predict_members, submission_of
from ..training.checkpoint import load_config
from ..training.distributed import pick_device

# The competition's data as Kaggle mounts it in a notebook (kaggle.com/competitions/csiro-biomass).
KAGGLE_DATA = "/kaggle/input/csiro-biomass"
KAGGLE_WORK = "/kaggle/working"
DEPTH_BATCH = 8  # the pipeline's depth.batch_size in every shipped config


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src, dst)
    except OSError:  # a file system without symlinks: a copy reads the same
        shutil.copy2(src, dst)


REBUILD = "rebuild the package with python -m src.kaggle_package --results-dir RESULTS"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _inside(package_dir: Path, rel: str, path: Path, what: str) -> Path:
    """``package_dir / rel``, which must stay inside the package: relative, no '..', no link out."""
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or ".." in PurePosixPath(
            rel.replace("\\", "/")).parts:  # fmt: skip
        raise UserError(f"{path}: {what} {rel!r} leaves the package (absolute or '..'); it must be a folder inside "
                        f"{package_dir}: {REBUILD}")  # fmt: skip
    full = package_dir / rel
    if not full.resolve().is_relative_to(package_dir.resolve()):
        raise UserError(f"{path}: {what} {rel!r} leaves the package through a link (to {full.resolve()}); copy the "
                        f"models into {package_dir} or {REBUILD}")  # fmt: skip
    return full


def read_recipe(package_dir: Path) -> dict:
    """``<package>/recipe.json``, checked before anything is read or written: members with a
    model_dir inside the package and a finite weight; ``postprocess`` a mapping or null;
    ``predict`` a mapping (tta true/false, tta_scales numbers > 0). Else one line and the fix."""
    path = package_dir / "recipe.json"
    if not path.is_file():
        raise UserError(f"{path} not found; --package-dir must be the folder src.kaggle_package wrote")
    try:
        recipe = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]}); {REBUILD}")
    members = recipe.get("members") if isinstance(recipe, dict) else None
    if not isinstance(members, list) or not members:
        raise UserError(f"{path}: no \"members\" (a list of {{\"model_dir\": ..., \"weight\": ...}}); {REBUILD}")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("model_dir"), str) or not m["model_dir"].strip():
            raise UserError(f"{path}: members[{i}] has no \"model_dir\" (a folder of the package); {REBUILD}")
        if not _number(m.get("weight")):
            raise UserError(f"{path}: members[{i}] weight {m.get('weight')!r} is not a finite number; {REBUILD}")
        _inside(package_dir, m["model_dir"], path, f"members[{i}].model_dir")
    if not isinstance(recipe.get("postprocess"), (dict, type(None))):
        raise UserError(f"{path}: \"postprocess\" {recipe['postprocess']!r} is neither a mapping nor null; {REBUILD}")
    kw = recipe.get("predict", {})
    scales = kw.get("tta_scales", [1.0]) if isinstance(kw, dict) else None
    if (not isinstance(kw, dict) or not isinstance(kw.get("tta", True), bool) or not isinstance(scales, list)
            or not scales or not all(_number(s) and s > 0 for s in scales)):  # fmt: skip
        raise UserError(f"{path}: \"predict\" {kw!r} must be {{\"tta\": true/false, \"tta_scales\": [numbers > 0]}}; "
                        f"{REBUILD}")  # fmt: skip
    return recipe


def _check_work_dir(package_dir: Path, root: Path) -> None:
    """The work copies go to ``root`` (<work-dir>/models), which must not hold or be the package."""
    a, b = root.resolve(), package_dir.resolve()
    if a.is_relative_to(b) or b.is_relative_to(a):
        raise UserError(f"--work-dir {root.parent}: its models/ folder would overlap the package {package_dir} "
                        "(the work copies replace what is there); give another --work-dir")  # fmt: skip


def resolve_members(recipe: dict, package_dir: Path, root: Path) -> Path:
    """``root/<model_dir>/<fold>/`` for each member: links to the packaged weights, and a
    config.yaml whose ``depth_model`` (relative to the package) is an absolute path, so the depth
    cache built here and the models agree on its name wherever Kaggle mounts the package."""
    path = package_dir / "recipe.json"
    _check_work_dir(package_dir, root)
    for i, m in enumerate(recipe["members"]):
        src_dir = _inside(package_dir, m["model_dir"], path, f"members[{i}].model_dir")
        folds = sorted(p.parent for p in src_dir.glob(f"*/{CHECKPOINT}"))
        if not folds:
            raise UserError(f"{src_dir}: no */{CHECKPOINT}; rebuild the package with python -m src.kaggle_package")
        for fold in folds:
            _inside(package_dir, str(fold.relative_to(package_dir)), path, f"members[{i}] fold folder")
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


def find_data_dir(data_dir: str | Path, inputs: str | Path = "/kaggle/input") -> Path:
    """``data_dir`` when it holds the competition's files; when it does not exist and is the default,
    the one folder under ``inputs`` (two levels deep: Kaggle mounts competitions at
    /kaggle/input/<slug> or /kaggle/input/competitions/<slug>) with test.csv and sample_submission.csv."""
    data_dir = Path(data_dir)
    if data_dir.exists() or str(data_dir) != KAGGLE_DATA:
        return data_dir
    found = sorted({p.parent for pattern in ("*/test.csv", "*/*/test.csv") for p in Path(inputs).glob(pattern)
                    if (p.parent / "sample_submission.csv").is_file()})  # fmt: skip
    if len(found) != 1:
        what = f"{len(found)} folders with test.csv and sample_submission.csv ({', '.join(map(str, found[:3]))})" \
            if found else "no folder with test.csv and sample_submission.csv"
        raise UserError(f"{data_dir} does not exist and {inputs} has {what}; attach the competition's data to the "
                        "notebook or pass --data-dir DIR")  # fmt: skip
    print(f"competition data: {found[0]} ({data_dir} does not exist)", flush=True)
    return found[0]


def run(package_dir: str | Path, data_dir: str | Path, work_dir: str | Path, out: str | Path | None = None,
        device: str = "auto") -> pd.DataFrame:
    """Write the package's submission for ``data_dir``'s test images; returns it."""
    package_dir, data_dir, work_dir = Path(package_dir).resolve(), find_data_dir(data_dir), Path(work_dir)
    recipe = read_recipe(package_dir)  # before anything is read or written
    _check_work_dir(package_dir, work_dir / "models")
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
