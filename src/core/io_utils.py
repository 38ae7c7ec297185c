"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _write_error(path: Path, exc: BaseException, existed: bool) -> UserError | None:
    """The one line for a write of ``path`` that failed on a read-only or full disk (None: another
    failure, re-raised as it is). It says what became of ``path`` itself: a rewrite leaves the
    previous file, a first write leaves none."""
    code = getattr(exc, "errno", None)
    if code == errno.EROFS:
        return UserError(f"could not write {path}: its file system is read-only; write the results elsewhere")
    if code not in (errno.ENOSPC, errno.EDQUOT):
        try:  # torch.save reports a full disk as a RuntimeError without errno
            if shutil.disk_usage(path.parent).free >= 2**20:
                return None
        except OSError:
            return None
    state = f"{path} keeps its previous contents" if existed else f"{path} was not created"
    return UserError(f"could not write {path}: no space left on its disk (or quota); free some space and run "
                     f"again ({state}; --resume continues a training run)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:  # no room (or no inode) for even an empty temporary file
        if (err := _write_error(path, exc, existed)) is None:
            raise
        raise err from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for everyone who can read the folder
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        if (err := _write_error(path, exc, existed)) is None:
            raise
        raise err from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path, df, **kwargs) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_parquet(path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_result(path, hint: str):
    """A JSON object or a parquet table an earlier step wrote; missing: a UserError with ``hint``
    (how to make it)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; {hint}")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    import pandas as pd

    return pd.read_parquet(path)
