"""Depth Anything V2 caches, their refusal rules, pixel-aligned augmentation, and depth in the model."""

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from src.core.config import TrainConfig
from src.core.errors import UserError
from src.data.depth import build_cache, cache_path, load_cache, load_for_config, read_metadata
from src.data.schema import load_train
from src.data.transforms import HalfTransform, depth_patch_features
from src.models.biomass import BiomassModel
from src.models.depth_anything import make_tiny


@pytest.fixture(scope="session")
def depth_env(demo_data, tmp_path_factory):
    """A tiny random Depth Anything V2 saved with save_pretrained, and train/test caches built
    from it through from_pretrained(path)."""
    root = tmp_path_factory.mktemp("depth")
    model = str(make_tiny(root / "tiny-da2"))
    reports = {}
    for split in ("train", "test"):
        reports[split] = build_cache(demo_data, split, model, cache_path(root / "cache", "small", split))
    return {"model": model, "cache_dir": root / "cache", "reports": reports}


def test_cache_records_settings_and_reports_correlation(depth_env, demo_data):
    path = cache_path(depth_env["cache_dir"], "small", "train")
    meta = read_metadata(path)
    assert meta["model_id"] == depth_env["model"] and meta["backend"] == "torchvision" and meta["resolution"] == "64"
    report = depth_env["reports"]["train"]
    assert set(report) == {"depth_mean", "depth_std", "depth_relief"}
    assert set(report["depth_mean"]) >= {"Height_Ave_cm", "Dry_Green_g", "Dry_Total_g"}
    assert path.with_suffix(".correlation.json").exists()
    assert depth_env["reports"]["test"] is None  # no labels on test


def test_rerun_with_matching_cache_does_nothing(depth_env, demo_data, capsys):
    path = cache_path(depth_env["cache_dir"], "small", "train")
    before = path.stat().st_mtime_ns
    assert build_cache(demo_data, "train", depth_env["model"], path) is None
    assert "up to date" in capsys.readouterr().out and path.stat().st_mtime_ns == before


def test_cache_with_other_settings_or_missing_is_refused(depth_env, demo_data, tmp_path):
    path = cache_path(depth_env["cache_dir"], "small", "train")
    ids = ["ID_not_there"]
    kw = {"model": depth_env["model"], "backend": "torchvision", "resolution": 64, "command": "REBUILD"}
    with pytest.raises(UserError, match="resolution '64' \\(wanted '128'\\).*REBUILD"):
        load_cache(path, ids, **{**kw, "resolution": 128})
    with pytest.raises(UserError, match="model_id .*Depth-Anything-V2-Base-hf"):
        load_cache(path, ids, **{**kw, "model": "depth-anything/Depth-Anything-V2-Base-hf"})
    with pytest.raises(UserError, match="backend 'torchvision' \\(wanted 'pil'\\)"):
        load_cache(path, ids, **{**kw, "backend": "pil"})
    with pytest.raises(UserError, match="no depth for image ID_not_there"):
        load_cache(path, ids, **kw)
    with pytest.raises(UserError, match="not found; build it with: REBUILD"):
        load_cache(tmp_path / "nope.safetensors", ids, **kw)


@pytest.mark.guards("--depth-model-size")
def test_the_trainer_reads_the_cache_of_its_depth_model_size(depth_env, demo_data, tmp_path):
    base = cache_path(tmp_path, "base", "train")  # only a 'base' cache exists here
    base.parent.mkdir(parents=True)
    shutil.copy(cache_path(depth_env["cache_dir"], "small", "train"), base)
    ids = load_train(demo_data)["image_id"].tolist()
    cfg = lambda size: TrainConfig(data_dir=str(demo_data), depth_cache_dir=str(tmp_path), depth_model=depth_env["model"],  # noqa: E731
                                   depth_model_size=size)  # fmt: skip
    assert load_for_config(cfg("base"), "train", ids).shape[0] == len(ids)
    with pytest.raises(UserError, match="small"):
        load_for_config(cfg("small"), "train", ids)


