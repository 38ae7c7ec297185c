"""Are the weights a run names where its jobs will look? Checked before any job starts, so a
missing file or an offline machine without the hub copy is one line, not a failed job an hour in.

Imports no torch: the Snakemake workflow calls it while it parses.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.config import DEPTH_HUB_IDS, HUB_TAG, TIMM_NAMES

# What each hub download must have brought: timm's weights, transformers' config and weights.
TIMM_FILE = "model.safetensors"
DEPTH_FILE = "config.json"


def offline(env=None) -> bool:
    env = os.environ if env is None else env
    return env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


def backbone_problem(size: str, weights: str, is_offline: bool) -> str:
    """'' when ``--backbone-size size --backbone-weights weights`` can load here, else why not."""
    if weights == "none":
        return ""
    if weights == "hub":
        if size == "tiny":
            return "backbone_size tiny has no hub weights; set backbone_weights: none or a local file"
        repo = f"timm/{TIMM_NAMES[size]}.{HUB_TAG}"
        if is_offline and not _in_hub_cache(repo, TIMM_FILE):
            return (f"backbone_weights hub needs {repo}, which is not in the local Hugging Face cache and "
                    f"HF_HUB_OFFLINE=1; download it once (huggingface-cli download {repo}) or set backbone_weights: "
                    "PATH to a local timm weights file")  # fmt: skip
        return ""
    if not Path(weights).is_file():
        return f"backbone_weights {weights}: file not found; give a timm weights file (.safetensors), hub or none"
    return ""


def depth_problem(model: str, is_offline: bool) -> str:
    """'' when Depth Anything V2 ``model`` (hub id or local dir) can load here, else why not."""
    if Path(model).is_dir():
        return "" if (Path(model) / DEPTH_FILE).is_file() else (
            f"depth.model {model} has no {DEPTH_FILE}; give a folder written by save_pretrained (model and image processor)")
    looks_local = model.startswith((".", "/", "~")) or (model.count("/") != 1)
    if looks_local:
        return f"depth.model {model}: no such folder; give a Depth Anything V2 folder (save_pretrained) or a hub id"
    if is_offline and not _in_hub_cache(model, DEPTH_FILE):
        known = " (the default for this size)" if model in DEPTH_HUB_IDS.values() else ""
        return (f"Depth Anything V2 {model}{known} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                f"download it once (huggingface-cli download {model}) or set depth.model to a local folder")  # fmt: skip
    return ""
