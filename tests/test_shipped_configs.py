"""Every shipped configuration runs through its DAG to the end of its first training job, on
local stand-ins of the real weights that go through the real loading paths:

- the Hugging Face hub cache, as a user who downloaded the weights once has it (HF_HUB_OFFLINE=1):
  timm's ``timm/vit_*_patch16_dinov3.lvd1689m`` ``model.safetensors`` and Depth Anything V2
  folders written with ``save_pretrained``, under the repo ids the configs name by default;
- the explicit keys: ``backbone_weights: FILE`` (a timm-format .safetensors of the configured
  architecture) and ``depth.model: FOLDER`` (``save_pretrained``).

The backbones are the configured architectures at full size with random weights; the Depth
Anything stand-ins have the real model class and files at tiny widths. Photos, image size and
epochs (the demos' pre-training's too) are shrunk through a second ``--configfile`` merged over the
shipped one, which is otherwise as shipped.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hub_cache import snapshot

from src.core.config import DEPTH_HUB_IDS, HUB_TAG, TIMM_NAMES
from tests.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
# Shrunk sizes only, as a second config file merged over the shipped one (Snakemake reads
# --config's values as strings): every other setting is the shipped file's own.
# The demos' pre-trained backbone too: a few photos, one epoch, the shrunk image size.
SMALL = {"trainer_overrides": {"image_size": 32, "batch_size": 8, "freeze_epochs": 1, "stage2_epochs": 1},
         "pretrain": {"photos": 8, "epochs": 1, "image_size": 32}}  # fmt: skip


def _overlay(path: Path, **extra) -> str:
    values = {**SMALL, **extra, "trainer_overrides": {**SMALL["trainer_overrides"], **extra.get("trainer_overrides", {})}}
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _timm_file(size: str, path: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(TIMM_NAMES[size], pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _depth_folder(path: Path) -> Path:
    from src.models.depth_anything import make_tiny

    return make_tiny(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A hub cache holding ViT-B, ViT-L and both Depth Anything V2 sizes (what config/config.yaml's
    models name), and ViT-B and Depth Anything V2 as a file and a folder."""
    root = tmp_path_factory.mktemp("weights")
    cache = root / "hub"
    vit_b = _timm_file("base", snapshot(cache, f"timm/{TIMM_NAMES['base']}.{HUB_TAG}") / "model.safetensors")
    _timm_file("large", snapshot(cache, f"timm/{TIMM_NAMES['large']}.{HUB_TAG}") / "model.safetensors")  # M3
    for repo in DEPTH_HUB_IDS.values():
        _depth_folder(snapshot(cache, repo))
    return {"cache": cache, "vit_b": vit_b, "depth_dir": _depth_folder(root / "da2-local")}


def _env(cache: Path | None = None):
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "HF_HUB_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
    env.pop("OMP_NUM_THREADS", None)  # the jobs set their own
    env["HF_HUB_CACHE"] = str(cache) if cache else "/nonexistent-hub-cache"
    return env


def _snake(repo: Path, *args, cache: Path | None = None, check: bool = True):
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=repo, capture_output=True, text=True,
                          env=_env(cache))  # fmt: skip
    if check:
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def real_repo(tmp_path_factory):
    """The project with Kaggle-layout photos where config/config.yaml expects them (data/raw)."""
    from src.data.synth import generate

    repo = copy_project(tmp_path_factory.mktemp("real") / "repo")
    generate(repo / "data" / "raw", n_train=40, n_test=4, seed=0, width=256, height=128)
    return repo


def _commands(dry_run: str) -> list[list[str]]:
    """Each shell command of a `snakemake -n -p` run, as the shell would split it."""
    out = []
    for line in dry_run.splitlines():
        if line.startswith("python ") or " -m src." in line:
            out.append(shlex.split(line.split(" > ")[0].split("; ")[-1]))
    return out


def test_real_config_dry_run_gives_every_option_a_value(real_repo, weights):
    """depth.model "" (the default) is each model's hub id on the command line, never an empty word."""
    proc = _snake(real_repo, "-n", "-p", "--configfile", "config/config.yaml", cache=weights["cache"])
    commands = _commands(proc.stdout + proc.stderr)
    depth_cmds = [c for c in commands if "src.depth_cache" in c]
    train_cmds = [c for c in commands if "src.dinov3_train" in c]
    assert depth_cmds and len(train_cmds) == 5 * 5  # M1-M5 x 5 folds
    for cmd in depth_cmds + train_cmds:
        for i, word in enumerate(cmd[:-1]):
            if word in ("--model", "--depth-model"):
                assert cmd[i + 1] and not cmd[i + 1].startswith("--"), cmd
    models = {c[c.index("--model-size") + 1]: c[c.index("--model") + 1] for c in depth_cmds}
    assert models == {"small": DEPTH_HUB_IDS["small"], "base": DEPTH_HUB_IDS["base"]}  # M2 uses base
    m2 = next(c for c in train_cmds if "config/models/M2.yaml" in c)
    assert m2[m2.index("--depth-model") + 1] == DEPTH_HUB_IDS["base"]
    # 8 CPUs per job, 2 GPUs: the trainer is told the job's CPUs and shares them (src.training.cpu_budget)
    assert all(c[c.index("--cpus") + 1].isdigit() for c in train_cmds)


