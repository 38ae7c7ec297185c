"""--use-ratio-head: Total predicted, Green/Dead/Clover as softmax shares of it. Masses are
non-negative and both relations exact whatever the weights; the heads start at the training
fold's means; the loss reaches both the Total head and the shares."""

import pytest
import torch

from src.core.config import TrainConfig, validate
from src.core.errors import UserError
from src.core.targets import TARGETS
from src.losses import build_criterion
from src.models.biomass import BiomassModel
from src.training.monitor import Hints

TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)
G, D, C, GDM, T = range(5)


def _model(fold, **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(**TINY, use_ratio_head=True, **kw)
    return cfg, BiomassModel(cfg, fold["stats"], fold["extras"])


@pytest.mark.guards("--use-ratio-head")
def test_masses_obey_the_relations_whatever_the_weights(fold):
    _, model = _model(fold)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # far from the start: a free Dead = Total - GDM would go negative
    raw = model(fold["batch"])["raw"]
    assert (raw >= 0).all()
    torch.testing.assert_close(raw[:, GDM], raw[:, G] + raw[:, C])
    torch.testing.assert_close(raw[:, T], raw[:, G] + raw[:, D] + raw[:, C])
    assert raw[:, [G, D, C]].std(0).min() > 0  # the shares vary with the photo


def test_heads_start_at_the_training_means(fold):
    _, model = _model(fold)
    pred = model.eval()(fold["batch"])["pred"]
    mean, scale = fold["stats"]["mean"].float(), fold["stats"]["std"].float()
    assert ((pred - mean).abs() / scale).max() < 1e-3


def test_the_loss_reaches_the_total_head_and_the_shares(fold):
    cfg, model = _model(fold)
    loss, _ = build_criterion(cfg, fold["stats"])(model.train()(fold["batch"]), fold["batch"])
    loss.backward()
    assert model.head.mlp[-1].bias.grad.abs().sum() > 0 and model.shares.bias.grad.abs().min() > 0
    assert model.shares.weight.grad.abs().sum() > 0  # through the photo's features, not only the bias


@pytest.mark.guards("--use-ratio-head")
def test_the_shares_come_from_the_photo(fold):
    """The composition is the photo's: halves with other features get other shares (a share
    computed from no features, only the bias, would be one composition for every photo)."""
    _, model = _model(fold)
    with torch.no_grad():
        model.shares.weight.normal_(0, 0.5)  # zero at the start (every photo at the mean composition)
        per_half = model.eval()(fold["batch"])["per_half"]  # (B, 2, 3) grams: Total x shares
        share = per_half / per_half.sum(-1, keepdim=True)
    torch.testing.assert_close(share.sum(-1), torch.ones(share.shape[:2]))
    # varies over the halves, for each component (in log space: a small mean share, such as Dead's,
    # varies little in absolute terms)
    assert share.log().flatten(0, 1).std(0).min() > 1e-2, share


@pytest.mark.parametrize("other", [dict(train_dead=True), dict(train_clover=False), dict(use_compositional=True),
                                   dict(use_planthydra_loss=True), dict(use_presence_heads=True)])
def test_head_choices_it_makes_itself_are_refused(other):
    with pytest.raises(UserError, match="--use-ratio-head chooses the heads itself"):
        validate(TrainConfig(use_ratio_head=True, **other), "cli")


def test_no_hint_advises_a_flag_it_refuses():
    hints = Hints(TrainConfig(use_ratio_head=True))
    row = dict(val_loss=1.0, train_loss=1.0, r2_dead=-1.0, r2_clover=0.5)
    assert not any("--train-dead" in m or "--use-presence" in m for e in range(30) for m in hints.check(e, row))
    assert list(TARGETS)[:3] == ["Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g"]
