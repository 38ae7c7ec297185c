"""Prediction averages one model: folds trained on different data are refused like folds trained
with different settings, and a model missing some of its folds says so (issue #25)."""

import shutil

import pandas as pd
import pytest
import torch

from src.core.config import TrainConfig
from src.inference.predictor import load_fold_models
from src.predict import main
from src.training import run as run_module

TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)


def _train(data, out, fold: int) -> None:
    run_module.run(TrainConfig(**{**dict(data_dir=str(data), fold_csv=str(data / "trainfold_group_location.csv"),
                                         output_dir=str(out), folds=[fold], two_stage=False, epochs=1, batch_size=8,
                                         num_workers=0, device="cpu"), **TINY}))  # fmt: skip


@pytest.fixture(scope="module")
def mixed(demo_data, tmp_path_factory):
    """fold0 trained on the demo data, fold1 on the same photos and folds with every target x10."""
    root = tmp_path_factory.mktemp("mixed")
    times10 = root / "data_x10"
    shutil.copytree(demo_data, times10)
    train = pd.read_csv(times10 / "train.csv")
    train["target"] *= 10
    train.to_csv(times10 / "train.csv", index=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(demo_data, root / "m", 0)
        _train(times10, root / "m", 1)
    finally:
        torch.set_num_threads(threads)
    return root / "m"


def _copy(src, dst, folds: dict[int, int]):
    """``dst/fold<new>`` = ``src/fold<old>`` for each new: old."""
    for new, old in folds.items():
        shutil.copytree(src / f"fold{old}", dst / f"fold{new}")
    return dst


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def test_predict_refuses_folds_trained_on_different_data(mixed, demo_data, tmp_path, capfd):
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--model-dir", str(mixed), "--data-dir", str(demo_data), "--out-dir", str(tmp_path / "p"),
              "--device", "cpu", "--no-tta"])  # fmt: skip
    assert exc.value.code == 2
    err = capfd.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "fold0 and fold1 were trained on different data (training data)" in line
    assert "--resume" in line and "--allow-mixed-folds" in line
    assert not (tmp_path / "p").exists()  # nothing written

    # --allow-mixed-folds averages them anyway, saying so once
    main(["--model-dir", str(mixed), "--data-dir", str(demo_data), "--out-dir", str(tmp_path / "q"),
          "--device", "cpu", "--no-tta", "--allow-mixed-folds"])  # fmt: skip
    said = [w for w in _warnings(capfd.readouterr().err) if "different data" in w]
    assert len(said) == 1 and "averaging them anyway" in said[0]
    assert (tmp_path / "q/submission.csv").exists()


def test_a_model_missing_folds_warns_once(mixed, tmp_path, capfd):
    one = _copy(mixed, tmp_path / "one", {0: 0})
    capfd.readouterr()
    assert len(load_fold_models(one, "cpu")) == 1
    said = _warnings(capfd.readouterr().err)
    assert len(said) == 1 and "1 of 5 folds" in said[0] and "fold1, fold2, fold3, fold4" in said[0], said

    # all five folds of one run's data (copies of fold0, each with its own pseudo-labels): no word
    five = _copy(mixed, tmp_path / "five", {k: 0 for k in range(5)})
    for k in range(5):
        state = torch.load(five / f"fold{k}/last_state.pt", weights_only=True)
        state["inputs"] = {**state["inputs"], "pseudo labels": f"labels of fold {k}", "pseudo photos": f"{k}"}
        torch.save(state, five / f"fold{k}/last_state.pt")
    assert len(load_fold_models(five, "cpu")) == 5
    assert _warnings(capfd.readouterr().err) == []


def test_folds_without_a_recorded_fingerprint_are_not_judged(mixed, tmp_path, capfd):
    """A Kaggle package ships no last_state.pt: nothing to compare, no complaint."""
    bare = _copy(mixed, tmp_path / "bare", {0: 0, 1: 1})
    (bare / "fold1/last_state.pt").unlink()
    assert len(load_fold_models(bare, "cpu")) == 2
    (bare / "fold0/last_state.pt").write_bytes(b"cut")  # unreadable: the trainer's business, not prediction's
    assert len(load_fold_models(bare, "cpu")) == 2
