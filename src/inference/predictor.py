"""Prediction with trained fold models: load ``<model_dir>/fold<k>/best.safetensors``, predict
grams per photo (optional flip TTA, mean over folds), and build the Kaggle / per-photo tables.

Library only (no argparse); ``python -m src.predict`` is the command line. Images go through the
trainer's own validation path (``read_rgb`` + ``HalfTransform(train=False)`` via
``BiomassDataset``), so a fold model here reproduces its ``oof.parquet`` predictions.

Predictions obey the label relations: each model's outputs do (``targets.complete``), and means
over views and folds keep them; ``check_predictions`` guards that.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

from ..core.config import RUNTIME_ONLY, TrainConfig
from ..core.errors import UserError
from ..core.progress import progress
from ..core.targets import G_PER_QUADRAT_TO_KG_PER_HA, TARGETS
from ..data import schema
from ..data.dataset import BiomassDataset
from ..data.depth import depth_key, load_for_config, photo_depth
from ..data.photo_prep import PhotoPrep
from ..data.photos import read_rgb
from ..data.transforms import HalfTransform
from ..models.biomass import EXPORTS, BiomassModel, export_frame
from ..training.checkpoint import load_config, load_extras, load_weights
from ..training.engine import autocast

CHECKPOINT = "best.safetensors"
_IDX = {t: i for i, t in enumerate(TARGETS)}

FoldModel = tuple[int, TrainConfig, BiomassModel]


# --- models --------------------------------------------------------------------------------------


def _train_hint(model_dir: Path) -> str:
    return f"train them with: python -m src.dinov3_train --data-dir DATA --output-dir {model_dir}"


def _fold_number(fold_dir: Path) -> int | None:
    m = re.fullmatch(r"fold(\d+)", fold_dir.name)
    return int(m.group(1)) if m else None


def load_fold_models(model_dir: str | Path, device: torch.device | str = "cpu", allow_mixed: bool = False) -> list[FoldModel]:
    """Every ``fold<k>/best.safetensors`` under ``model_dir`` (or a refit's ``full/``, as fold -1)
    with its ``config.yaml``, in fold order, in eval mode on ``device``. The backbone is built without hub access; all weights
    (and the ``target_scale`` buffer) come from the checkpoint, loaded strictly. Fold models
    trained with different settings or on different data are refused (``allow_mixed``: averaged,
    with a warning); fewer folds than the run's ``n_folds`` get one warning."""
    model_dir = Path(model_dir)
    device = torch.device(device)
    if not model_dir.is_dir():
        raise UserError(f"--model-dir {model_dir}: directory not found; {_train_hint(model_dir)}")
    found = sorted(
        (k, p.parent) for p in model_dir.glob(f"fold*/{CHECKPOINT}") if (k := _fold_number(p.parent)) is not None
    )
    if not found and (model_dir / "full" / CHECKPOINT).is_file():
        found = [(-1, model_dir / "full")]  # a full-data refit (--refit-from): one model, fold -1
    if not found:
        raise UserError(f"--model-dir {model_dir}: no fold*/{CHECKPOINT} checkpoints; {_train_hint(model_dir)}")
    models, data = [], []
    for k, fold_dir in found:
        ckpt = fold_dir / CHECKPOINT
        if not (fold_dir / "config.yaml").is_file():
            raise UserError(
                f"{fold_dir / 'config.yaml'}: not found beside {ckpt}; retrain fold {k} or copy its config.yaml back"
            )
        try:
            cfg = load_config(fold_dir)
        except (TypeError, ValueError, AttributeError, yaml.YAMLError) as exc:  # unknown keys are TypeErrors
            raise UserError(
                f"{fold_dir / 'config.yaml'}: not a trainer config ({str(exc).splitlines()[0][:200]}); retrain fold {k}"
            )
        model = BiomassModel(cfg, extras=load_extras(fold_dir), weights="none")
        try:
            load_weights(model, ckpt)
        except Exception as exc:  # safetensors raises its own error types on corrupt files
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise UserError(
                f"{ckpt}: cannot load into the model described by its config.yaml ({first}); retrain fold {k}"
            )
        models.append((k, cfg, model.to(device).eval()))
        data.append((k, trained_on(fold_dir)))
    _check_alike(model_dir, models, allow_mixed)
    _check_same_data(model_dir, data, allow_mixed)
    _warn_missing_folds(model_dir, models)
    return models


def _check_alike(model_dir: Path, models: list[FoldModel], allow_mixed: bool) -> None:
    """One model's folds must be one model: same settings but where it ran."""
    (k0, cfg0, _), learnt = models[0], lambda c: {n: v for n, v in c.to_dict().items() if n not in RUNTIME_ONLY}  # noqa: E731
    for k, cfg, _ in models[1:]:
        diff = sorted(n for n, v in learnt(cfg).items() if learnt(cfg0).get(n) != v)
        if diff:
            shown = ", ".join(f"{n} {getattr(cfg0, n)!r} vs {getattr(cfg, n)!r}" for n in diff[:4])
            msg = f"--model-dir {model_dir}: fold{k0} and fold{k} were trained with different settings ({shown})"
            if not allow_mixed:
                raise UserError(f"{msg}; retrain the odd folds alike, or pass --allow-mixed-folds to average them anyway")
            print(f"warning: {msg}; averaging them anyway (--allow-mixed-folds)", file=sys.stderr)


def trained_on(fold_dir: Path) -> dict[str, str] | None:
    """The fingerprint of the data a fold learnt from (``src.data.fingerprint.fold_inputs``, kept in
    its ``last_state.pt``), less its pseudo-labels, which are per fold by design. None where no
    fingerprint is recorded (a Kaggle package ships no last_state.pt) or the file cannot be read (a
    resume's business, not prediction's). mmap: a running fold's state holds weights and optimiser."""
    path = Path(fold_dir) / "last_state.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises several types for a cut, empty or foreign file
        return None
    inputs = state.get("inputs") if isinstance(state, dict) else None
    if not isinstance(inputs, dict):
        return None
    return {str(n): v for n, v in inputs.items() if not str(n).startswith("pseudo")}


def _check_same_data(model_dir: Path, data: list[tuple[int, dict | None]], allow_mixed: bool) -> None:
    """One model's folds must have learnt from one data set: same training rows and targets, fold
    assignment, photo files and depth features (folds without a recorded fingerprint are not judged)."""
    known = [(k, d) for k, d in data if d is not None]
    if len(known) < 2:
        return
    (k0, d0) = known[0]
    for k, d in known[1:]:
        diff = sorted(n for n in {*d0, *d} if d0.get(n) != d.get(n))
        if diff:
            msg = f"--model-dir {model_dir}: fold{k0} and fold{k} were trained on different data ({', '.join(diff)})"
            if not allow_mixed:
                raise UserError(f"{msg}; retrain the odd folds on the data you mean (the trainer's --resume retrains "
                                "each fold whose data changed), or pass --allow-mixed-folds to average them anyway")
            print(f"warning: {msg}; averaging them anyway (--allow-mixed-folds)", file=sys.stderr)
            return


def _warn_missing_folds(model_dir: Path, models: list[FoldModel]) -> None:
    """Once per model: fewer fold models than the run's --n-folds (a refit, fold -1, is whole)."""
    have = [k for k, _, _ in models if k >= 0]
    n_folds = max((cfg.n_folds for k, cfg, _ in models if k >= 0), default=0)
    missing = [k for k in range(n_folds) if k not in have]
    if have and missing:
        print(f"warning: --model-dir {model_dir}: predicting with {len(have)} of {n_folds} folds "
              f"({', '.join(f'fold{k}' for k in missing)} missing); for the mean over every fold train them with "
              f"the same settings and --folds {' '.join(map(str, missing))}", file=sys.stderr)  # fmt: skip


# --- images --------------------------------------------------------------------------------------


def open_photos(paths: Sequence[str | Path]) -> list[Path]:
    """The user's own photos (--images), resolved: each must exist and open as an image; the first
    that does not is a UserError. (Not ``src.data.photos.check_photos``, which checks a data folder.)"""
    if not paths:
        raise UserError("--images: give at least one photo")
    out = []
    for p in map(Path, paths):
        read_rgb(p)  # a handful of the user's photos: decode each fully, so a damaged one is named here
        out.append(p.resolve())
    return out


def _as_table(images, data_dir) -> tuple[pd.DataFrame, Path]:
    if isinstance(images, pd.DataFrame):
        if "image_path" not in images.columns:
            raise ValueError("images DataFrame needs an image_path column")
        if data_dir is None:
            raise ValueError("a DataFrame of image paths needs data_dir")
        return images[["image_path"]].reset_index(drop=True), Path(data_dir)
    # Absolute paths: Path(".") / "/abs/x.jpg" is "/abs/x.jpg" inside BiomassDataset.
    return pd.DataFrame({"image_path": [str(Path(p).resolve()) for p in images]}), Path(".")


def _views(batch: dict, tta: bool) -> list[dict]:
    """Identity, then both halves (and their depth feature grids) flipped horizontally, then vertically."""
    if not tta:
        return [batch]
    return [batch, *({k: v.flip(dim) for k, v in batch.items()} for dim in (-1, -2))]


def check_predictions(pred: np.ndarray, atol: float = 1e-4) -> None:
    """Finite, non-negative, and obeying both mass relations; else RuntimeError (a model bug)."""
    if pred.ndim != 2 or pred.shape[1] != len(TARGETS):
        raise RuntimeError(f"predictions have shape {pred.shape}, expected (N, {len(TARGETS)})")
    if not np.isfinite(pred).all():
        raise RuntimeError("non-finite predictions; the checkpoint is probably broken (NaN weights), retrain it")
    if (pred < 0).any():
        raise RuntimeError(f"negative predictions (min {pred.min():.4g} g)")
    g, d, c, gdm, tot = (pred[:, _IDX[t]] for t in TARGETS)
    tol = atol * np.maximum(1.0, np.abs(tot))
    if (np.abs(gdm - (g + c)) > tol).any() or (np.abs(tot - (g + d + c)) > tol).any():
        raise RuntimeError("predictions break GDM = Green + Clover or Total = Green + Dead + Clover")


DepthFor = Callable[[TrainConfig], "np.ndarray | None"]


@torch.no_grad()
def predict_images(
    models: Sequence[FoldModel],
    images,
    data_dir: str | Path | None = None,
    *,
    tta: bool = True,
    tta_scales: Sequence[float] = (1.0,),
    batch_size: int = 8,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    desc: str = "predict",
    depth_for: DepthFor | None = None,
    exports: dict | None = None,
) -> np.ndarray:
    """Grams (N, 5), columns in ``targets.TARGETS`` order, one row per image.

    ``images``: photo paths, or a one-row-per-image DataFrame with ``image_path`` relative to
    ``data_dir``. With ``tta`` each fold model's prediction is the mean over identity, horizontal
    and vertical flips (of both halves, and of their depth features); the result is the mean over
    the fold models. ``tta_scales``: also the mean over these multiples of each model's image size
    (rounded to a multiple of 16; the ViTs take any). ``depth_for(cfg)`` gives the half depth maps (N, 2, R, R) for models trained
    with depth. ``exports``, if given, receives the mean auxiliary outputs (height, NDVI, std)."""
    if not models:
        raise ValueError("no models to predict with")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be >= 1")
    if not tta_scales or any(not s > 0 for s in tta_scales):
        raise UserError(f"--tta-scales {' '.join(map(str, tta_scales))}: give one or more sizes > 0, e.g. 0.875 1 1.125")
    table, root = _as_table(images, data_dir)
    device = torch.device(device) if device is not None else next(models[0][2].parameters()).device
    total = np.zeros((len(table), len(TARGETS)), dtype=np.float64)
    extra: dict[str, np.ndarray] = {}
    contributors: dict[str, set[int]] = {}
    if len(table) == 0:
        return total
    # Models sharing a preprocessing (and depth source) share one pass over the images.
    groups: dict[tuple, list[tuple[TrainConfig, BiomassModel]]] = {}
    for _, cfg, model in models:
        key = (cfg.image_size, cfg.use_border_mask, cfg.use_pad_to_square, PhotoPrep.of(cfg),
               cfg.use_depth and depth_key(cfg))  # fmt: skip
        groups.setdefault(key, []).append((cfg, model))
    n_batches = -(-len(table) // batch_size)
    passes = [(key, group, scale) for key, group in groups.items() for scale in tta_scales]
    with progress(total=n_batches * len(passes), desc=desc, unit="batch", dynamic_ncols=True) as bar:
        for (size, border, pad, prep, uses_depth), group, scale in passes:
            if uses_depth and depth_for is None:
                raise UserError("these models were trained with depth; give the depth cache of the images (see --help)")
            depth = depth_for(group[0][0]) if uses_depth else None
            shown = max(16, round(size * scale / 16) * 16)
            ds = BiomassDataset(table, root, HalfTransform(size=shown, train=False, border_mask=border, pad_to_square=pad),
                                depth=depth, prep=prep)  # fmt: skip
            loader = DataLoader(
                ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
            )
            try:
                for batch in loader:
                    idx = batch["index"].numpy()
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in ("image", "depth")}
                    for _, model in group:
                        views = _views(batch, tta)
                        for v in views:
                            with autocast(device):
                                out = model(v)
                            share = len(views) * len(tta_scales)
                            total[idx] += out["pred"].float().cpu().numpy() / share
                            for key in EXPORTS:
                                if key in out:
                                    extra.setdefault(key, np.zeros((len(table), *out[key].shape[1:])))
                                    extra[key][idx] += out[key].float().cpu().numpy() / share
                                    contributors.setdefault(key, set()).add(id(model))
                    bar.update(1)
            except UserError as exc:  # read_rgb in a loader worker: the worker's traceback, then our line
                raise UserError(str(exc).strip().splitlines()[-1].split("UserError: ", 1)[-1])
    pred = total / len(models)
    check_predictions(pred)
    if exports is not None:
        exports.update({k: v / len(contributors[k]) for k, v in extra.items()})
    return pred


# --- tables and files ----------------------------------------------------------------------------


def predict_split(models: Sequence[FoldModel], data_dir: str | Path, split: str = "test",
                  depth_cache_dir: str | None = None, **kw) -> pd.DataFrame:
    """One row per image of ``<data_dir>/<split>.csv``: image_id, the five targets in grams and
    any auxiliary predictions. Depth models read the split's depth cache (from their training
    config's --depth-cache-dir unless ``depth_cache_dir`` is given)."""
    if split not in ("test", "train"):
        raise UserError(f"--split {split!r} must be test or train")
    images = schema.load_test(data_dir) if split == "test" else schema.load_train(data_dir)
    ids = images["image_id"].tolist()

    def depth_for(cfg: TrainConfig):
        where = {"data_dir": str(data_dir), "depth_cache_dir": depth_cache_dir or cfg.depth_cache_dir}
        return load_for_config(dataclasses.replace(cfg, **where), split, ids)

    exports: dict = {}
    pred = predict_images(models, images, data_dir, desc=f"predict {split}", depth_for=depth_for, exports=exports, **kw)
    out = pd.DataFrame({"image_id": ids})
    for i, t in enumerate(TARGETS):
        out[t] = pred[:, i]
    return out.join(export_frame(exports))


def submission(pred: pd.DataFrame, data_dir: str | Path) -> pd.DataFrame:
    """Kaggle ``sample_id,target`` rows for ``pred`` (one row per test image): in the row order
    of ``<data_dir>/sample_submission.csv`` when it exists, else of ``test.csv``."""
    data_dir = Path(data_dir)
    test_path, sample_path = data_dir / "test.csv", data_dir / "sample_submission.csv"
    wanted = schema.read_csv(test_path, schema.TEST_COLUMNS, "put the Kaggle test.csv in the data directory")[
        "sample_id"
    ]
    long = schema.wide_to_long(pred).set_index("sample_id")["target"]
    if sample_path.exists():
        order = schema.read_csv(sample_path, ("sample_id", "target"), "use the Kaggle sample_submission.csv")[
            "sample_id"
        ]
        dup = order[order.duplicated()]
        if not dup.empty:
            raise UserError(f"{sample_path}: sample_id {dup.iloc[0]!r} appears more than once; use the Kaggle file")
        extra, missing = sorted(set(order) - set(wanted)), sorted(set(wanted) - set(order))
        if extra or missing:
            what = (
                f"{len(extra)} sample_id(s) not in test.csv (e.g. {extra[0]!r})"
                if extra
                else f"it lacks {len(missing)} sample_id(s) of test.csv (e.g. {missing[0]!r})"
            )
            raise UserError(f"{sample_path}: does not match {test_path}: {what}; use the two files of the same release")
    else:
        order = wanted
    return pd.DataFrame({"sample_id": order.to_numpy(), "target": long.loc[order.to_numpy()].to_numpy()})


def kg_per_ha_column(target: str) -> str:
    """``Dry_Green_g`` -> ``Dry_Green_kg_ha``."""
    return target.removesuffix("_g") + "_kg_ha"


def photo_table(paths: Sequence[str | Path], pred: np.ndarray, exports: dict | None = None) -> pd.DataFrame:
    """One row per photo: the five masses in grams per quadrat, then in kg dry matter per hectare,
    then any auxiliary predictions (height, NDVI, standard deviations)."""
    out = pd.DataFrame({"photo": [str(p) for p in paths]})
    for i, t in enumerate(TARGETS):
        out[t] = pred[:, i]
    for i, t in enumerate(TARGETS):
        out[kg_per_ha_column(t)] = pred[:, i] * G_PER_QUADRAT_TO_KG_PER_HA
    return out.join(export_frame(exports or {}))


def predict_photos(models: Sequence[FoldModel], paths: Sequence[Path], **kw) -> pd.DataFrame:
    """New photos outside the Kaggle layout; depth models run Depth Anything on them first."""
    exports: dict = {}
    pred = predict_images(models, paths, depth_for=lambda cfg: photo_depth(paths, cfg), exports=exports, **kw)
    return photo_table(paths, pred, exports)
