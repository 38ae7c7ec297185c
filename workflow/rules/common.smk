# Helpers shared by the rules: config validation (before any job starts), paths, trainer flags.
import functools
import os
import shlex
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.basedir).parent
sys.path.insert(0, str(REPO))  # the src package, from the repository root
# The jobs' `python -m src...` too, whatever the working directory (--directory .test, cluster jobs).
shell.prefix(f"export PYTHONPATH={shlex.quote(str(REPO))}:$PYTHONPATH; ")

from src.cluster.code_inputs import files_of  # noqa: E402
from src.core.config import DEPTH_HUB_IDS, default_of, from_dict, load_yaml, to_argv  # noqa: E402
from src.data.photo_prep import PhotoPrep  # noqa: E402
from src.core.errors import UserError  # noqa: E402
from src.core.targets import SHORT  # noqa: E402
from src.cluster.weights_check import backbone_problem, depth_problem, offline  # noqa: E402

if not config:
    raise WorkflowError("no config: run with --configfile config/config.yaml (real data) or config/demo.yaml")
CONFIG_FILES = ", ".join(os.path.relpath(f) for f in workflow.overwrite_configfiles or []) or "the config"
try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as exc:
    # jsonschema's first lines say what is wrong and where; the schema dump after them does not help.
    said = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    what = next((ln for ln in said if ln.startswith("ValidationError")), said[-1] if said else "invalid")
    where = next((ln for ln in said if ln.startswith("On instance")), "")
    raise WorkflowError(
        f"config error in {CONFIG_FILES}: {what.removeprefix('ValidationError: ')} {where}".strip()
        + "; the keys are listed in config/README.md"
    ) from None

DATA = config["data_dir"]
RESULTS = config["results_dir"]
N_FOLDS = config["folds"]["n_folds"]
# The default fold CSV is a product of the run, not part of its data folder (which DVC tracks as a
# dependency of the pipeline stage: an output inside it could not be versioned).
FOLD_CSV = config["folds"].get("csv") or f"{RESULTS}/folds/trainfold_{config['folds']['strategy']}.csv"
FOLDS = config["train"].get("folds") or list(range(N_FOLDS))
MODELS = config["models"]
TARGET_NAMES = list(SHORT.values())  # short target names: green, dead, clover, gdm, total
TINY_DEPTH = f"{RESULTS}/depth/tiny-da2"
PSEUDO = config["pseudo"]["enabled"]  # the pseudo-label round (rules/rounds.smk)
REFIT = config["refit"]["use"]  # full-data refits for the test predictions
# ... only for the models whose refit check (per fold, scored on its validation images) beats their fold models
REFIT_EVIDENCE = REFIT and config["refit"]["evidence"]
ROUND2 = f"{RESULTS}/round2"
# The demo's pre-trained tiny backbone (rules/pretrain.smk): made when a model's backbone_weights names it.
PRETRAINED = f"{RESULTS}/pretrained/tiny.safetensors"

# `dvc exp run --temp` and `--queue` run the stage in a copy under .dvc/tmp/exps/ that has DVC's outputs
# (with checkout-time file times) but not Snakemake's records: Snakemake would retrain everything.
if f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}" in os.getcwd() + os.sep:
    raise WorkflowError(
        "dvc exp run --temp/--queue is not supported (its copy of the project lacks Snakemake's records, so "
        "every model would retrain): run `dvc exp run` in the workspace, one experiment at a time"
    )


wildcard_constraints:
    model=r"[A-Za-z0-9_\-]+",
    fold=r"\d+",
    split="train|test",
    # a cache folder: size, then how its photos were prepared (src.data.photo_prep.PhotoPrep.tag)
    res=r"\d+(_pad)?(_nostamp)?(_crop[0-9.]+)?",
    size=r"(small|base)(_nostamp)?(_crop[0-9.]+)?",
    step="round2|refit|refit_check|pretrained",


def _fail(msg):
    raise WorkflowError(f"config error: {msg}")


def model_yaml(model):
    """The model's config, relative to the working directory (which --directory may move)."""
    return os.path.relpath(REPO / "config" / "models" / f"{model}.yaml")


