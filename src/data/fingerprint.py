"""What a fold learns from, as short hashes: a resume is only allowed onto the same inputs.

Settings are compared field by field elsewhere (``fit._changed_settings``); these cover what the
settings do not name: the training table, the fold assignment, the photo files and the depth
features. Photo files are hashed cheaply: size plus the first and last 64 KiB of each, which sees
a replaced, re-encoded or truncated photo without reading whole files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

_EDGE = 64 * 1024


def _digest(*chunks: bytes) -> str:
    h = hashlib.blake2b(digest_size=12)
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def frame_hash(df: pd.DataFrame) -> str:
    return _digest(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes(), ",".join(map(str, df.columns)).encode())


def files_hash(data_dir: str | Path, rel_paths) -> str:
    h = hashlib.blake2b(digest_size=12)
    for rel in rel_paths:
        path = Path(data_dir) / rel
        size = path.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(_EDGE))
            if size > 2 * _EDGE:
                f.seek(-_EDGE, 2)
                h.update(f.read(_EDGE))
    return h.hexdigest()


def fold_inputs(images: pd.DataFrame, folds: pd.Series, data_dir: str | Path, depth: np.ndarray | None) -> dict[str, str]:
    """Named hashes of everything a fold's training reads besides its settings."""
    out = {
        "training data": frame_hash(images.reset_index(drop=True)),
        "fold assignment": frame_hash(pd.DataFrame({"image_id": images["image_id"].to_numpy(), "fold": folds.to_numpy()})),
        "photo files": files_hash(data_dir, images["image_path"]),
    }
    if depth is not None:
        out["depth features"] = _digest(np.ascontiguousarray(depth).tobytes())
    return out


def split_photos_hash(data_dir: str | Path, split: str) -> str:
    """``files_hash`` of a split's photos in its table's order: the key a cache of them records."""
    from .schema import load_test, load_train

    images = load_train(data_dir) if split == "train" else load_test(data_dir)
    return files_hash(data_dir, images["image_path"])
