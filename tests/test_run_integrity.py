"""A result belongs to the data, folds and settings that claim it: a resume proves its inputs are
current, a fresh start leaves nothing of the old run, one trainer per fold, a damaged state or a
full disk is one clear line, and a fold CSV must fit the data."""

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.core.config import TrainConfig
from src.core.errors import UserError
from src.core.io_utils import write_csv
from src.data.folds import read_fold_csv
from src.data.schema import load_train
from src.training import fit
from src.training import run as run_module
from src.training.fold_files import fold_lock

TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)


def _cfg(data, out, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(data_dir=str(data), fold_csv=str(data / "trainfold_group_location.csv"), output_dir=str(out),
                                 folds=[0], two_stage=False, epochs=1, batch_size=8, num_workers=0, device="cpu",
                                 resume=True, **TINY), **kw})  # fmt: skip


def _train(data, out, capsys, **kw) -> str:
    capsys.readouterr()
    run_module.run(_cfg(data, out, **kw))
    return capsys.readouterr().out


def test_resume_starts_over_when_the_folds_the_data_or_a_photo_changed(demo_copy, tmp_path, capsys):
    out = tmp_path / "m"
    _train(demo_copy, out, capsys)
    assert "fold 0: resuming after epoch 1" in _train(demo_copy, out, capsys)

    csv = demo_copy / "trainfold_group_location.csv"
    folds = pd.read_csv(csv)
    folds.loc[folds.index[folds["fold"] == 1][:3], "fold"] = 0  # three images move into fold 0
    folds.to_csv(csv, index=False)
    said = _train(demo_copy, out, capsys)
    assert "inputs changed since the saved run (fold assignment): starting over" in said
    oof = pd.read_parquet(out / "fold0/oof.parquet")
    assert set(oof["image_id"]) == set(folds.loc[folds["fold"] == 0, "image_id"])

    train = pd.read_csv(demo_copy / "train.csv")
    train["target"] *= 10
    train.to_csv(demo_copy / "train.csv", index=False)
    assert "inputs changed since the saved run (training data): starting over" in _train(demo_copy, out, capsys)
    oof = pd.read_parquet(out / "fold0/oof.parquet").set_index("image_id")
    truth = load_train(demo_copy).set_index("image_id")
    np.testing.assert_allclose(oof["true_Dry_Total_g"], truth.loc[oof.index, "Dry_Total_g"])  # scored on the new truth

    photo = demo_copy / load_train(demo_copy).image_path[0]
    Image.open(photo).save(photo, quality=40)  # the same photo, re-encoded
    assert "inputs changed since the saved run (photo files): starting over" in _train(demo_copy, out, capsys)
    assert "resuming after epoch 1" in _train(demo_copy, out, capsys)


def test_a_fresh_start_leaves_nothing_of_the_old_run(demo_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m"
    _train(demo_data, out, capsys, resume=False)
    fold = out / "fold0"
    assert {"best.safetensors", "config.yaml", "oof.parquet", "metrics.json"} <= {p.name for p in fold.iterdir()}
    (fold / ".history.csv.x1y2.tmp").write_text("half-written by a killed run")
    real = fit.summary
    monkeypatch.setattr(fit, "summary", lambda *a, **k: {**real(*a, **k), "weighted_r2": float("nan")})
    with pytest.raises(UserError, match=r"fold 0: single diverged at epoch 0 \(validation weighted_r2 nan\), with no finite "
                                        "epoch before it"):
        run_module.run(_cfg(demo_data, out, resume=False))
    left = {p.name for p in fold.iterdir()}
    assert not left & {"best.safetensors", "config.yaml", "oof.parquet", "metrics.json", ".history.csv.x1y2.tmp"}, left


def test_one_trainer_per_fold_and_a_killed_ones_lock_is_free(demo_data, tmp_path, capsys):
    out = tmp_path / "m"
    args = [sys.executable, "-m", "src.dinov3_train", "--data-dir", str(demo_data), "--fold-csv",
            str(demo_data / "trainfold_group_location.csv"), "--output-dir", str(out), "--folds", "0", "--no-two-stage",
            "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--backbone-size", "tiny", "--backbone-weights",
            "none", "--image-size", "32", "--no-use-depth"]  # fmt: skip
    with fold_lock(out, 0):
        proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2 and not (out / "fold0").exists()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]  # beside tqdm's bars
    assert len(errors) == 1 and f"fold0 is being trained by pid {os.getpid()} on " in errors[0], proc.stderr

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom src.training.fold_files import fold_lock\n"
                               "lock = fold_lock(sys.argv[1], 0)\nlock.__enter__()\nprint('held', flush=True)\n"
                               "time.sleep(120)", str(out)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match="is being trained by pid"):
        run_module.run(_cfg(demo_data, out))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    time.sleep(0.1)
    _train(demo_data, out, capsys)  # the kernel released a killed holder's lock
    assert (out / "fold0/metrics.json").exists()


@pytest.mark.parametrize("name, damage", [("last_state.pt", "cut"), ("last_state.pt", "empty"),
                                           ("last.safetensors", "cut"), ("last.safetensors", "empty"),
                                           ("best.safetensors", "cut"), ("epoch_preds.parquet", "cut"),
                                           ("epoch_preds.parquet", "empty")])  # fmt: skip
def test_a_damaged_resume_file_starts_the_fold_over_and_says_so(demo_data, tmp_path, capsys, name, damage):
    """A finished fold's resume state, or the weights it rests on (a finished fold's state holds
    none: last.safetensors; and its result, best.safetensors): one line, and the fold is retrained."""
    out = tmp_path / "m"
    _train(demo_data, out, capsys)
    path = out / "fold0" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "cut" else b"")
    said = _train(demo_data, out, capsys)
    assert f"fold 0: {path} is damaged (" in said and ": starting over" in said, said
    assert len(path.read_bytes()) > len(data) // 2 and (out / "fold0/metrics.json").exists()
    assert "resuming after epoch 1" in _train(demo_data, out, capsys)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    write_csv(path, pd.DataFrame({"epoch": [0]}))

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(UserError, match=rf"could not write {path}: no space left on its disk .* free some space"):
        write_csv(path, pd.DataFrame({"epoch": [0, 1]}))
    monkeypatch.undo()
    assert pd.read_csv(path)["epoch"].tolist() == [0] and [p.name for p in tmp_path.iterdir()] == ["history.csv"]


@pytest.mark.parametrize("edit, said", [
    (lambda df: df.assign(fold=df["fold"].where(df.index != 4, 7)), "row 6: fold 7 is outside 0..4"),
    (lambda df: pd.concat([df, pd.DataFrame({"image_id": ["ID_elsewhere"], "fold": [0]})]),
     "image ID_elsewhere is not in train.csv"),
    (lambda df: pd.concat([df, df.iloc[[3]]]), "has a second fold"),
])  # fmt: skip
def test_a_fold_csv_must_fit_the_data(demo_data, tmp_path, edit, said):
    df = edit(pd.read_csv(demo_data / "trainfold_group_location.csv")).reset_index(drop=True)
    df.to_csv(tmp_path / "f.csv", index=False)
    with pytest.raises(UserError, match=said):
        read_fold_csv(tmp_path / "f.csv", load_train(demo_data), 5)
