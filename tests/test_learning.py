"""Slow (`make test-slow`): the issue's acceptance run. A tiny DINOv3 trained with 5-fold CV on the
demo data must learn it: OOF weighted R^2 >= 0.5 (measured 0.658 in 1 min 33 s on 2 cores)."""

import json
import os
import subprocess
import sys

import pytest

from src.data.folds import make_folds
from src.data.schema import load_train
from src.data.synth import generate


@pytest.mark.slow
def test_five_fold_tiny_model_learns_the_demo_data(tmp_path):
    data = tmp_path / "demo"
    generate(data, n_train=120, n_test=30, seed=0)  # what `make demo` generates
    make_folds(load_train(data), n_folds=5, strategy="group_location", seed=42).to_csv(
        data / "trainfold_group_location.csv", index=False)
    cmd = [sys.executable, "-m", "src.dinov3_train", "--data-dir", str(data), "--fold-csv",
           str(data / "trainfold_group_location.csv"), "--backbone-size", "tiny", "--backbone-weights", "none",
           "--image-size", "64", "--folds", "0", "1", "2", "3", "4", "--no-use-depth", "--lr", "3e-3",
           "--backbone-lr", "1e-3", "--batch-size", "8", "--freeze-epochs", "10", "--stage2-epochs", "20",
           "--output-dir", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    oof = json.loads((tmp_path / "out" / "oof_metrics.json").read_text())
    assert oof["weighted_r2"] >= 0.5, oof
