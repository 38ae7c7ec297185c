"""A full-data refit killed mid-run (a SLURM timeout or preemption) resumes from its last epoch
with --resume and ends where an uninterrupted refit ends."""

import pandas as pd
import pytest
import torch
from test_training import _assert_same_weights, _train, run_killed_at_commit

EPOCHS = ("--freeze-epochs", "2", "--stage2-epochs", "2", "--stage1-patience", "5", "--batch-size", "8")


def _cv(folder):
    """CV folds whose histories make the refit run 2 Stage 1 + 2 Stage 2 epochs (chosen_epochs)."""
    for k in range(2):
        fold = folder / f"fold{k}"
        fold.mkdir(parents=True)
        pd.DataFrame({"stage": ["stage1"] * 2 + ["stage2"] * 2, "weighted_r2": [0.1, 0.2, 0.3, 0.4]}).to_csv(
            fold / "history.csv", index=False)
        (fold / "metrics.json").write_text("{}")
    return folder


@pytest.mark.guards("--resume", "--refit-from")
@pytest.mark.parametrize("kill_at", [2, pytest.param(4, marks=pytest.mark.slow)], ids=["mid-stage1", "mid-stage2"])
def test_a_killed_refit_resumes_and_ends_as_an_uninterrupted_one(demo_data, tmp_path, monkeypatch, kill_at):
    cv = _cv(tmp_path / "cv")
    common = (*EPOCHS, "--refit-from", str(cv))
    _train(demo_data, tmp_path / "full", *common)
    out = tmp_path / "killed"
    run_killed_at_commit(kill_at, demo_data, out, common, monkeypatch)  # the job's end: that epoch's commit never happens
    saved = torch.load(out / "full/last_state.pt", weights_only=True)["refit_state"]
    assert saved["epoch"] == kill_at - 1
    again = _train(demo_data, out, *common, "--resume")
    assert f"resuming after epoch {kill_at - 1}" in again.stdout
    _assert_same_weights(tmp_path / "full/full/best.safetensors", out / "full/best.safetensors", 1e-5)
    h_full, h_resumed = (pd.read_csv(d / "full/history.csv") for d in (tmp_path / "full", out))
    assert len(h_full) == len(h_resumed) == 4
    pd.testing.assert_series_equal(h_full["train_loss"], h_resumed["train_loss"], rtol=1e-5)
    # without --resume the refit starts over (and says nothing of resuming)
    fresh = _train(demo_data, out, *common)
    assert "resuming" not in fresh.stdout


def test_a_diverging_refit_stops_with_one_line_and_saves_nothing(demo_data, tmp_path):
    cv = _cv(tmp_path / "cv")
    proc = _train(demo_data, tmp_path / "refit", *EPOCHS, "--refit-from", str(cv), "--backbone-lr", "1e5",
                  "--warmup-epochs", "0", check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "the refit diverged in stage2 epoch" in errors[0] and "lower --backbone-lr" in errors[0]
    assert not (tmp_path / "refit/full/best.safetensors").exists()
    assert not (tmp_path / "refit/full/metrics.json").exists()
