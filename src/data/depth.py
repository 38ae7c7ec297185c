"""Depth caches: Depth Anything V2 run once per split and model, read by the trainer.

One safetensors file per (model size, split) holds, per image, the depth map of each half at a
fixed resolution: ``depth`` (N, 2, R, R) float16, standardised per image (the model's scale is
arbitrary per photo, and a random test model's raw outputs would underflow float16), plus the
raw per-image ``depth_mean`` / ``depth_std``. The metadata records the model, the image
processor backend, the resolution, the photo cleaning and the image ids; a cache made with other
settings is refused. Depth is computed on the cleaned photos, as the model sees them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.errors import UserError
from ..core.io_utils import atomic_path, write_json
from ..core.progress import progress
from ..core.targets import TARGETS
from ..models import depth_anything
from .fingerprint import files_hash, split_photos_hash
from .photo_prep import PhotoPrep
from .photos import read_rgb
from .schema import load_test, load_train
from .transforms import split_halves

FORMAT = "1"


def cache_path(cache_dir: str | Path, size: str, split: str, prep: PhotoPrep = PhotoPrep()) -> Path:
    return Path(cache_dir) / f"{size}{prep.tag}" / f"{split}.safetensors"


def build_command(data_dir, split, size, out, model: str = "", backend: str = "torchvision", resolution: int = 64,
                  prep: PhotoPrep = PhotoPrep()) -> str:  # fmt: skip
    extra = f" --model {model}" if model else ""
    extra += f" --backend {backend}" if backend != "torchvision" else ""
    extra += f" --resolution {resolution}" if resolution != 64 else ""
    extra += "".join(f" {f}" for f in prep.flags())
    return f"python -m src.depth_cache --data-dir {data_dir} --split {split} --model-size {size}{extra} --out {out}"


def _settings(model: str, backend: str, resolution: int, prep: PhotoPrep = PhotoPrep()) -> dict[str, str]:
    return {"format": FORMAT, "model_id": str(model), "backend": backend, "resolution": str(resolution),
            **prep.settings()}  # fmt: skip


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def _mismatch(meta: dict, want: dict) -> list[str]:
    meta = {**PhotoPrep().settings(), **meta}  # caches from before the cleaning options had none
    return [f"{k} {meta.get(k)!r} (wanted {v!r})" for k, v in want.items() if meta.get(k) != v]


def build_cache(data_dir, split: str, model: str, out, *, backend: str = "torchvision", resolution: int = 64,
                batch_size: int = 8, device: torch.device | None = None, prep: PhotoPrep = PhotoPrep()) -> dict | None:
    """Write the cache for ``split`` (train or test); returns the correlation report for train.
    An existing cache with the same settings and images is left alone (returns None)."""
    data_dir, out = Path(data_dir), Path(out)
    images = load_train(data_dir) if split == "train" else load_test(data_dir)
    ids = images["image_id"].tolist()
    want = {**_settings(model, backend, resolution, prep), "photos": files_hash(data_dir, images["image_path"])}
    if out.exists() and not _mismatch(read_metadata(out), want) and json.loads(read_metadata(out)["image_ids"]) == ids:
        print(f"{out}: up to date ({len(ids)} images, {model})")
        return None
    maps = compute_maps([data_dir / p for p in images["image_path"]], model, backend, resolution, batch_size, device,
                        desc=f"depth {split}", prep=prep)  # fmt: skip
    norm, mean, std = standardise(maps)
    tensors = {"depth": torch.from_numpy(norm.astype(np.float16)), "depth_mean": torch.from_numpy(mean),
               "depth_std": torch.from_numpy(std)}  # fmt: skip
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={**want, "split": split, "image_ids": json.dumps(ids)})
    print(f"{out}: {len(ids)} images x 2 halves at {resolution}px from {model} ({backend})")
    if split != "train":
        return None
    report = correlations(images, maps)
    write_json(out.with_suffix(".correlation.json"), report)
    print_correlations(report)
    return report


def compute_maps(paths: list[Path], model: str, backend: str, resolution: int, batch_size: int = 8,
                 device: torch.device | None = None, desc: str = "depth", prep: PhotoPrep | None = None) -> np.ndarray:
    """Raw relative inverse depth (len(paths), 2, R, R) of each photo's halves."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    processor, net = depth_anything.load(model, backend, device)
    maps = np.zeros((len(paths), 2, resolution, resolution), np.float32)
    for start in progress(range(0, len(paths), batch_size), desc=desc, unit="batch"):
        chunk = paths[start:start + batch_size]
        halves = [h for p in chunk for h in split_halves(read_rgb(p, prep))]
        maps[start:start + len(chunk)] = depth_anything.predict(processor, net, halves, resolution, device).reshape(
            -1, 2, resolution, resolution)
    return maps


