"""Snakemake and DVC agree on what a job depends on. Snakemake records (and reruns on) a rule's
params only when they are not derived from its input, output, threads or resources: such a param
may hold paths and the launcher, never a setting. And DVC's temporary experiment copies, which
lack Snakemake's records, are refused in one line. Also what the workflow's declarations promise:
local copies of local rules, and DVC plots that say what they show."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]
# A lambda param whose arguments name input/output/threads/resources: Snakemake does not record it.
DERIVED = re.compile(r"^\s+(\w+)=lambda ([\w, ]+): (.*?),?(\s+#.*)?$")
# What such a param may be: a folder of an input or output (nested dirname calls), or the launcher,
# whose GPU count does not change results (DDP matches one process).
PATH_ONLY = re.compile(r"^(os\.path\.dirname\()+(input|output)(\.\w+|\[\d+\])\)+$")
LAUNCHER = "launcher(resources.gpu)"


def _derived_params():
    for smk in sorted((REPO / "workflow").rglob("*.smk")) + [REPO / "workflow/Snakefile"]:
        for n, line in enumerate(smk.read_text().splitlines(), 1):
            m = DERIVED.match(line)
            if m and set(m[2].replace(" ", "").split(",")) & {"input", "output", "threads", "resources"}:
                yield f"{smk.relative_to(REPO)}:{n} {m[1]}", m[3].strip()


def test_a_param_snakemake_does_not_record_holds_only_paths():
    found = dict(_derived_params())
    assert len(found) >= 15, found  # the pattern still sees the workflow's params
    bad = {where: body for where, body in found.items() if not (PATH_ONLY.match(body) or body == LAUNCHER)}
    assert not bad, f"settings in params Snakemake does not record (reruns would miss their changes): {bad}"


def test_dvc_temporary_experiment_copies_are_refused_in_one_line(tmp_path):
    copy = copy_project(tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "DVC_NO_ANALYTICS": "1"}
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/test.yaml"], cwd=copy,
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    said = p.stdout + p.stderr
    assert p.returncode != 0 and "dvc exp run --temp/--queue is not supported" in said, said[-2000:]
    # (a run outside such a copy is not refused: every other pipeline test runs one)


def test_each_dvc_plot_is_titled_with_the_model_or_target_it_shows(tmp_path):
    repo = copy_project(tmp_path / "repo")
    metrics = repo / "results/demo/metrics"  # params.yaml as cloned: the demo
    (metrics / "curves").mkdir(parents=True)
    (metrics / "pred_vs_true").mkdir()
    for model in ("baseline", "planthydra"):
        (metrics / f"curves/{model}.csv").write_text("epoch,weighted_r2\n0,0.1\n1,0.2\n")
    (metrics / "pred_vs_true/clover.csv").write_text("image_id,true_g,pred_g\na,1,2\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    p = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=repo, capture_output=True,
                       text=True, env=env, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    titles = {k: v[0]["content"]["title"]["text"] for k, v in json.loads(p.stdout)["data"].items()}
    assert len(titles) == 3 and len(set(titles.values())) == 3, titles  # one title per model or target
    for path, title in titles.items():
        assert Path(path).stem in title, (path, title)


def test_a_copy_of_a_local_rule_is_local_too():
    """`localrules` names rules, and a `use rule A as B` copy is not covered by A's entry: a copy of a
    seconds-long rule left out would be queued on SLURM (round 2's OOF merges were)."""
    snakefile = (REPO / "workflow/Snakefile").read_text()
    block = snakefile[snakefile.index("localrules:"):].split("\n\n")[0]
    local = set(re.findall(r"^\s+(\w+),?$", block, re.M))
    copies = [m.groups() for smk in (REPO / "workflow/rules").glob("*.smk")
              for m in re.finditer(r"^use rule (\w+) as (\w+)", smk.read_text(), re.M)]  # fmt: skip
    assert len(local) >= 10 and len(copies) >= 5, (local, copies)
    wrong = [f"{copy} (a copy of {base})" for base, copy in copies if (base in local) != (copy in local)]
    assert not wrong, f"local and queued differ between a rule and its copy: {wrong}"


def test_a_second_run_after_the_run_made_its_data_has_nothing_to_do(tmp_path):
    """The demo and test configs make their data in a job: the photos only become inputs once it
    exists, and a run after the first must still find nothing to do (it replanned every job that
    reads photos: their input set had changed)."""
    repo = copy_project(tmp_path / "repo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    target = "results/test/cache/images/32/train.npy"  # config/test.yaml: image_size 32

    def snake(*args):
        p = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "config/test.yaml", *args, target],
                           cwd=repo, capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        return p.stdout + p.stderr

    first = snake("--cores", "1")
    assert "image_cache" in first and (repo / target).exists()
    again = snake("-n")
    assert "Nothing to be done" in again, again[-3000:]
