"""--use-quantile-heads: per target, 7 bins cut at the training fold's quantiles (a zero-heavy
target's zeros in bin 0, its positive masses cut at their quantiles), learnt by an auxiliary
cross-entropy (--quantile-weight) on the bin of the batch's mass (under mixup the mixed mass's);
the head starts at the bins' prior and its loss trains the shared features."""

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.config import TrainConfig
from src.core.targets import TARGETS
from src.data.fold_stats import QUANTILE_BINS, quantile_bins, quantile_edges
from src.data.mixup import mix
from src.losses import build_criterion
from src.losses.auxiliary import QuantileBins
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
    assert all((np.bincount(bins[:, k], minlength=QUANTILE_BINS) > 0).all() for k in range(5))  # Clover: 1/3 zeros
    other = train.assign(Dry_Total_g=train["Dry_Total_g"] * 10)  # another fold's images: the same edges
    assert (quantile_bins(other[list(TARGETS)].to_numpy(np.float64), edges)[:, 4] == QUANTILE_BINS - 1).mean() > 0.8


def test_a_zero_heavy_target_uses_every_bin():
    """Clover-like: 60% zeros. Plain quantiles put 4 edges at 0 (3 of 7 bins used); the zeros get
    bin 0 and the positive masses share the other 6 equally. A target without zeros keeps the plain
    quantiles."""
    rng = np.random.default_rng(0)
    n = 420
    clover = np.where(rng.random(n) < 0.6, 0.0, rng.gamma(1.5, 8.0, n))
    y = np.stack([rng.gamma(2.0, 10.0, n), rng.gamma(2.0, 5.0, n), clover, rng.gamma(2.0, 12.0, n), rng.gamma(3.0, 15.0, n)], 1)
    edges = quantile_edges(y)
    bins = quantile_bins(y, edges)
    zeros, counts = int((clover == 0).sum()), np.bincount(bins[:, 2], minlength=QUANTILE_BINS)
    assert counts[0] == zeros and (bins[clover == 0, 2] == 0).all()
    share = (n - zeros) / (QUANTILE_BINS - 1)
    assert (np.abs(counts[1:] - share) <= 1).all(), counts
    plain = np.quantile(y[:, 4], np.arange(1, QUANTILE_BINS) / QUANTILE_BINS)
    np.testing.assert_array_equal(edges[4], plain)
    assert (np.abs(np.bincount(bins[:, 4], minlength=QUANTILE_BINS) - n / QUANTILE_BINS) <= 1).all()
    # the loss bins a batch's masses the same way (zeros included)
    stats = {"quantile_edges": torch.tensor(edges, dtype=torch.float32)}
    term = QuantileBins(1.0, stats)
    np.testing.assert_array_equal(term.bins(torch.tensor(y, dtype=torch.float32)).numpy(),
                                  quantile_bins(y.astype(np.float32), edges.astype(np.float32)))


@guards("--use-quantile-heads", "--mixup-alpha")
def test_under_mixup_the_bins_are_the_mixed_masses(fold):
    """The bin the head learns is the bin of the mass the regression learns: a mix of a light and a
    heavy image is in a middle bin, not in the dominant image's."""
    stats = fold["stats"]
    edges = stats["quantile_edges"].double().numpy()
    y = fold["train"][list(TARGETS)].to_numpy(np.float32)
    order = np.argsort(y[:, 4])
    light, heavy = order[:8], order[::-1][:8].copy()
    a = {"targets": torch.tensor(y[heavy]), "species": torch.tensor(heavy)}
    b = {"targets": torch.tensor(y[light]), "species": torch.tensor(light)}
    lam = torch.full((8,), 0.6)
    mixed = mix(a, b, lam)  # the heavy image dominates
    want = quantile_bins(mixed["targets"].double().numpy(), edges)
    assert (want[:, 4] < quantile_bins(y[heavy].astype(np.float64), edges)[:, 4]).any()  # not the dominant image's
    cfg = TrainConfig(**TINY, use_quantile_heads=True)
    term = next(t for t in build_criterion(cfg, stats).terms if t.name == "quantile")
    np.testing.assert_array_equal(term.bins(mixed["targets"]).numpy(), want)
    logits = torch.randn(8, 5 * QUANTILE_BINS)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, QUANTILE_BINS), torch.as_tensor(want).reshape(-1))
    torch.testing.assert_close(term({"quantile": logits}, mixed), expected)


@guards("--use-quantile-heads", "--quantile-weight")
def test_the_head_starts_at_the_prior_and_its_loss_is_weighted(fold):
    cfg = TrainConfig(**TINY, use_quantile_heads=True, quantile_weight=0.5)
    torch.manual_seed(0)
    model = BiomassModel(cfg, fold["stats"], fold["extras"]).train()
    batch = fold["batch"]
    bins = quantile_bins(batch["targets"].double().numpy(), fold["stats"]["quantile_edges"].double().numpy())
    out = model(batch)
    prior = torch.log(fold["stats"]["quantile_freq"].clamp(min=1e-3)).flatten()
    torch.testing.assert_close(out["quantile"], prior.expand_as(out["quantile"]))
    total, parts = build_criterion(cfg, fold["stats"])(out, batch)
    plain, _ = build_criterion(TrainConfig(**TINY), fold["stats"])(out, batch)
    expected = torch.nn.functional.cross_entropy(out["quantile"].reshape(-1, QUANTILE_BINS), torch.as_tensor(bins).reshape(-1))
    torch.testing.assert_close(parts["quantile"], expected)
    torch.testing.assert_close(total - plain, 0.5 * expected)
    total.backward()
    assert model.aux["quantile"][-1].weight.grad.abs().sum() > 0


@guards("--use-quantile-heads", "--quantile-weight")
def test_the_bins_loss_trains_the_shared_features(fold):
    """An auxiliary task shapes the features the masses are read from: the quantile loss alone
    reaches the backbone, and a step on it moves the masses (a head fed detached features would
    learn beside the model, changing nothing)."""
    cfg = TrainConfig(**TINY, use_quantile_heads=True)
    torch.manual_seed(0)
    model = BiomassModel(cfg, fold["stats"], fold["extras"]).train()
    with torch.no_grad():
        for p in model.parameters():  # the heads' last layers start at zero: no gradient flows back through them
            p.add_(torch.randn_like(p) * 0.1)
    before = model(fold["batch"])["pred"].detach()
    _, parts = build_criterion(cfg, fold["stats"])(model(fold["batch"]), fold["batch"])
    parts["quantile"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("backbone.")}
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values()), "the quantile loss never reaches the backbone"
    assert model.head.mlp[-1].weight.grad is None  # the density head is not on its path
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(p.grad, alpha=0.5)
    assert (model(fold["batch"])["pred"] - before).abs().max() > 1e-4


def test_a_two_stage_run_trains_and_validates_the_bins(demo_data, tmp_path):
    """Through the frozen-feature cache (Stage 1, which must carry the bin targets) and the live
    backbone (Stage 2)."""
    run_module.run(TrainConfig(data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"),
                               output_dir=str(tmp_path), folds=[0], freeze_epochs=2, stage1_patience=5, stage2_epochs=1,
                               batch_size=8, num_workers=0, device="cpu", use_quantile_heads=True, **TINY))  # fmt: skip
    hist = pd.read_csv(tmp_path / "fold0/history.csv")
    for col in ("train_quantile", "val_quantile"):
        assert np.isfinite(hist[col]).all() and (hist[col] < np.log(QUANTILE_BINS) + 0.5).all(), hist[col]