def depth_model(size):
    """The Depth Anything V2 a cache of this size is built with, and its trainers name: the demo's
    tiny local model, the model (hub id or local dir) given for this size or for every size, or
    the size's hub id. Never empty: an empty value would reach the shell as a missing argument."""
    given = config["depth"]["model"]
    if given == "tiny":
        return TINY_DEPTH
    if isinstance(given, dict):
        given = given.get(size, "")
    return given or DEPTH_HUB_IDS[size]


def pipeline_values(model):
    """What the pipeline sets on every model: its overrides, then its paths and depth settings."""
    values = dict(config.get("trainer_overrides") or {})
    size = {**load_yaml(model_yaml(model)), **values}.get("depth_model_size", default_of("depth_model_size"))
    values.update(
        depth_model=depth_model(size),
        depth_cache_dir=f"{RESULTS}/depth",
        depth_backend=config["depth"]["backend"],
        depth_resolution=config["depth"]["resolution"],
        n_folds=N_FOLDS,
    )
    if config["train"].get("image_cache", True):
        values["image_cache_dir"] = f"{RESULTS}/cache/images"
    return values


def made_by_run(weights):
    """Whether backbone_weights names the file the pretrain_backbone rule makes (compared as paths)."""
    return weights not in ("hub", "none") and os.path.abspath(weights) == os.path.abspath(PRETRAINED)


def trainer_values(model):
    """The model's YAML, overridden by the pipeline (the command line does the same at run time)."""
    return {**load_yaml(model_yaml(model)), **pipeline_values(model)}


# --- checks that stop a wrong config before any job starts ---------------------------------------
if N_FOLDS < 2:
    _fail(f"folds.n_folds is {N_FOLDS}; use at least 2")
bad_folds = [k for k in FOLDS if not 0 <= k < N_FOLDS]
if bad_folds:
    _fail(f"train.folds {bad_folds} outside 0..{N_FOLDS - 1}")
if "demo_data" not in config and not Path(DATA, "train.csv").exists():
    _fail(
        f"data_dir {DATA!r} has no train.csv; put the Kaggle data there (see README) or use --configfile config/demo.yaml"
    )
TRAINER = {}
for _m in MODELS:
    if not Path(model_yaml(_m)).exists():
        known = sorted(p.stem for p in (REPO / "config/models").glob("*.yaml"))
        _fail(f"unknown model {_m!r}: no {model_yaml(_m)}; known models: {', '.join(known)}")
    try:  # the overrides alone first, so that their errors name the file they are in
        from_dict(dict(config.get("trainer_overrides") or {}), source=f"{CONFIG_FILES}: trainer_overrides")
        TRAINER[_m] = from_dict(trainer_values(_m), source=model_yaml(_m))
    except UserError as exc:
        _fail(str(exc))


# The weights every model names, where its jobs will look (a local file or folder, or the hub's
# copy when HF_HUB_OFFLINE=1): a missing one stops the run here, not in its first job.
_problems = {}
for _m, _c in TRAINER.items():
    if not made_by_run(_c.backbone_weights):
        _found = [backbone_problem(_c.backbone_size, _c.backbone_weights, offline())]
    elif _c.backbone_size != "tiny":  # a product of the run, as the tiny depth model: not there yet
        _found = [
            f"backbone_weights {PRETRAINED} is the pretrain_backbone rule's tiny backbone; backbone_size is {_c.backbone_size}"
        ]
    else:
        _found = []
    if _c.use_depth and config["depth"]["model"] != "tiny":  # the tiny model is a product of the run
        _found.append(depth_problem(_c.depth_model, offline()))
    for _p in filter(None, _found):
        _problems.setdefault(_p, []).append(_m)
if _problems:
    _fail("\n".join(f"{'model' if len(m) == 1 else 'models'} {', '.join(m)}: {p}" for p, m in _problems.items()))


def uses_depth(model):
    return TRAINER[model].use_depth


def pretrained_weights(model):
    """The pre-trained backbone file as an input of the model's training jobs when its backbone_weights
    names it: Snakemake makes it first, and a remade file retrains the model."""
    return [PRETRAINED] if made_by_run(TRAINER[model].backbone_weights) else []


USES_PRETRAINED = any(pretrained_weights(m) for m in MODELS)


def depth_caches(model, split):
    if not uses_depth(model):
        return []
    cfg = TRAINER[model]
    return [f"{RESULTS}/depth/{cfg.depth_model_size}{PhotoPrep.of(cfg).tag}/{split}.safetensors"]


