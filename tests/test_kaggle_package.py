"""The offline Kaggle package (src.kaggle_package): built by the pipeline, installed with pip
--no-index into fresh venvs that play a Kaggle image (a minimal one, and one with an older
transformers): nothing of the image is uninstalled, and infer.py reproduces the pipeline's
submission.csv without the repository on the path."""

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
from src.packaging import wheelhouse
from src.packaging.kaggle_infer import KAGGLE_DATA, find_data_dir
from src.packaging.kaggle_package import INFER, PROJECT, build
from tests.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
# Older versions than this venv's, as a Kaggle image has them (make .venv/.installed downloads them).
STANDIN = Path(sys.prefix) / "kaggle-standin"
OLD_TRANSFORMERS = {"transformers": "4.57.1", "huggingface-hub": "0.36.2", "tokenizers": "0.22.2"}


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


def stock_kaggle_venv(where: Path, image: str) -> Path:
    """A fresh venv that plays a Kaggle image: its site-packages sees some of this venv's
    distributions through a .pth file (a folder of symlinks to their top-level entries, found from
    their RECORD files). ``minimal``: torch, torchvision, numpy, pandas, pillow, scikit-learn,
    OpenCV and what they need (wheelhouse.IMAGE_HAS), nothing else; ``older``: all of this venv but
    the project, timm and albumentations, with transformers 4.57.1 (and its huggingface-hub and
    tokenizers) installed in the venv itself. Its pip and setuptools are this venv's too."""
    site = Path(sysconfig.get_paths()["purelib"])
    owners: dict[str, set[str]] = {}
    for dist in md.distributions(path=[str(site)]):
        name = _canon(dist.metadata["Name"])
        # RECORD's text, not dist.files: torch's and CUDA's RECORDs are long
        for line in (dist.read_text("RECORD") or "").splitlines():
            top = line.split("/", 1)[0].split(",", 1)[0]
            if top and top not in ("..", "__pycache__") and not top.endswith(".pth"):
                owners.setdefault(top, set()).add(name)
    if image == "minimal":
        keep = set(wheelhouse.closure([wheelhouse.Requirement(n) for n in wheelhouse.IMAGE_HAS])) | {"pip", "setuptools"}
        shown = lambda dists: dists <= keep  # noqa: E731
    else:
        gone = {PROJECT, "timm", "albumentations", "albucore", *OLD_TRANSFORMERS}
        shown = lambda dists: not dists & gone  # noqa: E731
    links = where / "kaggle-image-packages"
    links.mkdir(parents=True)
    for top, dists in owners.items():
        if shown(dists) and (site / top).exists():
            (links / top).symlink_to(site / top)
    _run([sys.executable, "-m", "venv", "--without-pip", where / "venv"], where)
    py = where / "venv/bin/python"
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], where).stdout.strip()
    (Path(purelib) / "kaggle_image.pth").write_text(f"{links}\n")
    if image == "older":
        if not STANDIN.is_dir():
            pytest.skip(f"{STANDIN}: not downloaded here (make .venv/.installed)")
        _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links", STANDIN,
              *(f"{n}=={v}" for n, v in OLD_TRANSFORMERS.items())], where, env=_offline_env())  # fmt: skip
    return py


def installed(py: Path) -> dict[str, str]:
    out = _run([py, "-m", "pip", "list", "--format", "json"], py.parent, env=_offline_env()).stdout
    return {_canon(d["name"]): d["version"] for d in json.loads(out)}


def kaggle_input(data_dir: Path, where: Path) -> Path:
    """The competition as a notebook sees it: test.csv, sample_submission.csv and test/ only."""
    where.mkdir(parents=True)
    for name in ("test.csv", "sample_submission.csv"):
        shutil.copy2(data_dir / name, where / name)
    shutil.copytree(data_dir / "test", where / "test")
    return where


