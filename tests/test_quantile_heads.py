"""--use-quantile-heads: per target, 7 bins cut at the training fold's quantiles, learnt by an
auxiliary cross-entropy (--quantile-weight); the head starts at the bins' prior."""

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.config import TrainConfig
from src.core.targets import TARGETS
from src.data.fold_stats import QUANTILE_BINS, aux_targets, quantile_bins
from src.losses import build_criterion
from src.models.biomass import BiomassModel
from src.training import run as run_module

TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)
guards = pytest.mark.guards


def test_bins_are_the_training_folds_quantiles(fold):
    train = fold["train"]
    edges = fold["stats"]["quantile_edges"].double().numpy()
    assert edges.shape == (5, QUANTILE_BINS - 1) and (np.diff(edges, axis=1) >= 0).all()
    bins = quantile_bins(train[list(TARGETS)].to_numpy(np.float64), edges)
    total = bins[:, TARGETS.index("Dry_Total_g")]
    counts = np.bincount(total, minlength=QUANTILE_BINS)
    assert counts.min() >= len(train) // QUANTILE_BINS - 2 and counts.max() <= len(train) // QUANTILE_BINS + 3
    other = train.assign(Dry_Total_g=train["Dry_Total_g"] * 10)  # another fold's images: the same edges
    assert (aux_targets(other, fold["stats"], fold["extras"])["quantile"][:, 4] == QUANTILE_BINS - 1).mean() > 0.8


@guards("--use-quantile-heads", "--quantile-weight")
def test_the_head_starts_at_the_prior_and_its_loss_is_weighted(fold):
    cfg = TrainConfig(**TINY, use_quantile_heads=True, quantile_weight=0.5)
    torch.manual_seed(0)
    model = BiomassModel(cfg, fold["stats"], fold["extras"]).train()
    bins = aux_targets(fold["train"], fold["stats"], fold["extras"])["quantile"][:16]
    batch = dict(fold["batch"], quantile=torch.as_tensor(bins))
    out = model(batch)
    prior = torch.log(fold["stats"]["quantile_freq"].clamp(min=1e-3)).flatten()
    torch.testing.assert_close(out["quantile"], prior.expand_as(out["quantile"]))
    total, parts = build_criterion(cfg, fold["stats"])(out, batch)
    plain, _ = build_criterion(TrainConfig(**TINY), fold["stats"])(out, batch)
    expected = torch.nn.functional.cross_entropy(out["quantile"].reshape(-1, QUANTILE_BINS), batch["quantile"].reshape(-1))
    torch.testing.assert_close(parts["quantile"], expected)
    torch.testing.assert_close(total - plain, 0.5 * expected)
    total.backward()
    assert model.aux["quantile"][-1].weight.grad.abs().sum() > 0


def test_a_two_stage_run_trains_and_validates_the_bins(demo_data, tmp_path):
    """Through the frozen-feature cache (Stage 1, which must carry the bin targets) and the live
    backbone (Stage 2)."""
    run_module.run(TrainConfig(data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"),
                               output_dir=str(tmp_path), folds=[0], freeze_epochs=2, stage1_patience=5, stage2_epochs=1,
                               batch_size=8, num_workers=0, device="cpu", use_quantile_heads=True, **TINY))  # fmt: skip
    hist = pd.read_csv(tmp_path / "fold0/history.csv")
    for col in ("train_quantile", "val_quantile"):
        assert np.isfinite(hist[col]).all() and (hist[col] < np.log(QUANTILE_BINS) + 0.5).all(), hist[col]
