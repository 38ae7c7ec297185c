"""Checkpoint I/O: safetensors weights + the resolved config.yaml, and a resume state file.

Weights never go through pickle. The resume state (weights, optimiser, scheduler, counters) is
one plain dict of tensors and numbers loaded with ``weights_only=True``: one file, so one atomic
commit per epoch; ``last.safetensors`` beside it is the same weights for people and tools. Every write is atomic.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..core.config import BEFORE_FIELD, TrainConfig, from_dict, save_yaml
from ..core.io_utils import atomic_path, write_json


def save_weights(model: torch.nn.Module, path: Path, cfg: TrainConfig | None = None, extras: dict | None = None,
                 metadata: dict | None = None) -> None:
    """Weights; with ``cfg`` also the resolved config.yaml and ``extras.json`` (the vocabularies
    that size the heads) beside them, which is all ``load_model`` needs."""
    with atomic_path(path) as tmp:
        save_file(cpu_state(model), str(tmp), metadata=metadata)
    if cfg is not None:
        _save_side_files(Path(path).parent, cfg, extras or {"species": [], "states": []})


# Per folder: what this process last wrote as config.yaml + extras.json, and those files' stat then.
_SIDE_FILES: dict[Path, tuple[str, tuple]] = {}


def _stamp(*paths: Path) -> tuple:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _save_side_files(folder: Path, cfg: TrainConfig, extras: dict) -> None:
    """config.yaml and extras.json, unless this process wrote these same ones there and they are
    untouched since (a fold's best epoch improves many times; YAML alone costs ~10 ms a write)."""
    files = (folder / "config.yaml", folder / "extras.json")
    want = json.dumps([cfg.to_dict(), extras], sort_keys=True, default=str)
    if _SIDE_FILES.get(folder) == (want, _stamp(*files)):
        return
    save_yaml(cfg, files[0])
    write_json(files[1], extras)
    _SIDE_FILES[folder] = (want, _stamp(*files))


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def load_weights(model: torch.nn.Module, path: Path) -> None:
    model.load_state_dict(load_file(str(path)), strict=True)


def weights_metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def load_config(fold_dir: Path) -> TrainConfig:
    saved = yaml.safe_load((Path(fold_dir) / "config.yaml").read_text())
    if isinstance(saved, dict):  # anything else: from_dict says what is wrong
        saved = {**BEFORE_FIELD, **saved}
    return from_dict(saved, source=str(fold_dir / "config.yaml"))


def load_extras(fold_dir: Path) -> dict:
    path = Path(fold_dir) / "extras.json"
    return json.loads(path.read_text()) if path.exists() else {"species": [], "states": []}


def save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
