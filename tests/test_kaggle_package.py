"""The offline Kaggle package (src.kaggle_package): built by the pipeline, installed with pip
--no-index into a fresh venv that plays a stock Kaggle image, its infer.py reproduces the
pipeline's submission.csv without the repository on the path."""

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.core.errors import UserError
from src.packaging.kaggle_package import PROJECT, build, dependency_wheels, kaggle_requirements
from tests.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
# Besides requirements-kaggle.txt's: what the stock image must not get from this venv.
SHIPPED = {PROJECT}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env(**extra) -> dict:
    # this machine's own pip settings (find-links, an index) are no part of a Kaggle image
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    return {**env, "PATH": BIN + os.pathsep + env["PATH"], "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "NO_ALBUMENTATIONS_UPDATE": "1", "DVC_NO_ANALYTICS": "1", **extra}  # fmt: skip


def _run(args, cwd, check=True, env=None):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env or _env())
    if check:
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _offline_env() -> dict:
    """No index, no user pip config, no repository on the path, and any connection refused."""
    dead = "http://127.0.0.1:9"
    return _env(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", HTTP_PROXY=dead,
                HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead, TRANSFORMERS_OFFLINE="1")  # fmt: skip


def stock_kaggle_venv(where: Path) -> Path:
    """A fresh venv whose site-packages sees this venv's distributions through a .pth file (a
    folder of symlinks to their top-level entries, found from their RECORD files), except those
    requirements-kaggle.txt lists and the project itself: what the package must bring. Its pip
    and setuptools are this venv's too (a venv's own setuptools would shadow the newer one torch
    needs), as an image has one set of each."""
    missing = set(kaggle_requirements()) | SHIPPED
    site = Path(sysconfig.get_paths()["purelib"])
    owners: dict[str, set[str]] = {}
    for dist in md.distributions(path=[str(site)]):
        name = _canon(dist.metadata["Name"])
        # RECORD's text, not dist.files: torch's and CUDA's RECORDs are long
        for line in (dist.read_text("RECORD") or "").splitlines():
            top = line.split("/", 1)[0].split(",", 1)[0]
            if top and top not in ("..", "__pycache__") and not top.endswith(".pth"):
                owners.setdefault(top, set()).add(name)
    links = where / "kaggle-image-packages"
    links.mkdir(parents=True)
    for top, dists in owners.items():
        if not dists & missing and (site / top).exists():
            (links / top).symlink_to(site / top)
    _run([sys.executable, "-m", "venv", "--without-pip", where / "venv"], where)
    py = where / "venv/bin/python"
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], where).stdout.strip()
    (Path(purelib) / "kaggle_image.pth").write_text(f"{links}\n")
    return py


def kaggle_input(data_dir: Path, where: Path) -> Path:
    """The competition as a notebook sees it: test.csv, sample_submission.csv and test/ only."""
    where.mkdir(parents=True)
    for name in ("test.csv", "sample_submission.csv"):
        shutil.copy2(data_dir / name, where / name)
    shutil.copytree(data_dir / "test", where / "test")
    return where


def install_and_infer(package: Path, data: Path, tmp: Path) -> tuple[Path, pd.DataFrame, str]:
    """The stock venv, the package installed from its wheels only, infer.py run from an empty cwd."""
    py = stock_kaggle_venv(tmp / "kaggle")
    env = _offline_env()
    probe = _run([py, "-c", "import torch, pandas, albumentations; import timm"], tmp, check=False, env=env)
    assert "No module named 'timm'" in probe.stderr, probe.stderr[-2000:]  # the image has torch, lacks timm
    alone = tmp / "only-the-project-wheel"
    alone.mkdir()
    shutil.copy2(next((package / "wheels").glob("pasture_biomass-*.whl")), alone)
    pip = [py, "-m", "pip", "install", "--no-compile", "--no-index", "--find-links"]
    fails = _run([*pip, alone, PROJECT], tmp, check=False, env=env)
    assert fails.returncode != 0 and "timm" in fails.stdout + fails.stderr  # the dependency wheels are needed
    _run([*pip, package / "wheels", PROJECT], tmp, env=env)
    where = _run([py, "-c", "import pasture_biomass, timm; print(pasture_biomass.__file__); print(timm.__file__)"], tmp, env=env).stdout.split()
    assert all(Path(w).resolve().is_relative_to((tmp / "kaggle/venv").resolve()) for w in where), where
    run_dir = tmp / "cwd"
    run_dir.mkdir()
    proc = _run([py, package / "infer.py", "--data-dir", data, "--work-dir", tmp / "working", "--device", "cpu"],
                run_dir, env=env)  # fmt: skip
    return py, pd.read_csv(tmp / "working/submission.csv"), proc.stdout


