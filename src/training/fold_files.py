"""A fold's output folder: one trainer at a time, a fresh start that leaves nothing of the old run,
and a resume only onto a saved state that matches this run's settings and inputs.

The lock is ``<output_dir>/.fold<k>.lock``, held with ``flock`` for the whole fold: the kernel
drops it when the process dies, so a killed trainer never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from ..core.errors import UserError
from . import checkpoint as ckpt


@contextlib.contextmanager
def fold_lock(output_dir: str | Path, fold: int):
    path = Path(output_dir) / f".fold{fold}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(f"{path.parent}/fold{fold} is being trained by {holder}; wait for it to finish, or give "
                            "this run another --output-dir")  # fmt: skip
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # the kernel releases the flock when the file closes


def remove_stale_temporaries(fold_dir: Path) -> int:
    """Half-written files of a killed run (atomic writes' ``.<name>.*.tmp``); under the lock nobody
    else is writing them."""
    stale = list(Path(fold_dir).glob(".*.tmp")) if Path(fold_dir).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def start_over(fold_dir: Path) -> None:
    """Remove every file of an earlier run in one rename, so a reader sees the old run or none."""
    fold_dir = Path(fold_dir)
    if fold_dir.exists():
        trash = fold_dir.with_name(f".{fold_dir.name}.old-{os.getpid()}")
        os.replace(fold_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
    fold_dir.mkdir(parents=True, exist_ok=True)


def saved_state(fold_dir: Path, key: str = "fold_state") -> tuple[dict | None, str]:
    """The resume state, or None and why it cannot be used (a damaged file starts the fold over);
    ``key``: what a state of this kind holds (a refit's: ``refit_state``)."""
    path = Path(fold_dir) / "last_state.pt"
    if not path.exists():
        return None, ""
    try:
        state = ckpt.load_state(path)
        if not isinstance(state, dict) or key not in state:
            raise ValueError(f"no {key} in it")
    except Exception as exc:  # torch raises several types for a cut or empty file
        return None, f"{path} is damaged ({_first_line(exc)})"
    return state, ""


def unusable_weights(paths: list[Path]) -> str:
    """Why the first of these weights files cannot be used ('' when all can): missing, or damaged
    (cut, empty, overwritten: safetensors checks that its header covers the whole file). Reads the
    headers only, so it costs nothing next to the weights."""
    for path in paths:
        if not Path(path).exists():
            return f"{path} is missing"
        try:
            ckpt.weights_metadata(path)
        except Exception as exc:  # SafetensorError, or an OSError for an unreadable file
            return f"{path} is damaged ({_first_line(exc)})"
    return ""


def unreadable_table(path: Path) -> str:
    """Why a parquet table a resume builds on cannot be read ('' when it can): missing, or damaged."""
    if not Path(path).exists():
        return f"{path} is missing"
    try:
        import pyarrow.parquet as pq

        pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a cut or empty file
        return f"{path} is damaged ({_first_line(exc)})"
    return ""


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]
