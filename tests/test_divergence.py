"""A run that diverges (issue #25) stops with one line, saves nothing non-finite and never picks a
non-finite epoch as best: the fold keeps its best finite epoch (exit 0) or, without one, exits 2."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_training import _train as _train_cli

from src.core.config import TrainConfig
from src.core.errors import UserError
from src.training import fit
from src.training import run as run_module

TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False,
            num_workers=0, device="cpu", batch_size=8, folds=[0], resume=True)  # fmt: skip
# Stage 1 (frozen backbone) learns; Stage 2's backbone LR blows the weights up in its first epoch.
BLOW_UP = dict(freeze_epochs=1, stage1_patience=5, stage2_epochs=2, backbone_lr=1e5, warmup_epochs=0)


def _cfg(data, out, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "data_dir": str(data), "fold_csv": str(data / "trainfold_group_location.csv"),
                          "output_dir": str(out), **kw})  # fmt: skip


def _run(data, out, capsys, **kw) -> str:
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_module.run(_cfg(data, out, **kw))
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def _all_finite(path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path)).values() if t.is_floating_point())


def _lines(text: str, part: str) -> list[str]:
    return [line for line in text.splitlines() if part in line]


@pytest.mark.parametrize("extra", [{}, dict(ema=True, ema_decay=0.9, swa_top_k=2)], ids=["plain", "ema+swa"])
def test_stage2_divergence_keeps_the_best_finite_epoch_and_says_so_once(demo_data, tmp_path, capsys, extra):
    out, fold = tmp_path / "m", tmp_path / "m/fold0"
    said = _run(demo_data, out, capsys, **BLOW_UP, **extra)
    line = _lines(said, "diverged")
    assert len(line) == 1, said
    assert line[0].startswith("fold 0: stage2 diverged at epoch 1 (train loss nan); keeping the best finite epoch 0 "
                              "(weighted_r2 "), line
    assert "lower --backbone-lr (100000)" in line[0]
    assert "nan" not in said.replace(line[0], ""), said  # no NaN epoch row is printed, none is called best
    hist = pd.read_csv(fold / "history.csv")
    assert hist["stage"].tolist() == ["stage1"] and np.isfinite(hist[["train_loss", "weighted_r2"]]).all().all()
    assert np.isfinite(pd.read_parquet(fold / "epoch_preds.parquet").filter(like="pred_")).all().all()
    assert _all_finite(fold / "best.safetensors") and _all_finite(fold / "last.safetensors")
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["best_epoch"] == 0 and metrics["epochs"] == 1 and metrics["selection"] == "best_epoch"
    assert metrics["weighted_r2"] == pytest.approx(hist["weighted_r2"][0]) and math.isfinite(metrics["weighted_r2"])
    assert not (fold / "top").exists()  # SWA does not average epochs around a divergence
    saved = torch.load(fold / "last_state.pt", weights_only=True)
    assert "model" not in saved and saved["fold_state"]["epoch"] == 1  # finished at the last finite epoch

    again = _run(demo_data, out, capsys, **BLOW_UP, **extra)  # a resume does not train into the divergence again
    assert "fold 0: resuming after epoch 1" in again and _lines(again, "diverged") == line
    assert len(pd.read_csv(fold / "history.csv")) == 1


def test_divergence_before_any_finite_epoch_exits_2_and_leaves_nothing_to_resume(demo_data, tmp_path, capsys):
    out, fold = tmp_path / "m", tmp_path / "m/fold0"
    kw = dict(two_stage=False, epochs=2, backbone_lr=1e5, warmup_epochs=0)
    for _ in range(2):  # the second run starts over: nothing of the diverged one is resumable
        capsys.readouterr()
        with pytest.raises(UserError, match=r"fold 0: single diverged at epoch 0 \(train loss nan\).*no finite epoch.*"
                                            r"lower --backbone-lr \(100000\)"):
            _run(demo_data, out, capsys, **kw)
        assert "resuming" not in capsys.readouterr().out
        left = {p.name for p in fold.iterdir()} if fold.exists() else set()
        assert not left & {"best.safetensors", "last.safetensors", "last_state.pt", "metrics.json", "oof.parquet"}, left


def test_a_non_finite_validation_score_ends_the_fold_at_its_best_epoch(demo_data, tmp_path, capsys, monkeypatch):
    """Stage 1 epoch 1 scores NaN: no later epoch or stage runs, and the NaN epoch is not best."""
    real, calls = fit.summary, []

    def nan_on_second(*a, **k):
        calls.append(1)
        return {**real(*a, **k), **({"weighted_r2": float("nan")} if len(calls) == 2 else {})}

    monkeypatch.setattr(fit, "summary", nan_on_second)
    out = tmp_path / "m"
    said = _run(demo_data, out, capsys, freeze_epochs=3, stage1_patience=5, stage2_epochs=2, lr=3e-4)
    line = _lines(said, "diverged")
    assert len(line) == 1 and line[0].startswith("fold 0: stage1 diverged at epoch 1 (validation weighted_r2 nan); "
                                                 "keeping the best finite epoch 0"), said
    assert "lower --lr (0.0003)" in line[0] and "--backbone-lr" not in line[0]  # Stage 1 trains the heads only
    assert len(calls) == 2 and pd.read_csv(out / "fold0/history.csv")["epoch"].tolist() == [0]


def test_ddp_ranks_take_the_same_divergence_decision(demo_data, tmp_path):
    args = ("--folds", "0", "--freeze-epochs", "1", "--stage2-epochs", "2", "--backbone-lr", "1e5", "--warmup-epochs", "0",
            "--batch-size", "16")  # fmt: skip
    proc = _train_cli(demo_data, tmp_path / "ddp", *args, torchrun=2)  # a rank left behind would hang (timeout)
    line = _lines(proc.stdout, "diverged")  # printed by rank 0 only
    assert len(line) == 1 and line[0].startswith("fold 0: stage2 diverged at epoch 1 ("), proc.stdout
    assert "; keeping the best finite epoch 0 (weighted_r2 " in line[0]
    assert _all_finite(tmp_path / "ddp/fold0/last.safetensors")


DECIDE = """
import sys
import torch.distributed as dist
from src.training.distributed import DistInfo, any_rank

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=sys.argv[2], rank=rank, world_size=2)
print(any_rank(DistInfo(rank=rank, world_size=2), rank == 1))  # only rank 1 saw a NaN
dist.destroy_process_group()
"""


def test_one_ranks_non_finite_value_stops_every_rank(tmp_path):
    init = f"file://{tmp_path / 'init'}"
    ranks = [subprocess.Popen([sys.executable, "-c", DECIDE, str(r), init], stdout=subprocess.PIPE, text=True)
             for r in range(2)]  # fmt: skip
    assert [p.communicate(timeout=120)[0].strip() for p in ranks] == ["True", "True"]


def test_non_finite_weights_are_found_in_one_check():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    assert not fit.nonfinite_weights(model, model)
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    assert fit.nonfinite_weights(torch.nn.Linear(2, 2), model)