def assert_same_submission(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert got["sample_id"].tolist() == want["sample_id"].tolist()
    assert np.allclose(got["target"].to_numpy(), want["target"].to_numpy(), atol=1e-5, rtol=0), (
        np.abs(got["target"].to_numpy() - want["target"].to_numpy()).max())


def _snake(*args, cwd):
    return _run([sys.executable, "-m", "snakemake", *args], cwd)


@pytest.mark.slow
def test_the_package_reproduces_the_pipeline_submission_in_a_stock_kaggle_venv(tmp_path):
    repo = copy_project(tmp_path / "repo")
    snakefile = repo / "workflow/Snakefile"
    if "rules/kaggle.smk" not in snakefile.read_text():  # until the Snakefile includes it
        snakefile.write_text(snakefile.read_text() + '\n\ninclude: "rules/kaggle.smk"\n')
    _snake("--configfile", "config/test.yaml", "--cores", "2", "results/test/kaggle", cwd=repo)
    package, results = repo / "results/test/kaggle", repo / "results/test"
    meta = json.loads((package / "dataset-metadata.json").read_text())
    assert meta["id"].endswith("/pasture-biomass-inference") and meta["title"] and meta["licenses"]
    nb = json.loads((package / "inference.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert nb["nbformat"] == 4 and "--no-index" in code and "infer.py" in code
    recipe = json.loads((package / "recipe.json").read_text())
    for m in recipe["members"]:
        for cfg in (package / m["model_dir"]).glob("*/config.yaml"):
            text = cfg.read_text()
            assert "results/test" not in text and "depth_model: depth/" in text  # nothing points into the repo

    data = kaggle_input(repo / "data/test", tmp_path / "input/csiro-biomass")
    py, got, out = install_and_infer(package, data, tmp_path)
    assert "s per image" in out and "wrote" in out
    assert_same_submission(got, pd.read_csv(results / "submission.csv"))

    # The recipe decides: another member weight gives another submission.
    other = tmp_path / "other-package"
    shutil.copytree(package, other, ignore=shutil.ignore_patterns("wheels"))
    recipe["members"][0]["weight"] += 0.5
    (other / "recipe.json").write_text(json.dumps(recipe))
    _run([py, other / "infer.py", "--data-dir", data, "--work-dir", tmp_path / "working2", "--out",
          tmp_path / "other.csv"], tmp_path / "cwd", env=_offline_env())  # fmt: skip
    changed = pd.read_csv(tmp_path / "other.csv")
    assert changed["sample_id"].tolist() == got["sample_id"].tolist()
    assert not np.allclose(changed["target"], got["target"], atol=1e-5, rtol=0)


def test_missing_dependency_wheels_stop_the_build_with_the_fix(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final/recipe.json").write_text(json.dumps({"members": [], "postprocess": None}))
    with pytest.raises(UserError, match=r"no wheel for timm.*run make \.venv/\.installed"):
        build(tmp_path, tmp_path / "kaggle", wheels_dir=tmp_path / "no-wheels")
    assert not (tmp_path / "kaggle").exists() and not list(tmp_path.glob(".kaggle*"))  # nothing half-written
    with pytest.raises(UserError, match="final rule"):
        build(tmp_path / "elsewhere", tmp_path / "kaggle", wheels_dir=tmp_path)


def test_every_kaggle_requirement_has_a_reason_and_a_downloaded_wheel():
    lines = [ln for ln in (REPO / "requirements-kaggle.txt").read_text().splitlines() if ln.split("#")[0].strip()]
    assert lines and all("#" in ln and ln.split("#", 1)[1].strip() for ln in lines)
    assert {"timm", "transformers"} <= set(kaggle_requirements())
    pinned = dict(ln.split("==", 1) for ln in (REPO / "requirements.txt").read_text().split() if "==" in ln)
    for name, spec in kaggle_requirements().items():
        if name in pinned:
            assert spec == f"{name}=={pinned[name]}"  # the versions the pipeline ran with
    wheels = Path(sys.prefix) / "wheels"
    if not wheels.is_dir():
        pytest.skip(f"{wheels}: not downloaded here (make .venv/.installed)")
    assert len(dependency_wheels(wheels, kaggle_requirements())) == len(kaggle_requirements())