def test_trainer_names_the_command_that_builds_a_missing_cache(demo_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "src.dinov3_train", "--data-dir", str(demo_data), "--fold-csv",
                           str(demo_data / "trainfold_group_location.csv"), "--backbone-size", "tiny",
                           "--depth-cache-dir", str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert "python -m src.depth_cache --data-dir" in proc.stderr and "--split train" in proc.stderr


def _pattern(size=128):
    """An asymmetric bright blob on a dark background: its position shows every flip/rotation."""
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-(((yy - 0.25 * size) ** 2) + (xx - 0.3 * size) ** 2) / (2 * (0.08 * size) ** 2))
    blob += 0.6 * np.exp(-(((yy - 0.7 * size) ** 2) + (xx - 0.8 * size) ** 2) / (2 * (0.05 * size) ** 2))
    return blob.astype(np.float32)


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_geometric_augmentation_moves_depth_with_the_pixels():
    size = 128
    half = _pattern(size)
    img = np.concatenate([half, half], axis=1)
    rgb = (np.stack([img] * 3, axis=-1) * 200 + 20).astype(np.uint8)
    depth = np.stack([half, half])  # the cached (2, R, R) maps look exactly like the pixels
    tf = HalfTransform(size=64, train=True, strong_aug=True, perspective=True)
    moved = 0
    for seed in range(24):
        out = tf(rgb, seed, depth)
        image, feats = out["image"], out["depth"]
        brightness = image[0].float().mean(0).numpy()  # left half
        pixel_grid = depth_patch_features(brightness)[0]
        assert _corr(pixel_grid, feats[0, 0].numpy()) > 0.8, seed
        unaugmented = depth_patch_features(cv2.resize(half, (64, 64), interpolation=cv2.INTER_AREA))[0]
        moved += _corr(pixel_grid, unaugmented) < 0.5
    assert moved >= 6  # the augmentation really moved things, so the check above had teeth


def test_validation_transform_keeps_depth_as_is():
    half = _pattern(128)
    img = (np.stack([np.concatenate([half, half], 1)] * 3, -1) * 200).astype(np.uint8)
    feats = HalfTransform(size=64, train=False)(img, 0, np.stack([half, half]))["depth"]
    assert feats.shape == (2, 2, 4, 4)
    expected = depth_patch_features(cv2.resize(half, (64, 64), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_allclose(feats[0].numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.guards("--use-depth", "--no-use-depth", "--depth-attention", "--no-depth-attention")
def test_depth_modules_join_and_leave_the_graph():
    base = dict(backbone_size="tiny", backbone_weights="none", image_size=32)
    off = BiomassModel(TrainConfig(**base, use_depth=False))
    feats_only = BiomassModel(TrainConfig(**base, use_depth=True, depth_attention=False))
    full = BiomassModel(TrainConfig(**base, use_depth=True, depth_attention=True))
    keys = lambda m: {k.split(".")[0] for k in m.state_dict()}  # noqa: E731
    assert "depth_features" not in keys(off) and "depth_attention" not in keys(off)
    assert "depth_features" in keys(feats_only) and "depth_attention" not in keys(feats_only)
    assert {"depth_features", "depth_attention"} <= keys(full)
    x = torch.rand(3, 2, 3, 32, 32) * 255
    d = torch.randn(3, 2, 2, 2, 2)
    with pytest.raises(ValueError, match="depth"):
        full({"image": x})
    torch.manual_seed(0)
    for p in list(full.depth_features.parameters()) + list(full.depth_attention.parameters()):
        torch.nn.init.normal_(p, std=0.5)
    a, b = full({"image": x, "depth": d})["pred"], full({"image": x, "depth": -d})["pred"]
    assert not torch.allclose(a, b)  # different depth -> different prediction
    w = full.depth_attention(d.flatten(0, 1))
    assert w.shape == (6, 4) and torch.allclose(w.sum(-1), torch.ones(6))
    assert not torch.allclose(w, torch.full_like(w, 0.25))  # learned weights are not uniform


def test_training_with_depth_and_depth_attention_finishes(depth_env, demo_data, tmp_path):
    out = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-m", "src.dinov3_train", "--data-dir", str(demo_data), "--fold-csv",
                           str(demo_data / "trainfold_group_location.csv"), "--backbone-size", "tiny",
                           "--backbone-weights", "none", "--image-size", "32", "--num-workers", "0",
                           "--depth-cache-dir", str(depth_env["cache_dir"]), "--depth-model", depth_env["model"],
                           "--folds", "0", "--freeze-epochs", "2", "--stage2-epochs", "1", "--batch-size", "8",
                           "--output-dir", str(out)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors.torch import load_file

    w = load_file(str(out / "fold0/best.safetensors"))
    assert any(k.startswith("depth_attention.") for k in w) and any(k.startswith("depth_features.") for k in w)
    assert float(w["depth_features.proj.weight"].abs().sum()) > 0  # depth was trained, not left at its no-op init
