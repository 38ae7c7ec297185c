"""The frozen-feature cache: same validation numbers as the live backbone, far fewer backbone
passes, training views drawn with the training augmentation."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from src.core.config import TrainConfig
from src.data.dataset import BiomassDataset
from src.data.fold_stats import aux_targets, fold_statistics, vocabularies
from src.data.schema import load_train
from src.data.transforms import HalfTransform
from src.losses import build_criterion
from src.models.biomass import BiomassModel
from src.training import run as run_module
from src.training.distributed import DistInfo
from src.training.engine import evaluate
from src.training.feature_cache import CachedValidation, FeatureCache


@pytest.mark.parametrize("flag", [
    pytest.param("strong_aug", marks=pytest.mark.guards("--strong-aug", "--no-strong-aug")),
    pytest.param("use_perspective_jitter", marks=pytest.mark.guards("--use-perspective-jitter")),
    pytest.param("use_border_mask", marks=pytest.mark.guards("--use-border-mask")),
])  # fmt: skip
def test_cached_stage1_sees_the_training_augmentation(demo_data, tmp_path, flag):
    """Head-only training on the feature cache (guide Phase 1.2): each augmentation flag changes
    what the heads learn, as it does on the live backbone."""
    weights = {}
    for on in (True, False):
        cfg = TrainConfig(data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"),
                          output_dir=str(tmp_path / f"{flag}{on}"), backbone_size="tiny", backbone_weights="none",
                          image_size=32, use_depth=False, folds=[0], two_stage=False, freeze_backbone=True, epochs=2,
                          batch_size=8, num_workers=0, device="cpu", feature_cache_views=2, **{flag: on})  # fmt: skip
        run_module.run(cfg)
        weights[on] = load_file(str(tmp_path / f"{flag}{on}" / "fold0/last.safetensors"))["head.linear.weight"]
    assert not torch.equal(weights[True], weights[False])


def test_cache_views_are_the_training_datasets_draws(demo_data):
    """View v of image i is the training dataset's sample for epoch v: augmented, and exact."""
    images = load_train(demo_data).iloc[:6]
    cfg = TrainConfig(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False)
    torch.manual_seed(0)
    model = BiomassModel(cfg)
    model.freeze_backbone(True)
    ds = BiomassDataset(images, demo_data, HalfTransform(size=32, train=True, strong_aug=True), seed=3)
    cache = FeatureCache(model, ds, 2, DistInfo(), 4, "test")
    with torch.no_grad():
        for v in range(2):
            _, patches = model.tokens(torch.stack([ds[v * len(ds) + i]["image"] for i in range(len(ds))]))
            torch.testing.assert_close(cache.patches[v], patches.view(len(ds), 2, *patches.shape[1:]))
    assert not torch.equal(cache.patches[0], cache.patches[1])


def test_cached_validation_equals_the_live_backbone(demo_data):
    images = load_train(demo_data)
    extras = vocabularies(images)
    stats = fold_statistics(images, extras)
    cfg = TrainConfig(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, use_height_head=True)
    torch.manual_seed(0)
    model = BiomassModel(cfg, stats, extras)
    model.freeze_backbone(True)
    ds = BiomassDataset(images, demo_data, HalfTransform(size=32, train=False), aux=aux_targets(images, stats, extras))
    crit = build_criterion(cfg, stats)
    live, live_loss = evaluate(model, DataLoader(ds, batch_size=8), crit, torch.device("cpu"))
    cache = FeatureCache(model, ds, 1, DistInfo(), 8, "test")
    cached, cached_loss = evaluate(model, CachedValidation(cache, 8), crit, torch.device("cpu"))
    np.testing.assert_allclose(cached["pred"], live["pred"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached["height_cm"], live["height_cm"], rtol=1e-5, atol=1e-5)
    assert cached_loss == pytest.approx(live_loss, rel=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_stage1_runs_the_backbone_once_per_view_not_per_epoch(demo_data, tmp_path, monkeypatch, use_cache):
    calls = []
    original = BiomassModel.tokens
    monkeypatch.setattr(BiomassModel, "tokens", lambda self, x: calls.append(len(x)) or original(self, x))
    cfg = TrainConfig(data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"),
                      output_dir=str(tmp_path), backbone_size="tiny", backbone_weights="none", image_size=32,
                      use_depth=False, folds=[0], freeze_epochs=6, stage1_patience=10, stage2_epochs=0, batch_size=8,
                      num_workers=0, device="cpu", feature_cache=use_cache, feature_cache_views=2)  # fmt: skip
    run_module.run(cfg)
    images = len(load_train(demo_data))
    seen = sum(calls)  # images through the backbone
    if use_cache:
        assert seen <= 2 * images  # training images x 2 views + validation images, once
    else:
        assert seen >= 5 * images  # 6 epochs of training + validation images


def test_a_cache_too_big_for_ram_is_refused_with_the_fix(demo_data, monkeypatch):
    from src.core.errors import UserError
    from src.training import feature_cache

    images = load_train(demo_data)
    cfg = TrainConfig(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False)
    model = BiomassModel(cfg)
    ds = BiomassDataset(images, demo_data, HalfTransform(size=32, train=False))
    # tiny tokens: 2 halves x (1 cls + 4 patches) x 32 dims x 4 bytes = 1280 bytes per image and view
    need = len(images) * 3 * 1280
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(feature_cache, "available_memory", lambda: int(need * 2 / 0.8) + 1)
    assert FeatureCache(model, ds, 3, DistInfo(), 8, "fits").views == 3
    monkeypatch.setattr(feature_cache, "available_memory", lambda: int(need * 2 / 0.8) - 1)
    with pytest.raises(UserError, match=r"too big: needs .* x 2 rank\(s\).*fewer --feature-cache-views"):
        FeatureCache(model, ds, 3, DistInfo(), 8, "too big")
