"""One Snakemake run per results folder, whatever its working directory.

Snakemake locks its working directory (``.snakemake/locks``); two runs from two working
directories on one ``results_dir`` would both rebuild every shared file, and the one that loses
deletes what the other just wrote. The pipeline therefore holds ``<results_dir>/.run.lock`` with
``flock`` from its start to its end (the kernel drops it when the process dies: no stale lock).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from ..core.errors import UserError

NAME = ".run.lock"
_held = []  # open lock files of this process: closing one would release its lock


def hold(results_dir: str | Path) -> Path:
    """Take the results folder's lock for the rest of this process, or one line why not."""
    path = Path(results_dir) / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{results_dir} is in use by another pipeline run ({holder}); wait for it to finish, or give "
                        "this run another results_dir")  # fmt: skip
    f.seek(0)
    f.truncate()
    f.write(f"snakemake pid {os.getpid()} on {socket.gethostname()} in {os.getcwd()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}")  # fmt: skip
    f.flush()
    _held.append(f)
    return path
