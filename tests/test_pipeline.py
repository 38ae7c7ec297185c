"""The Snakemake pipeline: lint, SLURM dry run, config errors before any job, and a real run
versioned by DVC (repro -> push -> pull into a fresh clone -> nothing left to do)."""

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hub_cache import placeholders

from tests.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)


# config/config.yaml names hub weights: offline, the run checks they are in the local cache.
HUB = placeholders(Path(tempfile.mkdtemp(prefix="hub-placeholders-")))


def _env():
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "DVC_NO_ANALYTICS": "1",
            "HF_HUB_CACHE": str(HUB)}  # fmt: skip


def _run(args, cwd, check=True):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env())
    if check:
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _snake(*args, cwd, check=True):
    return _run([sys.executable, "-m", "snakemake", *args], cwd, check)


@pytest.fixture
def repo(tmp_path):
    """The project's files (what git would ship), without data or results."""
    return copy_project(tmp_path / "repo")


def test_lint_passes(repo):
    out = _snake("--lint", "--configfile", "config/test.yaml", cwd=repo)
    assert "good condition" in out.stdout + out.stderr
    fmt = _run([sys.executable, "-m", "snakefmt", "--check", "workflow/"], repo, check=False)
    assert fmt.returncode == 0, fmt.stderr[-2000:]  # snakefmt-clean, at the line length of pyproject.toml


