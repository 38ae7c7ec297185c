"""Label-free pre-training of the tiny backbone (issue #27): the file it writes loads through
``create_backbone``'s real path (timm, strict keys), it learns, and no mass reaches it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from src.core.errors import UserError
from src.models.backbone import create_backbone
from src.pretrain.data import ensure_photos, load_halves, photo_dir
from src.pretrain.train import PretrainConfig, run, train

SIZE = 32  # 2 x 2 patches per half: seconds


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> PretrainConfig:
    root = tmp_path_factory.mktemp("pretrain")
    return PretrainConfig(out=str(root / "tiny.safetensors"), image_size=SIZE, photos=6, seed=1000, epochs=1,
                          batch_size=4, photo_root=str(root / "photos"), width=256, height=128)  # fmt: skip


def test_written_weights_load_through_create_backbone_with_every_key(cfg):
    summary = run(cfg)
    saved = load_file(cfg.out)
    backbone = create_backbone("tiny", weights=cfg.out, image_size=SIZE)
    state = backbone.state_dict()
    assert set(saved) == set(state) == set(create_backbone("tiny", "none", SIZE).state_dict())
    assert all(torch.equal(saved[k], state[k]) for k in state)  # the file's weights, not a random init
    assert saved["blocks.0.gamma_1"].abs().mean() > 1e-5  # trained: LayerScale left its init
    assert summary["history"] and np.isfinite(summary["history"][-1]["loss"])
    # The loading path is strict: a file short of one key is refused, not silently half-loaded.
    short = {k: v for k, v in saved.items() if k != "blocks.1.gamma_1"}
    save_file(short, str(cfg.out) + ".short.safetensors")
    with pytest.raises(UserError, match="could not load"):
        create_backbone("tiny", weights=str(cfg.out) + ".short.safetensors", image_size=SIZE)


def test_the_loss_decreases_over_a_few_steps(cfg):
    paths = ensure_photos(photo_dir(cfg.photo_root, cfg.photos, cfg.seed, cfg.width, cfg.height),
                          cfg.photos, cfg.seed, cfg.width, cfg.height)  # fmt: skip
    data = load_halves(paths, SIZE, cfg.sub)
    # one batch of all 12 halves per epoch, no jitter: the same objective at every step
    _, history = train(dataclasses.replace(cfg, epochs=12, batch_size=12, brightness=0.0, lr=3e-3), data)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.9 * losses[0], losses


def test_the_masses_never_reach_the_objective(cfg, tmp_path):
    """The photos are read by file name: the CSV with the masses may be scrambled or gone and
    the weights are the same bytes (the run is deterministic given its seed)."""
    first = tmp_path / "a.safetensors"
    run(dataclasses.replace(cfg, out=str(first)))
    folder = photo_dir(cfg.photo_root, cfg.photos, cfg.seed, cfg.width, cfg.height)
    csv = folder / "train.csv"
    df = pd.read_csv(csv)
    df["target"] = np.random.default_rng(0).permutation(df["target"].to_numpy()) * 7 + 3
    df.to_csv(csv, index=False)
    second = tmp_path / "b.safetensors"
    run(dataclasses.replace(cfg, out=str(second)))
    csv.unlink()
    third = tmp_path / "c.safetensors"
    run(dataclasses.replace(cfg, out=str(third)))
    a, b, c = (load_file(p) for p in (first, second, third))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    halves = load_halves(ensure_photos(folder, cfg.photos, cfg.seed, cfg.width, cfg.height), SIZE)
    assert {f.name for f in dataclasses.fields(halves)} == {"images", "cells", "ids"}  # pixels, pixel targets, names


def test_the_demo_seed_and_shared_photos_are_refused(cfg, tmp_path):
    with pytest.raises(UserError, match="demo"):
        ensure_photos(tmp_path / "p", 2, seed=0, width=256, height=128)
    folder = photo_dir(cfg.photo_root, cfg.photos, cfg.seed, cfg.width, cfg.height)
    with pytest.raises(UserError, match="overlap"):  # a data folder holding our own photos
        run(dataclasses.replace(cfg, out=str(tmp_path / "x.safetensors"), exclude=(str(folder),)))