def install_and_infer(package: Path, data: Path, tmp: Path, image: str = "minimal") -> tuple[Path, pd.DataFrame, str]:
    """The stand-in image, the package installed from its wheels only (nothing of the image
    uninstalled or changed), infer.py run from an empty cwd."""
    py = stock_kaggle_venv(tmp / "kaggle", image)
    env = _offline_env()
    probe = _run([py, "-c", "import torch, pandas, cv2, sklearn; import timm"], tmp, check=False, env=env)
    assert "No module named 'timm'" in probe.stderr, probe.stderr[-2000:]  # the image has torch, lacks timm
    before = installed(py)
    alone = tmp / "only-the-project-wheel"
    alone.mkdir()
    shutil.copy2(next((package / "wheels").glob("pasture_biomass-*.whl")), alone)
    pip = [py, "-m", "pip", "install", "--no-compile", "--no-index", "--find-links"]
    fails = _run([*pip, alone, PROJECT], tmp, check=False, env=env)
    assert fails.returncode != 0 and "timm" in fails.stdout + fails.stderr  # the dependency wheels are needed
    done = _run([*pip, package / "wheels", PROJECT], tmp, env=env)
    assert "uninstall" not in (done.stdout + done.stderr).lower(), done.stdout[-3000:]
    after = installed(py)
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    assert not changed, f"the install changed the image's packages: {changed}"
    assert {"timm", "albumentations", "pasture-biomass"} <= set(after) - set(before)
    where = _run([py, "-c", "import pasture_biomass, timm; print(pasture_biomass.__file__); print(timm.__file__)"],
                 tmp, env=env).stdout.split()  # fmt: skip
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


@pytest.fixture(scope="module")
def pipeline_package(tmp_path_factory):
    """The test config's pipeline run to its Kaggle package."""
    tmp = tmp_path_factory.mktemp("pipeline")
    repo = copy_project(tmp / "repo")
    _snake("--configfile", "config/test.yaml", "--cores", "2", "results/test/kaggle", cwd=repo)
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("image", ["minimal", "older"])
def test_the_package_reproduces_the_pipeline_submission_in_a_kaggle_image_stand_in(pipeline_package, image, tmp_path):
    repo = pipeline_package
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
    # binary wheels for each CPython an image may run
    regex = {w.name.split("-")[2] for w in (package / "wheels").glob("regex-*.whl")}
    assert regex == {f"cp{v.replace('.', '')}" for v in wheelhouse.PYTHONS}, regex

    data = kaggle_input(repo / "data/test", tmp_path / "input/csiro-biomass")
    py, got, out = install_and_infer(package, data, tmp_path, image)
    assert "s per image" in out and "wrote" in out
    assert_same_submission(got, pd.read_csv(results / "submission.csv"))
    if image == "older":
        version = _run([py, "-c", "import transformers; print(transformers.__version__)"], tmp_path).stdout.strip()
        assert version == OLD_TRANSFORMERS["transformers"]  # the image's own, used for the depth model
        # ... with the image processor the pipeline's backend names (torchvision: the fast one), not 4.x's
        # default (PIL), whose resizing differs
        depth = next((package / "depth").iterdir())
        probe = ("import torch; from pasture_biomass.models.depth_anything import load; "
                 f"print(type(load({str(depth)!r}, 'torchvision', torch.device('cpu'))[0]).__name__)")
        assert _run([py, "-c", probe], tmp_path, env=_offline_env()).stdout.strip() == "DPTImageProcessorFast"
        return

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
    with pytest.raises(UserError, match=r"no wheel of \S+==\S+ for CPython 3\.11.*run make \.venv/\.installed"):
        build(tmp_path, tmp_path / "kaggle", wheels_dir=tmp_path / "no-wheels")
    assert not (tmp_path / "kaggle").exists() and not list(tmp_path.glob(".kaggle*"))  # nothing half-written
    with pytest.raises(UserError, match="final rule"):
        build(tmp_path / "elsewhere", tmp_path / "kaggle", wheels_dir=tmp_path)


