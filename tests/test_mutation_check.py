"""The mutation check's own machinery (tests/mutation/): a pin reaches the project's reads and
only those, and every flag of the guide has a mutant."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mutation"))

import check  # noqa: E402

SHOW = ("from src.core.config import parse_config\nfrom src.training.fit import plan_stages\n"
        "cfg = parse_config(['--freeze-epochs', '3'])\nprint(cfg.freeze_epochs, plan_stages(cfg)[0].epochs)")  # fmt: skip


def _show(**env) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", SHOW], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_a_pin_reaches_the_projects_reads_and_not_the_callers():
    pinned = _show(FLAG_MUTANT="freeze_epochs=30", PYTHONPATH=str(ROOT / "tests" / "mutation"))
    assert pinned == ["3", "30"]  # the caller sees what was parsed; src/training/fit.py sees the pin
    assert _show() == ["3", "3"]


def test_every_guide_flag_has_a_mutant_that_undoes_it():
    flags = check.guide_flags()
    assert len(flags) == 66
    seed = ROOT.parent / "shared" / "seed" / "flags.txt"
    if seed.exists():  # the copy beside the check is the guide's list
        assert (ROOT / "tests" / "mutation" / "flags.txt").read_text().split() == seed.read_text().split()
    assert check.mutant("--lr") == ("lr", 2e-4)
    assert check.mutant("--use-huber") == ("use_huber", False)
    assert check.mutant("--no-train-clover") == ("train_clover", True)
    assert check.mutant("--no-predefined-folds") == ("use_predefined_folds", True)
    assert check.mutant("--folds") == ("folds", [])
    assert check.extra_flags()[:3] == ["--ema", "--ema-decay", "--swa-top-k"]
    assert check.mutant("--ema-decay") == ("ema_decay", 0.99)
