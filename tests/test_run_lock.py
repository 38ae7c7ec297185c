"""One pipeline run per results folder: a second run on it, from another working directory, is
refused with one line before any job starts, and what the first run wrote stays."""

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.project_copy import copy_project

BIN = str(Path(sys.executable).parent)
HOLD = "import sys, time; from src.cluster.run_lock import hold; hold(sys.argv[1]); print('held', flush=True); time.sleep(120)"


def test_a_second_run_on_the_same_results_dir_is_refused_and_deletes_nothing(tmp_path):
    repo = copy_project(tmp_path / "repo")
    results = tmp_path / "shared-results"
    done = results / "models/baseline/fold0/metrics.json"
    done.parent.mkdir(parents=True)
    done.write_text('{"weighted_r2": 0.5}')
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(repo)}
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(results)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "held"  # stands in for a run in another working directory
        t = time.time()
        second = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "config/test.yaml", "--cores", "1",
                                 "--config", f"results_dir={results}", f"data_dir={tmp_path / 'data'}"], cwd=repo,
                                capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    finally:
        first.kill()
        first.wait()
    text = second.stdout + second.stderr
    assert second.returncode != 0 and f"{results} is in use by another pipeline run (snakemake pid" in text, text[-2000:]
    assert time.time() - t < 60 and "steps (" not in text  # refused before any job ran
    assert done.read_text() == '{"weighted_r2": 0.5}' and not (tmp_path / "data").exists()