def test_the_carried_wheels_are_what_an_image_may_lack_at_this_venvs_versions(tmp_path):
    carried = wheelhouse.carried()
    assert {"timm", "transformers", "albumentations", "albucore", "safetensors", "peft", "pydantic"} <= set(carried)
    assert not {"torch", "torchvision", "numpy", "pandas", "pillow", "scikit-learn", "scipy"} & set(carried)
    assert all(md.version(n) == v for n, v in carried.items())  # the versions the pipeline ran with
    assert "transformers>=4.57" in wheelhouse.floors() and "timm>=1.0.20" in wheelhouse.floors()
    # a binary wheel counts for its own CPython, an abi3 one for later ones, a pure one for all
    names = ["regex-1-cp311-cp311-manylinux_2_17_x86_64.whl", "regex-1-cp312-cp312-manylinux_2_17_x86_64.whl",
             "tok-1-cp39-abi3-manylinux_2_17_x86_64.whl", "pure-1-py3-none-any.whl"]  # fmt: skip
    for n in names:
        (tmp_path / n).write_text("")
    assert len(wheelhouse.wheels_for(tmp_path, {"tok": "1", "pure": "1"})) == 2
    with pytest.raises(UserError, match=r"no wheel of regex==1 for CPython 3\.13;"):
        wheelhouse.wheels_for(tmp_path, {"regex": "1"})
    wheels = Path(sys.prefix) / "wheels"
    if not wheels.is_dir():
        pytest.skip(f"{wheels}: not downloaded here (make .venv/.installed)")
    assert {_canon(w.name.split("-")[0]) for w in wheelhouse.wheels_for(wheels, carried)} == set(carried)


def test_infer_sets_the_offline_switches_before_importing_and_names_a_missing_install(tmp_path):
    """infer.py as the package has it, against a stand-in pasture_biomass that reports the switches."""
    (tmp_path / "infer.py").write_text(INFER)
    fake = tmp_path / "site/pasture_biomass"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "kaggle_infer.py").write_text("import os\ndef main(argv, package_dir):\n    print([os.environ.get(k) for k in "
                                          "('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'NO_ALBUMENTATIONS_UPDATE')])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "NO_ALBUMENTATIONS_UPDATE", "PYTHONPATH")}
    ok = subprocess.run([sys.executable, "infer.py"], cwd=tmp_path, capture_output=True, text=True,
                        env={**env, "PYTHONPATH": str(tmp_path / "site")})  # fmt: skip
    assert ok.stdout.strip() == "['1', '1', '1']", ok.stdout + ok.stderr
    # a folder holding src/ on the path is no installed package: the install hint, one line
    missing = subprocess.run([sys.executable, "infer.py"], cwd=tmp_path, capture_output=True, text=True,
                             env={**env, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert missing.returncode != 0 and "pasture_biomass package is not installed" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr


def test_infer_finds_the_competition_data_under_kaggle_input(tmp_path):
    inputs = tmp_path / "input"
    (inputs / "pasture-biomass-inference").mkdir(parents=True)  # the package itself: no test.csv
    comp = inputs / "competitions/csiro-biomass-2"
    comp.mkdir(parents=True)
    with pytest.raises(UserError, match="no folder with test.csv"):
        find_data_dir(KAGGLE_DATA, inputs)
    for name in ("test.csv", "sample_submission.csv"):
        (comp / name).write_text("")
    assert find_data_dir(KAGGLE_DATA, inputs) == comp
    assert find_data_dir(tmp_path / "mine", inputs) == tmp_path / "mine"  # a given folder is the user's choice
    (inputs / "copy").mkdir()
    for name in ("test.csv", "sample_submission.csv"):
        (inputs / "copy" / name).write_text("")
    with pytest.raises(UserError, match="2 folders"):
        find_data_dir(KAGGLE_DATA, inputs)


def test_the_notebook_installs_peft_only_for_a_recipe_with_a_lora_member(tmp_path):
    from src.packaging.kaggle_package import install_spec, notebook

    fold = tmp_path / "models/M1/fold0"
    fold.mkdir(parents=True)
    (fold / "config.yaml").write_text("lora_rank: 0\n")
    assert install_spec(tmp_path) == PROJECT
    (tmp_path / "models/M2/fold0").mkdir(parents=True)
    (tmp_path / "models/M2/fold0/config.yaml").write_text("lora_rank: 8\n")
    spec = install_spec(tmp_path)
    assert spec == f"{PROJECT}[lora]"
    code = "".join("".join(c["source"]) for c in notebook("slug", spec)["cells"] if c["cell_type"] == "code")
    assert f'"{PROJECT}[lora]"' in code
