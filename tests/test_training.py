"""The trainer end to end on tiny models: outputs, DDP == one process, resume == uninterrupted."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from src.core.config import TrainConfig
from src.models.biomass import BiomassModel
from src.training.optim import build_optimizer, build_scheduler

TINY = ["--backbone-size", "tiny", "--backbone-weights", "none", "--image-size", "32", "--no-use-depth",
        "--no-depth-attention", "--num-workers", "0", "--device", "cpu"]  # fmt: skip


def _args(data, out, *extra):
    return ["--data-dir", str(data), "--fold-csv", str(data / "trainfold_group_location.csv"), "--output-dir",
            str(out), *TINY, *extra]  # fmt: skip


def _train(data, out, *extra, torchrun: int = 0, check=True):
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "-m", "src.dinov3_train", *_args(data, out, *extra)]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "src.dinov3_train", *_args(data, out, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)  # a DDP deadlock fails, not hangs
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(path):
    return load_file(str(path))


def _assert_same_weights(a, b, atol):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst <= atol, worst


def test_two_stage_run_writes_every_output(demo_data, tmp_path):
    out = tmp_path / "m"
    proc = _train(demo_data, out, "--folds", "1", "--freeze-epochs", "3", "--stage1-patience", "2",
                  "--stage2-epochs", "2", "--batch-size", "8")
    fold = out / "fold1"
    for name in ("best.safetensors", "config.yaml", "last.safetensors", "last_state.pt", "history.csv",
                 "oof.parquet", "metrics.json"):
        assert (fold / name).exists(), name
    hist = pd.read_csv(fold / "history.csv")
    assert set(hist["stage"]) == {"stage1", "stage2"}
    assert {"train_loss", "val_loss", "train_smoothl1", "weighted_r2", "r2_dead", "r2_clover", "r2_total"} <= set(hist)
    # Stage 1 trains heads only; Stage 2 adds the backbone at --backbone-lr
    assert "lr_backbone" in hist and hist.loc[hist.stage == "stage1", "lr_backbone"].isna().all()
    assert hist.loc[hist.stage == "stage2", "lr_backbone"].notna().all()
    oof = pd.read_parquet(fold / "oof.parquet")
    assert (oof["fold"] == 1).all() and (oof.filter(like="pred_") >= 0).all().all()
    np.testing.assert_allclose(oof["pred_GDM_g"], oof["pred_Dry_Green_g"] + oof["pred_Dry_Clover_g"], rtol=1e-5, atol=1e-4)
    assert "weighted_r2" in proc.stdout and "fold 1 | stage1 1/3" in proc.stdout
    assert not (out / "oof_metrics.json").exists()  # one fold of five: merging is the pipeline's job


# The averaging and mixup variants are slow (make test-slow): make test stays near 10 minutes.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("extra", [(), pytest.param(("--ema", "--ema-decay", "0.9", "--swa-top-k", "2"), marks=SLOW),
                                   pytest.param(("--mixup-alpha", "0.4"), marks=SLOW)],
                         ids=["plain", "ema+swa", "mixup"])  # fmt: skip
def test_ddp_two_ranks_match_one_process(demo_data, tmp_path, extra):
    # Stage 1 on the frozen-feature cache, Stage 2 on the live backbone: both must match.
    common = ("--folds", "0", "--freeze-epochs", "2", "--stage1-patience", "5", "--stage2-epochs", "2",
              "--batch-size", "16", "--warmup-epochs", "0.5", *extra)  # fmt: skip
    _train(demo_data, tmp_path / "single", *common)
    ddp = _train(demo_data, tmp_path / "ddp", *common, torchrun=2)
    assert "DDP batch adjustment: 16 → 8/GPU (effective: 16)" in ddp.stdout
    assert ddp.stdout.count("fold 0 | stage1 1/2") == 1 and "feature cache" in ddp.stdout  # only rank 0 prints
    _assert_same_weights(tmp_path / "single/fold0/last.safetensors", tmp_path / "ddp/fold0/last.safetensors", 1e-5)
    h1, h2 = pd.read_csv(tmp_path / "single/fold0/history.csv"), pd.read_csv(tmp_path / "ddp/fold0/history.csv")
    np.testing.assert_allclose(h1["weighted_r2"], h2["weighted_r2"], atol=1e-5)
    np.testing.assert_allclose(h1["train_loss"], h2["train_loss"], rtol=1e-5)
    _assert_same_weights(tmp_path / "single/fold0/best.safetensors", tmp_path / "ddp/fold0/best.safetensors", 1e-5)


@pytest.mark.parametrize("extra", [(), pytest.param(("--ema", "--swa-top-k", "3"), marks=SLOW)], ids=["plain", "ema+swa"])
def test_resume_after_kill_matches_uninterrupted(demo_data, tmp_path, extra):
    common = ("--folds", "2", "--freeze-epochs", "3", "--stage1-patience", "5", "--stage2-epochs", "4",
              "--batch-size", "8", *extra)  # fmt: skip
    _train(demo_data, tmp_path / "full", *common)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "src.dinov3_train", *_args(demo_data, out, *common)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    hist, state = out / "fold2" / "history.csv", out / "fold2" / "last_state.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if hist.exists() and len(pd.read_csv(hist)) >= 2:
            proc.send_signal(signal.SIGKILL)  # lands anywhere, also between the epoch's file writes
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = torch.load(state, weights_only=True)["fold_state"]["epoch"]  # the commit point, not history.csv
    assert 1 <= done_before < 7
    resumed = _train(demo_data, out, *common, "--resume")
    assert f"resuming after epoch {done_before}" in resumed.stdout
    _assert_resumed_like(tmp_path / "full/fold2", out / "fold2")


def _assert_resumed_like(full, resumed):
    _assert_same_weights(full / "last.safetensors", resumed / "last.safetensors", 1e-5)
    _assert_same_weights(full / "best.safetensors", resumed / "best.safetensors", 1e-5)
    h_full, h_resumed = pd.read_csv(full / "history.csv"), pd.read_csv(resumed / "history.csv")
    assert len(h_full) == len(h_resumed)
    np.testing.assert_allclose(h_full["weighted_r2"], h_resumed["weighted_r2"], rtol=1e-5)
    # Every epoch's validation predictions (the cross-fold epoch choice reads them): once each, as uninterrupted.
    e_full, e_resumed = (pd.read_parquet(d / "epoch_preds.parquet") for d in (full, resumed))
    assert e_full[["epoch", "image_id"]].equals(e_resumed[["epoch", "image_id"]])
    np.testing.assert_allclose(e_full.filter(like="pred_"), e_resumed.filter(like="pred_"), rtol=1e-4, atol=1e-4)


def run_killed_at_commit(n: int, data, out, args, monkeypatch) -> None:
    """The trainer in this process, stopped as a SIGKILL would stop it just before its n-th resume
    commit (checkpoint.save_state): everything before it is on disk, that commit never happens."""
    from src.core.config import parse_config
    from src.training import checkpoint, run

    real_save_state, calls = checkpoint.save_state, []

    def killed(path, state):
        calls.append(path)
        if len(calls) == n:
            raise KeyboardInterrupt
        real_save_state(path, state)

    monkeypatch.setattr(checkpoint, "save_state", killed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess runs, so the float sums agree
    try:
        with pytest.raises(KeyboardInterrupt):
            run.run(parse_config(_args(data, out, *args)))
    finally:
        torch.set_num_threads(threads)
        monkeypatch.setattr(checkpoint, "save_state", real_save_state)


def test_kill_between_weights_and_state_writes_still_resumes(demo_data, tmp_path, monkeypatch):
    """The worst moment for a kill: last.safetensors already holds epoch 3, last_state.pt still epoch 2."""
    from src.training import checkpoint

    common = ("--folds", "0", "--freeze-epochs", "2", "--stage1-patience", "5", "--stage2-epochs", "2",
              "--batch-size", "8")  # fmt: skip
    _train(demo_data, tmp_path / "full", *common)
    out = tmp_path / "killed"
    run_killed_at_commit(3, demo_data, out, common, monkeypatch)  # after the weights of epoch 3 were written
    fold = out / "fold0"
    assert checkpoint.weights_metadata(fold / "last.safetensors")["epoch"] == "3"
    assert torch.load(fold / "last_state.pt", weights_only=True)["fold_state"]["epoch"] == 2
    resumed = _train(demo_data, out, *common, "--resume")
    assert "resuming after epoch 2" in resumed.stdout
    _assert_resumed_like(tmp_path / "full/fold0", fold)


@pytest.mark.guards("--lr-mult", "--backbone-size")
def test_layer_decay_gives_backbone_blocks_different_lrs():
    cfg = TrainConfig(backbone_size="tiny", backbone_weights="none", image_size=32, lr_mult=0.5, warmup_epochs=0)
    model = BiomassModel(cfg)
    opt = build_optimizer(model, cfg, train_backbone=True)
    sched = build_scheduler(opt, cfg, epochs=2, steps_per_epoch=5)
    sched.step_update(1)
    backbone_lrs = sorted({round(g["lr"], 12) for g in opt.param_groups if g["name"] == "backbone"})
    heads = [g["lr"] for g in opt.param_groups if g["name"] == "heads"]
    # timm: embeddings, block 0, block 1 + final norm -> scales 0.25, 0.5, 1
    ratios = [lr / backbone_lrs[-1] for lr in backbone_lrs]
    assert ratios == pytest.approx([0.25, 0.5, 1.0], rel=1e-5)
    assert backbone_lrs[-1] <= cfg.backbone_lr and heads[0] > backbone_lrs[-1]


def test_local_backbone_weights_file_is_loaded(tmp_path):
    from safetensors.torch import save_file

    from src.models.backbone import create_backbone

    src = create_backbone("tiny", "none", 32)
    torch.nn.init.constant_(src.blocks[0].attn.qkv.weight, 0.125)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = create_backbone("tiny", str(tmp_path / "w.safetensors"), 32)
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    fresh = create_backbone("tiny", "none", 32)
    assert not torch.equal(fresh.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


@pytest.mark.guards("--freeze-backbone", "--no-two-stage")
def test_frozen_stage_leaves_backbone_untouched(demo_data, tmp_path):
    out = tmp_path / "frozen"
    _train(demo_data, out, "--folds", "0", "--no-two-stage", "--freeze-backbone", "--epochs", "2", "--batch-size", "8")
    w = _weights(out / "fold0/last.safetensors")
    torch.manual_seed(42 + 0)  # the trainer seeds model init with seed + fold
    init = BiomassModel(TrainConfig(backbone_size="tiny", backbone_weights="none", image_size=32)).state_dict()
    assert torch.equal(w["backbone.blocks.0.attn.qkv.weight"], init["backbone.blocks.0.attn.qkv.weight"])
    assert not torch.equal(w["head.mlp.0.weight"], init["head.mlp.0.weight"])


def test_resume_with_changed_settings_starts_over(demo_data, tmp_path):
    out = tmp_path / "m"
    common = ("--folds", "0", "--no-two-stage", "--epochs", "2", "--batch-size", "8")
    _train(demo_data, out, *common)
    done = _train(demo_data, out, *common, "--resume")
    assert "resuming after epoch 2" in done.stdout  # finished: nothing left to train
    assert "optimizer" not in torch.load(out / "fold0/last_state.pt", weights_only=True)  # finished folds stay small
    again = _train(demo_data, out, *common, "--resume", "--lr", "0.001")
    assert "settings changed since the saved run (lr): starting over" in again.stdout
    assert len(pd.read_csv(out / "fold0/history.csv")) == 2


def test_compile_flag_compiles_the_backbone_and_keeps_checkpoint_keys(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    cfg = TrainConfig(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False)
    plain = BiomassModel(cfg)
    fast = BiomassModel(TrainConfig(**{**cfg.to_dict(), "compile": True}))
    assert len(compiled) == 1 and set(plain.state_dict()) == set(fast.state_dict())


def test_persistent_workers_see_each_epochs_augmentation(demo_data):
    from torch.utils.data import DataLoader, SequentialSampler

    from src.data.dataset import BiomassDataset, EpochIndices
    from src.data.schema import load_train
    from src.data.transforms import HalfTransform

    images = load_train(demo_data).iloc[:4]
    ds = BiomassDataset(images, demo_data, HalfTransform(size=32, train=True), seed=1)

    class Seq(SequentialSampler):
        def set_epoch(self, epoch):
            pass

    sampler = EpochIndices(Seq(ds), len(ds))
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=1, persistent_workers=True)
    per_epoch = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        per_epoch.append(next(iter(loader))["image"])
    assert not torch.equal(per_epoch[0], per_epoch[1]) and not torch.equal(per_epoch[1], per_epoch[2])
    sampler.set_epoch(1)
    assert torch.equal(next(iter(loader))["image"], per_epoch[1])  # and replays exactly
