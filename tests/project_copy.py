"""A copy of the project as a fresh clone would have it, without data or results: tests and
benchmarks run the Snakemake pipeline in it so they never touch the working tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_project(dst: Path, repo: Path = REPO) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    for f in files:
        if f.startswith(("data/", "results/")) or not (repo / f).is_file():
            continue  # untracked-but-unignored files are included; deleted tracked ones are not
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, dst / f)
    return dst