def test_real_config_stops_before_any_job_when_the_weights_are_not_here(real_repo):
    proc = _snake(real_repo, "-n", "--configfile", "config/config.yaml", check=False)  # an empty hub cache, offline
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in text
    assert "models M1, M2, M4, M5: backbone_weights hub needs timm/vit_base_patch16_dinov3.lvd1689m" in text
    assert f"model M2: Depth Anything V2 {DEPTH_HUB_IDS['base']}" in text and "huggingface-cli download" in text


@pytest.mark.long
def test_real_config_runs_its_first_fold_job_from_the_hub_cache(real_repo, weights, tmp_path):
    """config/config.yaml as shipped (backbone_weights: hub, depth.model: ""), photos and sizes shrunk:
    folds, depth cache and image cache, then M1's fold 0 (ViT-B, depth, aux heads) trains."""
    target = "results/models/M1/fold0/metrics.json"
    _snake(real_repo, target, "--configfile", "config/config.yaml", _overlay(tmp_path / "small.yaml"), "--cores", "2",
           cache=weights["cache"])  # fmt: skip
    fold = real_repo / "results/models/M1/fold0"
    assert (real_repo / target).exists() and (fold / "best.safetensors").exists()
    cfg = yaml.safe_load((fold / "config.yaml").read_text())
    assert cfg["backbone_size"] == "base" and cfg["backbone_weights"] == "hub" and cfg["use_depth"]
    assert cfg["depth_model"] == DEPTH_HUB_IDS["small"] and cfg["num_workers"] == 8
    log = (real_repo / "results/logs/train/M1_fold0.log").read_text()
    assert "backbone base" in log
    # 8 loader workers asked for, on a job of 2 CPUs (--cores 2): they share them
    assert re.search(r"--num-workers 8 lowered to 1: 2 CPUs over 1 rank", log), log[-2000:]
    assert (real_repo / "results/depth/small/train.safetensors").exists()


@pytest.mark.slow
def test_real_config_runs_its_first_fold_job_from_local_weights(real_repo, weights, tmp_path):
    """The explicit keys: backbone_weights FILE (timm format, ViT-B) and depth.model FOLDER. Stage 1
    only, so the backbone stays frozen: the fold's weights must hold the file's backbone."""
    from safetensors.torch import load_file

    results = tmp_path / "results"
    over = _overlay(tmp_path / "local.yaml", results_dir=str(results), depth={"model": str(weights["depth_dir"])},
                    trainer_overrides={"stage2_epochs": 0, "backbone_weights": str(weights["vit_b"])})  # fmt: skip
    _snake(real_repo, f"{results}/models/M1/fold0/metrics.json", "--configfile", "config/config.yaml", over, "--cores", "2")
    fold = results / "models/M1/fold0"
    cfg = yaml.safe_load((fold / "config.yaml").read_text())
    assert cfg["backbone_weights"] == str(weights["vit_b"]) and cfg["depth_model"] == str(weights["depth_dir"])
    given, trained = load_file(str(weights["vit_b"])), load_file(str(fold / "last.safetensors"))
    for key in ("blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.weight", "cls_token"):
        assert (trained[f"backbone.{key}"] == given[key]).all(), key
    assert (results / "depth/small/train.safetensors").exists()


@pytest.mark.slow
def test_every_model_of_the_real_config_trains_its_first_fold(real_repo, weights, tmp_path):
    """M1-M5 (ViT-B and ViT-L with gradient checkpointing, both depth sizes, cross-view, AOS, QC)."""
    results = tmp_path / "results"
    over = _overlay(tmp_path / "small.yaml", results_dir=str(results))
    targets = [f"{results}/models/M{i}/fold0/metrics.json" for i in range(1, 6)]
    _snake(real_repo, *targets, "--configfile", "config/config.yaml", over, "--cores", "2", cache=weights["cache"])
    m3 = yaml.safe_load((results / "models/M3/fold0/config.yaml").read_text())
    assert m3["backbone_size"] == "large" and m3["gradient_checkpointing"]
    assert (results / "depth/base/train.safetensors").exists()  # M2's Depth Anything V2 Base


@pytest.mark.slow
@pytest.mark.parametrize("configfile", ["config/demo.yaml", "config/ablation_demo.yaml"])
def test_demo_configs_train_the_first_fold_of_every_model(configfile, tmp_path):
    """The demo and the ablation (every phase of the guide and each technique beyond it)."""
    repo = copy_project(tmp_path / "repo")
    cfg = yaml.safe_load((repo / configfile).read_text())
    results = tmp_path / "results"
    pretrained = f"{results}/pretrained/tiny.safetensors"  # the shipped file's, moved with results_dir
    assert cfg["trainer_overrides"]["backbone_weights"] == f"{cfg['results_dir']}/pretrained/tiny.safetensors"
    over = _overlay(tmp_path / "small.yaml", results_dir=str(results), data_dir=str(tmp_path / "data"),
                    demo_data={**cfg["demo_data"], "n_train": 40, "n_test": 4, "width": 256, "height": 128},
                    trainer_overrides={"backbone_weights": pretrained})  # fmt: skip
    targets = [f"{results}/models/{m}/fold0/metrics.json" for m in cfg["models"]]
    _snake(repo, *targets, "--configfile", configfile, over, "--cores", "2")
    assert all(Path(t).exists() for t in targets)
    # every model trained on the backbone the run pre-trained (made first: an input of each train job)
    assert Path(pretrained).exists() and (results / "benchmarks/pretrain_backbone.tsv").exists()
    for m in cfg["models"]:
        assert yaml.safe_load((results / f"models/{m}/fold0/config.yaml").read_text())["backbone_weights"] == pretrained
