"""Progress bars: tqdm's bar in a terminal; in a log file (Snakemake, SLURM, nohup) a plain line
every ``PROGRESS_LOG_INTERVAL`` seconds (default 30) instead of carriage-return redraws, so
``tail -f`` and ``grep`` on a log show where a job is."""

from __future__ import annotations

import os
import re
import sys

from tqdm import tqdm

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Lines:
    """A stream that turns tqdm's redraws into one line each."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        line = _ANSI.sub("", s).replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _Periodic(tqdm):
    """tqdm whose postfix updates wait for the next periodic line (tqdm redraws on each by default)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress(iterable=None, **kw) -> tqdm:
    """``tqdm(iterable, **kw)``, as plain periodic lines when stderr is not a terminal."""
    if sys.stderr.isatty() or kw.get("disable"):
        return tqdm(iterable, **kw)
    kw.pop("dynamic_ncols", None)
    interval = float(os.environ.get("PROGRESS_LOG_INTERVAL", "30"))
    # delay: a bar done within one interval writes nothing (no 0 % line per epoch in every log)
    return _Periodic(iterable, file=_Lines(sys.stderr), mininterval=interval, maxinterval=max(interval, 10.0),
                delay=interval, ncols=100, ascii=True, **kw)  # fmt: skip
