"""A local Hugging Face hub cache, laid out as `huggingface-cli download` leaves it, for tests that
run offline (HF_HUB_OFFLINE=1) configurations naming hub weights."""

from __future__ import annotations

from pathlib import Path

from src.cluster.weights_check import DEPTH_FILE, TIMM_FILE
from src.core.config import DEPTH_HUB_IDS, HUB_TAG, TIMM_NAMES

REV = "0" * 40  # the snapshot the cache serves for refs/main


def snapshot(cache: Path, repo: str) -> Path:
    root = Path(cache) / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    snap = root / "snapshots" / REV
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def placeholders(cache: Path) -> Path:
    """Empty files where every hub download the configs name would be: enough for the weights check
    and a dry run (nothing loads them)."""
    for size in ("small", "small_plus", "base", "large", "huge", "7b"):
        (snapshot(cache, f"timm/{TIMM_NAMES[size]}.{HUB_TAG}") / TIMM_FILE).touch()
    for repo in DEPTH_HUB_IDS.values():
        (snapshot(cache, repo) / DEPTH_FILE).touch()
    return Path(cache)
