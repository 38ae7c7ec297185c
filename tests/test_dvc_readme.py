"""The README's DVC commands, verbatim, in a git clone of the project: the demo through `dvc repro`,
a push to a local remote, a second clone that pulls and has nothing to redo, a `dvc exp run -S`
variant that retrains only the model whose param changed, and `dvc exp show` with both runs.

Slow (about 6 minutes on 2 cores before the demo pre-trained its backbone, a few minutes more since:
the demo pre-trains the backbone and trains 2 models x 5 folds, the variant 5 more folds):
`make test-slow`. The lines run in one shell, as a user would type them; between them the test
only prints markers so it can read each command's output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]
HEADING = "### Versioning and experiments with DVC"
MARK = "@@@ "


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index(HEADING):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def _sections(output: str) -> dict[str, str]:
    """``{command line: what it printed}`` from the marked transcript."""
    out, cmd = {}, None
    for line in output.splitlines():
        if line.startswith(MARK):
            cmd = line[len(MARK):]
            out[cmd] = ""
        elif cmd is not None:
            out[cmd] += line + "\n"
    return out


def _env() -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
               NO_ALBUMENTATIONS_UPDATE="1", DVC_NO_ANALYTICS="1", COLUMNS="250")  # fmt: skip
    for k in ("AUTHOR", "COMMITTER"):  # a user's git identity; the test's machine may have none
        env.setdefault(f"GIT_{k}_NAME", "tester")
        env.setdefault(f"GIT_{k}_EMAIL", "tester@example.org")
    return env


def _exp_rows(cwd: Path) -> list[dict]:
    """`dvc exp show --json`, one dict per run: its name, params and metrics (flattened)."""
    shown = json.loads(subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=cwd, env=_env(),
                                      capture_output=True, text=True, check=True).stdout)  # fmt: skip
    rows = []

    def walk(entry):
        data = (entry.get("data") or {}) if isinstance(entry, dict) else {}
        if data:
            params = {f"{f}:{k}": v for f, d in (data.get("params") or {}).items() for k, v in _flat(d.get("data"))}
            metrics = {f"{f}:{k}": v for f, d in (data.get("metrics") or {}).items() for k, v in _flat(d.get("data"))}
            rows.append({"name": entry.get("name") or entry.get("rev"), "params": params, "metrics": metrics})
        for e in entry.get("experiments") or [] if isinstance(entry, dict) else []:
            for r in e.get("revs") or []:
                walk(r)

    for entry in shown:
        walk(entry)
    return rows


def _flat(d, prefix=""):
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.slow
def test_readme_dvc_commands_run_verbatim_from_a_clone(tmp_path):
    origin = copy_project(tmp_path / "origin")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "the project"]):
        subprocess.run(["git", *args], cwd=origin, env=_env(), check=True)
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "clone", "-q", str(origin), "biomass"], cwd=work, check=True)
    clone = work / "biomass"
    assert not (clone / "data/demo").exists() and (clone / ".dvc/config").exists()

    lines = readme_commands()
    script = "set -euo pipefail\n" + "".join(f"echo {json.dumps(MARK + line)}\n{line}\n" for line in lines)
    run = subprocess.run(["bash", "-c", script], cwd=clone, env=_env(), capture_output=True, text=True)
    out = _sections(run.stdout + run.stderr)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    assert list(out) == lines  # every line ran

    # The second clone got everything from the remote, and there is nothing to redo.
    copy = work / "biomass-elsewhere"
    status = out[next(line for line in lines if line.startswith("dvc status"))]
    assert "up to date" in status, status
    head = subprocess.run(["git", "show", "HEAD:results/demo/metrics/models.json"], cwd=copy, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert json.loads(head)["ensemble"]["weighted_r2"] > 0.3  # the committed run's metrics live in git

    # The variant: the changed param and both runs' metrics, side by side.
    shown = out[next(line for line in lines if line.startswith("dvc exp show"))]
    assert "weight_decay" in shown and "weighted_r2" in shown, shown
    rows = {r["name"]: r for r in _exp_rows(copy)}
    param = "config/models/baseline.yaml:weight_decay"
    variant = next(r for r in rows.values() if r["params"].get(param) == 0.2)
    committed = rows.get("HEAD") or next(r for r in rows.values() if r is not variant and r["metrics"])
    assert committed["params"].get(param) is None  # the committed run used the default
    score = "results/demo/metrics/models.json:{}.weighted_r2".format
    assert variant["metrics"][score("baseline")] != committed["metrics"][score("baseline")]  # it retrained
    assert variant["metrics"][score("planthydra")] == committed["metrics"][score("planthydra")]  # only baseline
    log = (copy / "results/demo/logs/train/baseline_fold0.log").read_text()
    assert "starting over" in log, log[-2000:]  # the saved fold was not resumed under a new setting
    # The variant's Snakemake run (the clone's newest log; `snakemake --touch` wrote the one before)
    # trained baseline's 5 round-1 folds and no other round-1 fold: the pulled caches and planthydra were
    # current (round 2 and the refits follow, from the new pseudo-labels).
    run_log = max((copy / ".snakemake/log").glob("*.snakemake.log")).read_text()
    trained = re.findall(r"output: results/demo/models/(\w+)/fold\d/metrics.json", run_log)
    assert sorted(trained) == ["baseline"] * 5, trained
    assert "rule image_cache" not in run_log and "rule depth_cache" not in run_log
    assert (copy / "dvc_plots/index.html").stat().st_size > 0
