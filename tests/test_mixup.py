"""Mixup (src/data/mixup.py): an item is the Beta-weighted mix of two plain items, chosen from
(seed, epoch, image) alone; the trainer's batches carry mixed masses in both the cached (frozen)
and the live stage; bad values are refused. DDP == one process: tests/test_training.py."""

import numpy as np
import pytest
import torch

from src.core.config import TrainConfig, validate
from src.core.errors import UserError
from src.core.targets import TARGETS
from src.data.dataset import BiomassDataset
from src.data.fold_stats import aux_targets, fold_statistics, vocabularies
from src.data.mixup import Mixup
from src.data.schema import load_train
from src.data.transforms import HalfTransform
from src.models.biomass import BiomassModel
from src.training import run as run_module

guards = pytest.mark.guards
TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)


def _dataset(data, mixup):
    images = load_train(data)
    extras = vocabularies(images)
    stats = fold_statistics(images, extras)
    return BiomassDataset(images, data, HalfTransform(size=32, train=True), seed=3,
                          aux=aux_targets(images, stats, extras), mixup=mixup)  # fmt: skip


@guards("--mixup-alpha", "--mixup-prob")
def test_an_item_is_the_weighted_mix_of_two_plain_items(demo_data):
    mixup = Mixup.of(TrainConfig(mixup_alpha=0.4, mixup_prob=1.0), seed=3)
    ds = _dataset(demo_data, mixup)
    n, epoch = len(ds), 2
    weights = []
    for i in range(8):
        j, lam = mixup.plan(epoch, i, n)
        assert j != i
        weights.append(lam)
        item = ds[epoch * n + i]
        with ds.unmixed():
            a, b = ds[epoch * n + i], ds[epoch * n + j]
        torch.testing.assert_close(item["image"], lam * a["image"].float() + (1 - lam) * b["image"].float())
        torch.testing.assert_close(item["targets"], lam * a["targets"] + (1 - lam) * b["targets"])
        assert item["species"] == (a if lam >= 0.5 else b)["species"] and item["index"] == i
    assert len(set(weights)) == 8 and mixup.plan(epoch, 0, n) == mixup.plan(epoch, 0, n)  # drawn, reproducibly
    assert mixup.plan(epoch + 1, 0, n) != mixup.plan(epoch, 0, n)


@guards("--mixup-alpha")
def test_the_trainer_sees_mixed_masses_in_the_cached_and_the_live_stage(demo_data, tmp_path, monkeypatch):
    seen, real = [], BiomassModel.forward

    def spy(self, batch):
        if self.training:
            seen.append(("patches" in batch, batch["targets"].clone()))
        return real(self, batch)

    monkeypatch.setattr(BiomassModel, "forward", spy)
    run_module.run(TrainConfig(data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"),
                               output_dir=str(tmp_path), folds=[0], freeze_epochs=1, stage1_patience=5, stage2_epochs=1,
                               batch_size=8, num_workers=0, device="cpu", mixup_alpha=2.0, mixup_prob=1.0, **TINY))  # fmt: skip
    truth = load_train(demo_data)[list(TARGETS)].to_numpy(np.float32)
    for cached in (True, False):
        rows = torch.cat([t for c, t in seen if c == cached]).numpy()
        plain = [np.isclose(truth, r, rtol=0, atol=1e-3).all(1).any() for r in rows]
        assert len(rows) and not any(plain), (cached, sum(plain))  # every row a mix (Beta(2, 2): none near 0 or 1)


@pytest.mark.parametrize("kw", [dict(mixup_alpha=-1.0), dict(mixup_prob=1.5)])
def test_bad_mixup_values_are_refused(kw):
    with pytest.raises(UserError, match="--mixup"):
        validate(TrainConfig(**kw), "cli")