def image_cache(model):
    """The decoded, resized training halves a model reads (empty with train.image_cache: false)."""
    if not config["train"].get("image_cache", True):
        return []
    cfg = TRAINER[model]
    folder = f"{cfg.image_size}{'_pad' if cfg.use_pad_to_square else ''}{PhotoPrep.of(cfg).tag}"
    stem = f"{RESULTS}/cache/images/{folder}/train"
    return [f"{stem}.npy", f"{stem}.json"]


def prep_flags(folder):
    """The photo-cleaning flags of a cache folder name (its PhotoPrep.tag)."""
    return PhotoPrep.from_tag(folder).flags()


def photos(split):
    """The photos of a split (its CSV's image paths) as inputs of the rules that read them, so a
    replaced photo reruns exactly those. A run that makes its data (demo_data) names them once that
    checkpoint has run; none when the CSV cannot be read (the job that reads it then says why). The
    caches also record the photos' hashes and refuse to serve changed ones, whatever their file times."""
    if "demo_data" in config:
        checkpoints.demo_data.get()  # until it has run: Snakemake comes back here afterwards
    return _photos(split)


@functools.cache
def _photos(split):
    try:
        paths = pd.read_csv(Path(DATA, f"{split}.csv"), usecols=["image_path"])["image_path"]
    except (OSError, ValueError):
        return []
    return [os.path.join(DATA, p) for p in dict.fromkeys(paths.astype(str))]


def code_of(module):
    """The project's source files ``python -m module`` runs, as a rule's inputs: a change in one reruns
    the jobs that run it (Snakemake's code trigger sees only run: blocks), relative to the working
    directory as every path here."""
    return [os.path.relpath(REPO / f) for f in files_of(module)]


def fold_done(model, fold):
    return f"{RESULTS}/models/{model}/fold{fold}/metrics.json"


def launcher(gpus):
    """torchrun for multi-GPU jobs (--standalone: a free rendezvous port per job), else python."""
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node={gpus}"
    return "python"


def trainer_flags(model):
    """The pipeline's trainer flags as a list, so the shell command quotes each ({params.flags:q})."""
    return to_argv(pipeline_values(model))


def pseudo_flags(model, labels):
    """Round 2's trainer flags: the pipeline's, plus the pseudo-labelled images and their weight."""
    return trainer_flags(model) + ["--pseudo-labels", labels, "--pseudo-weight", str(config["pseudo"]["weight"])]


def final_members():
    """The test predictions the final rule blends, and those it scores the steps without."""
    pred = [f"{RESULTS}/{'refit' if REFIT else 'models'}/{m}/test_pred.parquet" for m in MODELS]
    pred += [f"{RESULTS}/models/{m}/test_pred.parquet" for m in MODELS]  # the "without refit" scores
    if PSEUDO:
        pred += [f"{ROUND2}/{'refit' if REFIT else 'models'}/{m}/test_pred.parquet" for m in MODELS]
        pred += [f"{ROUND2}/models/{m}/test_pred.parquet" for m in MODELS] + [f"{ROUND2}/blend.json"]
    return sorted(set(pred))


def refit_evidence_files():
    """What src.final decides refits on (refit.evidence): each model's refit-check OOF and its fold models' OOF."""
    if not REFIT_EVIDENCE:
        return []
    return [f"{RESULTS}/{kind}/{m}/oof.parquet" for m in MODELS for kind in ("refit_check", "models")]


def blend_oof():
    """The OOF predictions the submission blends: round 1's ensemble, or its blend with round 2."""
    return f"{RESULTS}/round2/blend/oof.parquet" if PSEUDO else f"{RESULTS}/ensemble/oof.parquet"


def all_targets():
    out = [f"{RESULTS}/models/{m}/oof_metrics.json" for m in MODELS]
    out += [f"{RESULTS}/ensemble/submission.csv", f"{RESULTS}/report/model_table.md", f"{RESULTS}/metrics/models.json"]
    out += [f"{RESULTS}/submission.csv", f"{RESULTS}/kaggle"]
    out += [] if PSEUDO else [f"{RESULTS}/round2/OFF.txt"]
    out += [] if REFIT else [f"{RESULTS}/refit/OFF.txt"]
    out += [] if REFIT_EVIDENCE else [f"{RESULTS}/refit_check/OFF.txt"]
    out += [] if USES_PRETRAINED else [f"{RESULTS}/pretrained/OFF.txt"]  # a DVC output either way
    return out