def standardise(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image over both halves: (maps - mean) / std, and the raw means and stds."""
    mean, std = maps.mean(axis=(1, 2, 3)), maps.std(axis=(1, 2, 3))
    return (maps - mean[:, None, None, None]) / np.maximum(std, 1e-12)[:, None, None, None], mean, std


def image_stats(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image depth statistics on raw maps (N, 2, R, R): level, spread and relief."""
    flat = maps.reshape(len(maps), -1)
    return {"depth_mean": flat.mean(1), "depth_std": flat.std(1),
            "depth_relief": np.percentile(flat, 90, axis=1) - np.percentile(flat, 10, axis=1)}  # fmt: skip


def correlations(images: pd.DataFrame, maps: np.ndarray) -> dict[str, dict[str, float]]:
    """Pearson r of each depth statistic with Height_Ave_cm and each target (training split)."""
    out: dict[str, dict[str, float]] = {}
    for name, stat in image_stats(maps).items():
        row = {}
        for col in ("Height_Ave_cm", *TARGETS):
            y = images[col].to_numpy(np.float64)
            ok = np.std(stat) > 0 and np.std(y) > 0
            row[col] = float(np.corrcoef(stat, y)[0, 1]) if ok else float("nan")
        out[name] = row
    return out


def print_correlations(report: dict) -> None:
    df = pd.DataFrame(report).T.round(3)
    print("Pearson r of per-image depth statistics with height and targets (train):")
    print(df.to_string())


def load_cache(path, image_ids: list[str], *, model: str, backend: str, resolution: int, command: str,
               prep: PhotoPrep = PhotoPrep(), photos: str | None = None) -> np.ndarray:  # fmt: skip
    """Normalised depth (len(image_ids), 2, R, R) float16 in the order of ``image_ids``; ``photos``:
    the split's photos now (``split_photos_hash``), which the cache must have been built from."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"depth cache {path} not found; build it with: {command}")
    meta = read_metadata(path)
    bad = _mismatch(meta, _settings(model, backend, resolution, prep))
    if bad:
        raise UserError(f"depth cache {path} was made with other settings: {'; '.join(bad)}; rebuild it with: {command}")
    if photos is not None and meta.get("photos") != photos:
        raise UserError(f"depth cache {path} was built from other photos (one was replaced or changed since); rebuild "
                        f"it with: {command}")  # fmt: skip
    index = {i: k for k, i in enumerate(json.loads(meta["image_ids"]))}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise UserError(f"depth cache {path} has no depth for image {missing[0]} ({len(missing)} in all); rebuild it with: {command}")
    with safe_open(str(path), "np") as f:
        depth = f.get_tensor("depth")
    return depth[[index[i] for i in image_ids]]


def load_for_config(cfg, split: str, image_ids: list[str]) -> np.ndarray | None:
    """The cached depth a training config asks for (None with --no-use-depth)."""
    if not cfg.use_depth:
        return None
    prep = PhotoPrep.of(cfg)
    path = cache_path(cfg.depth_cache_dir, cfg.depth_model_size, split, prep)
    command = build_command(cfg.data_dir, split, cfg.depth_model_size, path, cfg.depth_model, cfg.depth_backend,
                            cfg.depth_resolution, prep)  # fmt: skip
    return load_cache(path, image_ids, model=depth_anything.model_id(cfg.depth_model_size, cfg.depth_model),
                      backend=cfg.depth_backend, resolution=cfg.depth_resolution, command=command, prep=prep,
                      photos=split_photos_hash(cfg.data_dir, split))  # fmt: skip


def depth_key(cfg) -> tuple:
    """What makes two configs read the same depth."""
    return (depth_anything.model_id(cfg.depth_model_size, cfg.depth_model), cfg.depth_backend, cfg.depth_resolution,
            PhotoPrep.of(cfg))  # fmt: skip


def photo_depth(paths: list[Path], cfg) -> np.ndarray:
    """Depth for new photos (no cache): run the config's Depth Anything V2 on them now."""
    model, backend, resolution, prep = depth_key(cfg)
    return standardise(compute_maps(list(paths), model, backend, resolution, prep=prep))[0].astype(np.float16)
