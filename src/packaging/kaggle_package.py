"""The offline Kaggle dataset of a run: the final recipe's models, the depth model, this
project's wheel and the dependency wheels a stock Kaggle image lacks, one inference script.

    python -m src.kaggle_package --results-dir results --out results/kaggle [--kaggle-user NAME]

Layout of ``--out`` (upload it with ``kaggle datasets create -p results/kaggle``)::

    recipe.json              the final recipe, model_dir relative to this folder
    models/<member>/<fold>/  best.safetensors, extras.json, config.yaml (paths made package-relative)
    depth/<name>/            the Depth Anything V2 model the members' depth caches came from
    wheels/                  pasture_biomass-*.whl + the wheels of what a Kaggle image may lack (wheelhouse)
    infer.py                 python infer.py [--data-dir /kaggle/input/csiro-biomass] -> submission.csv
    inference.ipynb          pip install --no-index from wheels/, then infer.py
    dataset-metadata.json    title, id (<username>/<slug>), licenses
    README.md

The dependency wheels come from ``<venv>/wheels`` (``make .venv/.installed`` downloads them with
``src.kaggle_wheels``; the build itself needs no network). pip keeps what the image has unless it
is older than the project's floor; the build says which floors those are. A member whose config names a hub id for its depth model gets
that model from the local Hugging Face cache (HF_HUB_OFFLINE) through ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

import yaml

from ..core.config import TrainConfig
from ..core.errors import UserError
from ..core.io_utils import write_json, write_text
from ..inference.predictor import CHECKPOINT
from ..models.depth_anything import model_id
from . import wheelhouse

REPO = Path(__file__).resolve().parents[2]
PROJECT = "pasture-biomass"
PLACEHOLDER_USER = "YOUR_KAGGLE_USERNAME"
DEFAULTS = TrainConfig()

INFER = '''"""Kaggle inference of this package: python infer.py [--data-dir DIR] [--work-dir DIR] (see --help).
Needs the project's wheel: pip install --no-index --find-links <this folder>/wheels pasture-biomass"""

import os
import sys
from pathlib import Path

# A Kaggle notebook has no internet: no hub lookups, no update checks (set before any import of them).
for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_ALBUMENTATIONS_UPDATE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(key, "1")

try:
    from pasture_biomass.kaggle_infer import main
except ModuleNotFoundError as exc:
    if exc.name != "pasture_biomass":
        raise  # a dependency is missing or broken: its own error says which
    here = Path(__file__).resolve().parent
    sys.exit(f"error: the pasture_biomass package is not installed; install it first: pip install --no-index "
             f"--find-links {here / 'wheels'} pasture-biomass")

if __name__ == "__main__":
    main(sys.argv[1:], package_dir=Path(__file__).resolve().parent)
'''

NOTEBOOK_CODE = '''import subprocess, sys
from pathlib import Path

# Where Kaggle mounts this dataset; found by its infer.py + recipe.json if it is elsewhere.
PKG = Path("/kaggle/input/{slug}")
if not (PKG / "infer.py").exists():
    PKG = next(p.parent for p in Path("/kaggle/input").glob("**/infer.py") if (p.parent / "recipe.json").exists())
# pip keeps the image's packages that satisfy the requirements: it only adds what is missing
subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(PKG / "wheels"),
                "{project}"], check=True)