def test_slurm_profile_dry_run_asks_for_gpus_and_torchrun(repo):
    profile = yaml.safe_load((repo / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert "tasks" not in str(profile["set-resources"]["train"]) and "gres" not in str(profile)
    assert "cpus_per_task" not in str(profile)  # CPUs follow each rule's threads, never a fixed count
    assert "mem_mb" in profile["set-resources"]["train"] and "runtime" in profile["set-resources"]["train"]
    # a preempted job goes back into the queue, a failed or timed-out one is submitted again: both resume
    assert profile["slurm-requeue"] is True and profile["retries"] >= 1
    partitions = yaml.safe_load((repo / profile["slurm-partition-config"]).read_text())["partitions"]
    assert sorted(p["max_gpu"] > 0 for p in partitions.values() if "max_gpu" in p) == [True]  # CPU jobs avoid it
    _real_data(repo)
    out = _snake("--workflow-profile", "profiles/slurm", "--configfile", "config/config.yaml", "--jobs", "4", "-n", "-p",
                 cwd=repo)  # fmt: skip
    text = out.stdout + out.stderr
    assert "torchrun --standalone --nproc_per_node=2 -m src.dinov3_train" in text
    trainer = [ln for ln in text.splitlines() if "-m src.dinov3_train" in ln]
    assert trainer and all(" --resume " in ln for ln in trainer)  # folds, refit checks: every trainer job resumes
    assert "gpu=2" in text and "rule train" in text
    for m in ("M1", "M2", "M3", "M4", "M5"):
        assert f"results/models/{m}/fold4/metrics.json" in text
    # the README's one-target command, verbatim: only M1's jobs
    line = next(ln for ln in (REPO / "README.md").read_text().splitlines() if ln.endswith("# one target"))
    argv = shlex.split(line.split("#")[0])
    assert argv[0] == "snakemake"
    one = _snake(*argv[1:], "-n", cwd=repo)
    text = one.stdout + one.stderr
    assert "results/models/M1/fold4/metrics.json" in text and "models/M2/" not in text and "rule blend" not in text


def _real_data(repo):
    _run([sys.executable, "-m", "src.synth", "--out", "data/raw", "--n-train", "24", "--n-test", "4",
          "--width", "128", "--height", "64"], repo)  # fmt: skip


@pytest.mark.parametrize("visible, launcher, note", [
    ("", " python -m src.dinov3_train --cpus", "runs on the CPU"),
    ("0", " python -m src.dinov3_train --cpus", "runs on 1"),
    ("0,1,2", "torchrun --standalone --nproc_per_node=2 -m src.dinov3_train", None),
])  # fmt: skip
def test_local_runs_give_gpu_jobs_only_the_visible_gpus(repo, monkeypatch, visible, launcher, note):
    """config.yaml asks 2 GPUs per fold job; locally a job gets at most what CUDA_VISIBLE_DEVICES shows."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    _real_data(repo)
    out = _snake("--configfile", "config/config.yaml", "-n", "-p", "results/models/M1/fold0/metrics.json", cwd=repo)
    text = out.stdout + out.stderr
    assert launcher in text, text[-3000:]
    assert (note in text) if note else ("note: train.gpus" not in text)


def test_multi_scale_tta_and_photo_cleaning_reach_the_jobs(repo):
    """predict.tta_scales becomes --tta-scales; a model's photo cleaning names its caches and flags."""
    cfg = yaml.safe_load((repo / "config/test.yaml").read_text())
    cfg["predict"]["tta_scales"] = [0.875, 1, 1.125]
    cfg["trainer_overrides"]["clean_date_stamp"] = True
    (repo / "config/scaled.yaml").write_text(yaml.safe_dump(cfg))
    out = _snake("--configfile", "config/scaled.yaml", "-n", "-p", cwd=repo)
    text = out.stdout + out.stderr
    assert "--tta-scales 0.875 1 1.125 --depth-cache-dir" in text
    assert "--clean-date-stamp --out results/test/cache/images/32_nostamp/train.npy" in text
    assert "--clean-date-stamp --out results/test/depth/small_nostamp/train.safetensors" in text
    assert "--clean-date-stamp" in text.split("python -m src.dinov3_train", 1)[1].split("\n", 1)[0]


def test_the_rounds_after_round_1_are_jobs_with_their_own_inputs(repo):
    """pseudo.enabled: fold k of round 2 trains on fold k's pseudo-labels (made from the round-1 fold
    models' own test predictions); refit.use: one refit per model, from its CV folds' histories."""
    cfg = yaml.safe_load((repo / "config/test.yaml").read_text())
    cfg.update(pseudo={"enabled": True, "weight": 0.25}, refit={"use": True})
    (repo / "config/rounds.yaml").write_text(yaml.safe_dump(cfg))
    out = _snake("--configfile", "config/rounds.yaml", "-n", "-p", cwd=repo)
    text = out.stdout + out.stderr
    jobs = text.split("\n\n")
    round2 = [j for j in jobs if "rule train_round2:" in j and "wildcards: model=baseline, fold=2" in j]
    assert len(round2) == 1
    assert "results/test/round2/pseudo/fold2.csv" in round2[0].split("input:", 1)[1].split("output:", 1)[0]
    assert "--pseudo-labels results/test/round2/pseudo/fold2.csv --pseudo-weight 0.25" in round2[0]
    assert "--output-dir results/test/round2/models/baseline" in round2[0]
    assert "python -m src.predict --model-dir results/test/models/baseline" in text and "--per-fold" in text
    refit = [j for j in jobs if "rule refit:" in j and "model=planthydra" in j]
    assert len(refit) == 1 and "--refit-from results/test/models/planthydra" in refit[0]
    checks = [j for j in jobs if "rule refit_check:" in j]
    assert checks and all("--resume" in j for j in [*refit, *checks])  # a requeued refit goes on from its last epoch
    assert "results/test/models/planthydra/fold2/metrics.json" in refit[0]
    final = next(j for j in jobs if "rule final:" in j)
    assert "--round2 --refit" in final and "results/test/refit/baseline/test_pred.parquet" in final
    assert "results/test/round2/OFF.txt" not in text
    plain = _snake("--configfile", "config/test.yaml", "-n", cwd=repo)
    assert "results/test/round2/OFF.txt" in plain.stdout and "train_round2" not in plain.stdout


TRAINER_RULES = ("train", "train_round2", "refit", "refit_check", "refit_round2")


def test_the_demo_trains_on_the_backbone_its_run_pretrains_and_the_test_config_does_not(repo):
    """config/demo.yaml names results/demo/pretrained/tiny.safetensors, which no check refuses before
    it exists: the pretrain_backbone job makes it, and every trainer job has it as an input (made
    first, retrained when it changes) and loads it. config/test.yaml (none) pre-trains nothing."""
    out = _snake("--configfile", "config/demo.yaml", "-n", "-p", cwd=repo)
    jobs = (out.stdout + out.stderr).split("\n\n")
    weights = "results/demo/pretrained/tiny.safetensors"
    pretrain = [j for j in jobs if "rule pretrain_backbone:" in j]
    assert len(pretrain) == 1, jobs[-3:]
    assert f"output: {weights}" in pretrain[0] and "data/demo/train.csv" in pretrain[0]
    assert "--photos 1200 --seed 1000 --epochs 60" in pretrain[0] and "--exclude data/demo" in pretrain[0]
    assert '--photo-root "$photos"' in pretrain[0]  # a temporary folder: no photos in data/ or results/
    for rule in TRAINER_RULES:
        found = [j for j in jobs if f"rule {rule}:" in j]
        assert found, rule
        for job in found:
            assert weights in job.split("input:", 1)[1].split("output:", 1)[0], job
            assert f" --backbone-weights {weights} " in job, job
    assert "pretrained/OFF.txt" not in out.stdout + out.stderr
    plain = _snake("--configfile", "config/test.yaml", "-n", "-p", cwd=repo)
    text = plain.stdout + plain.stderr
    assert "rule pretrain_backbone:" not in text and "src.pretrain_backbone" not in text
    assert "results/test/pretrained/OFF.txt" in text  # the DVC output exists either way
    assert " --backbone-weights none " in text


def test_the_pretrain_rule_writes_weights_the_trainer_loads_and_leaves_no_photos(repo):
    """The rule's command, shrunk: a timm-format tiny backbone, its photos gone with their temporary folder."""
    cfg = yaml.safe_load((repo / "config/test.yaml").read_text())
    weights = "results/test/pretrained/tiny.safetensors"
    cfg["trainer_overrides"]["backbone_weights"] = weights
    cfg["pretrain"] = {"photos": 4, "epochs": 1, "seed": 7, "image_size": 32}
    (repo / "config/pre.yaml").write_text(yaml.safe_dump(cfg))
    _snake("--configfile", "config/pre.yaml", "--cores", "1", weights, cwd=repo)
    from src.models.backbone import create_backbone

    create_backbone("tiny", weights=str(repo / weights))  # strict: every key of the architecture
    log = (repo / "results/test/logs/pretrain_backbone.log").read_text()
    assert "wrote results/test/pretrained/tiny.safetensors" in log, log[-2000:]
    assert (repo / "results/test/benchmarks/pretrain_backbone.tsv").exists()
    assert not list(repo.rglob("synth_seed7_*")) and len(list(repo.rglob("*.jpg"))) == 36 + 6  # the test data's only
    dry = _snake("--configfile", "config/pre.yaml", "-n", weights, cwd=repo)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    cfg["pretrain"]["epochs"] = 2  # a setting is a recorded param: the weights are remade
    (repo / "config/pre.yaml").write_text(yaml.safe_dump(cfg))
    dry = _snake("--configfile", "config/pre.yaml", "-n", weights, cwd=repo)
    assert "rule pretrain_backbone:" in dry.stdout + dry.stderr


def test_a_slurm_run_stops_before_submitting_a_job_no_node_can_hold(repo, tmp_path):
    """A real (not dry) run through profiles/slurm, with sinfo reporting one 2-CPU node without GPUs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'node1 2 23000 (null)'\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/SUBMITTED\nexit 1\n")
    for status in ("squeue", "sacct"):  # the SLURM plugin refuses to load on a machine with neither
        (bin_dir / status).write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    _real_data(repo)
    env = {**_env(), "PATH": f"{bin_dir}{os.pathsep}{_env()['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm", "--configfile",
                          "config/config.yaml"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "rule train asks for 8 CPUs, 64000 MB and 2 GPUs per job, but the largest SLURM node has 2 CPUs" in text, text[-3000:]
    assert "--set-resources train:mem_mb=23000" in text
    assert not (tmp_path / "SUBMITTED").exists()


@pytest.mark.parametrize("edit, words", [
    ({"models": ["baseline", "no_such_model"]}, "unknown model 'no_such_model'"),
    ({"data_dir": "nowhere", "demo_data": None}, "has no train.csv"),
    ({"folds": {"n_folds": 1}}, "n_folds is 1"),
    ({"trainer_overrides": {"image_size": 30}}, "multiple of 16"),
    ({"trainer_overrides": {"use_depth": "no"}}, "config/bad.yaml: trainer_overrides: use_depth = 'no' (str) must be true or false"),
    ({"no_such_key": 1}, "config error in config/bad.yaml: Additional properties are not allowed ('no_such_key' was unexpected)"),
    ({"trainer_overrides": {"batch_size": "eight"}}, "batch_size = 'eight' (str) must be an integer"),
    ({"trainer_overrides": {"backbone_size": "small", "backbone_weights": "results/test/pretrained/tiny.safetensors"}},
     "is the pretrain_backbone rule's tiny backbone; backbone_size is small"),
    ({"trainer_overrides": {"backbone_weights": "results/test/elsewhere.safetensors"}}, "file not found"),
    ({"pretrain": {"image_size": 40}}, "40 is not a multiple of 16 On instance['pretrain']['image_size']"),
])  # fmt: skip
def test_wrong_config_stops_before_any_job(repo, edit, words):
    cfg = yaml.safe_load((repo / "config/test.yaml").read_text())
    for k, v in edit.items():
        if v is None:
            cfg.pop(k, None)
        elif isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    (repo / "config/bad.yaml").write_text(yaml.safe_dump(cfg))
    out = _snake("--configfile", "config/bad.yaml", cwd=repo, check=False)
    assert out.returncode != 0
    assert words in out.stdout + out.stderr, (out.stdout + out.stderr)[-2000:]
    assert len((out.stdout + out.stderr).splitlines()) < 15  # what is wrong, not a schema dump
    assert not (repo / "results").exists() and not (repo / "data").exists()


def test_paths_with_spaces_quotes_and_dollars_are_one_argument_each(repo):
    """Every value a rule interpolates is quoted: such paths work, and nothing in them runs."""
    cfg = yaml.safe_load((repo / "config/test.yaml").read_text())
    data, results = "data/my data's $(touch INJECTED1)", "results/r;touch INJECTED2 $HOME"
    cfg.update(data_dir=data, results_dir=results)
    (repo / "config/odd.yaml").write_text(yaml.safe_dump(cfg))
    _snake("--configfile", "config/odd.yaml", "--cores", "1", f"{results}/folds/trainfold_group_location.csv", cwd=repo)
    folds = pd.read_csv(repo / results / "folds/trainfold_group_location.csv")
    assert len(folds) == cfg["demo_data"]["n_train"] and folds["fold"].nunique() == cfg["folds"]["n_folds"]
    assert (repo / results / "logs/folds.log").exists()
    assert not list(repo.rglob("INJECTED*"))


def test_the_catalog_test_config_runs_from_another_working_directory(repo):
    """`snakemake --directory .test`: model configs and the jobs' `python -m src...` still resolve."""
    out = _snake("--directory", ".test", "--configfile", ".test/config/config.yaml", "--cores", "1",
                 "results/test/folds/trainfold_group_location.csv", cwd=repo)  # fmt: skip
    assert len(pd.read_csv(repo / ".test/results/test/folds/trainfold_group_location.csv")) == 36, out.stderr[-2000:]
    dry = _snake("--directory", ".test", "--configfile", ".test/config/config.yaml", "-n", "-p", cwd=repo)
    assert "--config ../config/models/baseline.yaml" in dry.stdout + dry.stderr
    assert not (repo / "results").exists() and not (repo / "data").exists()


def _dvc(*args, cwd):
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _git(*args, cwd):
    return _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd)


@pytest.mark.long
def test_pipeline_runs_and_round_trips_through_dvc(repo, tmp_path):
    # The user's data: the demo generator stands in for the Kaggle download.
    _run([sys.executable, "-m", "src.synth", "--out", "data/raw", "--n-train", "36", "--n-test", "6", "--width", "256",
          "--height", "128"], repo)  # fmt: skip
    cfg = yaml.safe_load((repo / "config/test.yaml").read_text())
    cfg.pop("demo_data")
    cfg.update(data_dir="data/raw", results_dir="results")
    cfg["folds"]["csv"] = "data/trainfold_group_location.csv"
    (repo / "config/roundtrip.yaml").write_text(yaml.safe_dump(cfg))
    params = dict(configfile="config/roundtrip.yaml", data_dir="data/raw", results_dir="results",
                  fold_csv=cfg["folds"]["csv"])  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    _git("init", "-q", cwd=repo)
    assert (repo / ".dvc/config").exists()  # the project is a DVC repository as cloned: no `dvc init` here
    _dvc("remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=repo)
    _dvc("add", "-q", "data/raw", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "project + data", cwd=repo)

    _dvc("repro", cwd=repo)
    res = repo / "results"
    sub = pd.read_csv(res / "ensemble/submission.csv")
    sample = pd.read_csv(repo / "data/raw/sample_submission.csv")
    assert sub["sample_id"].tolist() == sample["sample_id"].tolist() and sub["target"].ge(0).all()
    for m in cfg["models"]:
        assert (res / f"models/{m}/oof_metrics.json").exists()
        assert len(list((res / f"models/{m}").glob("fold*/best.safetensors"))) == cfg["folds"]["n_folds"]
    for f in ("model_table.md", "model_table.html", "pred_vs_true.png", "r2_by_state.png", "learning_curves.png"):
        assert (res / "report" / f).stat().st_size > 0
    _snake("--configfile", "config/roundtrip.yaml", "--report", str(tmp_path / "report.html"), cwd=repo)
    page = (tmp_path / "report.html").read_text()
    desc = page[page.index('id="workflow-desc"'):][:3000]  # the landing page describes this run
    assert "Pasture biomass from quadrat photos" in desc and ", ".join(cfg["models"]) in desc
    assert "model_table.html" in page and "models ranked by OOF weighted R" in page  # the table's own page
    lock = (repo / "dvc.lock").read_text()
    assert list((res / "depth").glob("small*/train.safetensors")) and "path: results/depth" in lock  # kept, versioned
    assert "path: results/cache" in lock
    assert "Nothing to be done" in _snake("-n", "--configfile", "config/roundtrip.yaml", cwd=repo).stdout + \
        _snake("-n", "--configfile", "config/roundtrip.yaml", cwd=repo).stderr
    # A model added later reuses the caches of the trained ones, which stay done (temp caches, rebuilt
    # for it, made every trained model look stale).
    (repo / "config/more.yaml").write_text(yaml.safe_dump({**cfg, "models": [*cfg["models"], "no_ema"]}))
    more = _snake("-n", "-p", "--configfile", "config/more.yaml", cwd=repo)
    more = more.stdout + more.stderr
    assert "output: results/models/no_ema/fold0/metrics.json" in more and "src.image_cache" not in more
    assert not any(f"output: results/models/{m}/fold" in more for m in cfg["models"]), more[-3000:]

    # A photo is an input of what reads it: one test photo mirrored in place reruns the test-side
    # jobs (its depth cache, the predictions and what follows), no training and no training cache.
    test_photo = repo / "data/raw" / pd.read_csv(repo / "data/raw/test.csv")["image_path"].iloc[0]
    original, times = test_photo.read_bytes(), test_photo.stat()
    from PIL import Image

    Image.open(test_photo).transpose(Image.FLIP_LEFT_RIGHT).save(test_photo, quality=90)
    planned = _snake("-n", "--configfile", "config/roundtrip.yaml", cwd=repo)
    planned = planned.stdout + planned.stderr
    assert "rule predict:" in planned and "wildcards: size=small, split=test" in planned, planned[-3000:]
    assert not any(f"rule {r}:" in planned for r in ("train", "image_cache", "folds")), planned[-3000:]
    assert "split=train" not in planned
    test_photo.write_bytes(original)
    os.utime(test_photo, ns=(times.st_atime_ns, times.st_mtime_ns))

    (repo / "src/__pycache__").mkdir(exist_ok=True)
    (repo / "src/__pycache__/stray.cpython-311.pyc").write_bytes(b"\0")  # .dvcignore: not a change of src/
    assert "up to date" in _dvc("status", cwd=repo).stdout
    _dvc("push", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "results", cwd=repo)
    tracked = _run(["git", "ls-files", "results"], repo).stdout.split()
    # the DVC metrics and plot data live in git; the rest in DVC
    assert tracked[0] == "results/metrics/curves/baseline.csv" and "results/metrics/models.json" in tracked
    assert all(t.startswith("results/metrics/") for t in tracked), tracked
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _dvc("pull", "-q", cwd=clone)
    assert (clone / "results/ensemble/submission.csv").read_text() == (res / "ensemble/submission.csv").read_text()
    assert "up to date" in _dvc("status", cwd=clone).stdout
    shown = json.loads(_dvc("metrics", "show", "--json", cwd=clone).stdout)
    committed = json.loads((res / "metrics/models.json").read_text())
    assert shown[""]["data"]["results/metrics/models.json"]["data"] == committed, shown
    _snake("--touch", "--configfile", "config/roundtrip.yaml", cwd=clone)
    dry = _snake("-n", "--configfile", "config/roundtrip.yaml", cwd=clone)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # A changed source file reruns the jobs that run it: the trainer's, not the folds' or the caches'.
    optim = clone / "src/training/optim.py"
    optim.write_text(optim.read_text() + "\n")
    dry = _snake("-n", "--configfile", "config/roundtrip.yaml", cwd=clone)
    planned = dry.stdout + dry.stderr
    assert "rule train:" in planned and "rule predict:" in planned, planned[-2000:]
    assert not any(f"rule {r}:" in planned for r in ("folds", "image_cache", "depth_cache", "demo_data")), planned[-3000:]

    # A result matches its inputs: new folds retrain every fold, although the train jobs pass --resume
    # and each fold's saved state is there.
    old = pd.read_csv(clone / cfg["folds"]["csv"]).set_index("image_id")["fold"]
    cfg["folds"]["seed"] = 7
    (clone / "config/roundtrip.yaml").write_text(yaml.safe_dump(cfg))
    _snake("--configfile", "config/roundtrip.yaml", cwd=clone)
    new = pd.read_csv(clone / cfg["folds"]["csv"]).set_index("image_id")["fold"]
    assert not new.equals(old)
    for m in cfg["models"]:
        oof = pd.read_parquet(clone / f"results/models/{m}/oof.parquet").set_index("image_id")
        assert oof["fold"].equals(new.loc[oof.index]), m
        log = (clone / f"results/logs/train/{m}_fold0.log").read_text()
        assert "inputs changed since the saved run (fold assignment): starting over" in log, log[-2000:]


def test_params_yaml_matches_its_config_and_every_model_is_a_dvc_param():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = yaml.safe_load((REPO / params["configfile"]).read_text())
    assert params["data_dir"] == cfg["data_dir"] and params["results_dir"] == cfg["results_dir"]
    fold_csv = (cfg.get("folds") or {}).get("csv") or f"{cfg['results_dir']}/folds/trainfold_{cfg['folds']['strategy']}.csv"
    assert params["fold_csv"] == fold_csv
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["pipeline"]
    declared = {next(iter(p)) for p in stage["params"] if isinstance(p, dict)}
    assert {f"config/models/{p.name}" for p in (REPO / "config/models").glob("*.yaml")} <= declared
    real = yaml.safe_load((REPO / "config/config.yaml").read_text())  # the real values, in params.yaml's comments
    text = (REPO / "params.yaml").read_text()
    for key, value in (("data_dir", real["data_dir"]), ("results_dir", real["results_dir"]),
                       ("fold_csv", real["folds"]["csv"])):
        assert f"#   {key}: {value}" in text