subprocess.run([sys.executable, str(PKG / "infer.py"), "--work-dir", "/kaggle/working"], check=True)'''


def install_spec(package: Path) -> str:
    """What the notebook installs: the project, with its ``lora`` extra (peft) when a member was
    trained with LoRA adapters, which inference rebuilds before loading the weights."""
    lora = any((yaml.safe_load(p.read_text()) or {}).get("lora_rank", 0) for p in package.glob("models/**/config.yaml"))
    return f"{PROJECT}[lora]" if lora else PROJECT


def build_project_wheel(dest: Path, repo: Path = REPO) -> Path:
    """This project's wheel, built offline from a copy of its sources (a build in the repository
    would leave build/ and *.egg-info behind)."""
    with tempfile.TemporaryDirectory(prefix="wheel-src-") as tmp:
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (repo / name).exists():
                shutil.copy2(repo / name, Path(tmp) / name)
        shutil.copytree(repo / "src", Path(tmp) / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                               "--no-build-isolation", "--no-index", "-w", str(dest), tmp],
                              capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"building the {PROJECT} wheel failed ({tail[0][:200]}); "
                        "pip install setuptools (requirements.txt)")
    return next(dest.glob(f"{PROJECT.replace('-', '_')}-*.whl"))


class _DepthModels:
    """The depth models the members name, each copied once into ``<package>/depth/<name>``."""

    def __init__(self, package: Path):
        self.package, self.names = package, {}

    def add(self, source: str) -> str:
        if source not in self.names:
            name = Path(source).name if Path(source).is_dir() else source.replace("/", "__")
            while name in self.names.values():
                name += "_"
            dst = self.package / "depth" / name
            if Path(source).is_dir():
                shutil.copytree(source, dst, ignore=shutil.ignore_patterns(".snakemake_timestamp"))
            else:  # a hub id: from the local Hugging Face cache, offline
                from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

                try:
                    DepthAnythingForDepthEstimation.from_pretrained(source).save_pretrained(dst)
                    AutoImageProcessor.from_pretrained(source).save_pretrained(dst)
                except OSError as exc:
                    raise UserError(f"depth model {source!r} is neither a folder nor in the local Hugging Face cache "
                                    f"({str(exc).splitlines()[0][:120]}); download it once with huggingface-cli "
                                    "download ID")  # fmt: skip
            self.names[source] = name
        return f"depth/{self.names[source]}"


def packaged_config(values: dict, model_dir: str, depth: _DepthModels) -> dict:
    """A fold's config.yaml with the paths into the repository replaced by package-relative ones
    (depth_model) or by the defaults (folders the inference never reads)."""
    out = dict(values)
    for key in ("data_dir", "image_cache_dir", "fold_csv", "depth_cache_dir"):
        out[key] = getattr(DEFAULTS, key)
    out["output_dir"] = model_dir
    if out.get("use_depth"):
        out["depth_model"] = depth.add(model_id(out["depth_model_size"], out.get("depth_model", "")))
    return out


def _package_dir(model_dir: str) -> str:
    return "models/" + model_dir.removeprefix("models/")


def check_member_dirs(recipe: dict, results: Path, path: Path) -> None:
    """Each member's model_dir is a folder of the results (relative, no '..'): its package copy,
    ``models/<model_dir>``, then stays inside the package."""
    for i, m in enumerate(recipe.get("members", [])):
        rel = m.get("model_dir") if isinstance(m, dict) else None
        if not isinstance(rel, str) or not rel or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise UserError(f"{path}: members[{i}].model_dir {rel!r} leaves {results} (absolute or '..'); it must be a "
                            "folder of the results like models/M1: rerun the pipeline's final rule")  # fmt: skip


def copy_members(recipe: dict, results: Path, package: Path) -> dict:
    """Each member's checkpoints under ``package/models/``; returns the recipe pointing at them."""
    check_member_dirs(recipe, results, results / "final/recipe.json")
    depth, members = _DepthModels(package), []
    for m in recipe["members"]:
        src, rel = results / m["model_dir"], _package_dir(m["model_dir"])
        folds = sorted(p.parent for p in src.glob(f"*/{CHECKPOINT}"))
        if not folds:
            raise UserError(f"{src}: no */{CHECKPOINT} for the recipe's member {m['model_dir']}; run the pipeline's "
                            "training rules first")  # fmt: skip
        for fold in folds:
            dst = package / rel / fold.name
            dst.mkdir(parents=True)
            shutil.copy2(fold / CHECKPOINT, dst / CHECKPOINT)
            if (fold / "extras.json").exists():
                shutil.copy2(fold / "extras.json", dst / "extras.json")
            values = yaml.safe_load((fold / "config.yaml").read_text())
            write_text(dst / "config.yaml", yaml.safe_dump(packaged_config(values, rel, depth), sort_keys=False))
        members.append({**m, "model_dir": rel})
    return {**recipe, "members": members}


def notebook(slug: str, spec: str = PROJECT) -> dict:
    """A minimal nbformat-4 notebook: install the wheels, run infer.py."""
    text = ("# Pasture biomass: offline inference\n"
            "Installs this dataset's wheels (no internet) and writes `submission.csv`.")
    code = NOTEBOOK_CODE.replace("{slug}", slug).replace("{project}", spec)
    def cell(kind: str, src: str, **kw) -> dict:
        return {"cell_type": kind, "metadata": {}, "source": src.splitlines(keepends=True), **kw}

    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}},
            "cells": [{**cell("markdown", text), "id": "about"},
                      {**cell("code", code, execution_count=None, outputs=[]), "id": "run"}]}  # fmt: skip


def readme(recipe: dict, user: str, slug: str, spec: str = PROJECT) -> str:
    members = "\n".join(f"- `{m['model_dir']}` weight {m['weight']:.4f}" for m in recipe["members"])
    note = ""
    if user == PLACEHOLDER_USER:
        note = f"\nSet your Kaggle username in dataset-metadata.json (now `{user}`) before uploading.\n"
    return f"""# Pasture biomass: offline Kaggle package

Made by `python -m src.kaggle_package`; it reproduces the pipeline's `submission.csv` from
the checkpoints. Upload: `kaggle datasets create -p <this folder>`.{note}

In a notebook with this dataset and the competition attached (internet off), run
`inference.ipynb`, or:

    pip install --no-index --find-links /kaggle/input/{slug}/wheels "{spec}"
    python /kaggle/input/{slug}/infer.py        # --data-dir /kaggle/input/csiro-biomass --work-dir /kaggle/working

Members (weighted sum of their grams, then the post-processing of `recipe.json`):

{members}

`wheels/` holds this project and every dependency a Kaggle image may lack, for CPython
{", ".join(wheelhouse.PYTHONS)}; torch, torchvision, numpy, pandas, pillow, scikit-learn and OpenCV come
from the image. pip keeps what the image has; it replaces a package only when the image's is older
than the code needs: {"; ".join(wheelhouse.floors())}.
Licences: the code is MIT; each wheel keeps its own; model weights follow their backbones' licences.
"""


def build(results: str | Path, out: str | Path, wheels_dir: str | Path | None = None, user: str = "",
          slug: str = "pasture-biomass-inference", title: str = "Pasture biomass inference",
          license_name: str = "other") -> Path:
    """Write the package into a temporary sibling of ``out``, then rename it onto ``out``."""
    results, out = Path(results), Path(out)
    wheels_dir = Path(wheels_dir) if wheels_dir else Path(sys.prefix) / "wheels"
    recipe_path = results / "final/recipe.json"
    if not recipe_path.exists():
        raise UserError(f"{recipe_path} not found; run the pipeline's final rule first "
                        f"(snakemake {results}/submission.csv)")
    deps = wheelhouse.wheels_for(wheels_dir, wheelhouse.carried())  # before any copying
    user = user or os.environ.get("KAGGLE_USERNAME") or PLACEHOLDER_USER
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        recipe = copy_members(json.loads(recipe_path.read_text()), results, tmp)
        write_json(tmp / "recipe.json", recipe)
        (tmp / "wheels").mkdir()
        project = build_project_wheel(tmp / "wheels")
        for whl in deps:
            shutil.copy2(whl, tmp / "wheels" / whl.name)
        spec = install_spec(tmp)
        write_text(tmp / "infer.py", INFER)
        write_text(tmp / "inference.ipynb", json.dumps(notebook(slug, spec), indent=1) + "\n")
        write_json(tmp / "dataset-metadata.json", {"title": title, "id": f"{user}/{slug}",
                                                   "licenses": [{"name": license_name}]})  # fmt: skip
        write_text(tmp / "README.md", readme(recipe, user, slug, spec))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        old = out.with_name(f".{out.name}.old")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"wrote {out}: {len(recipe['members'])} member(s), {project.name} + {len(deps)} dependency wheels "
          f"(CPython {', '.join(wheelhouse.PYTHONS)}), {size:.1f} MB; the notebook installs {spec}: pip adds what the "
          f"image lacks and replaces only a package older than the code needs ({'; '.join(wheelhouse.floors())})")
    return out
