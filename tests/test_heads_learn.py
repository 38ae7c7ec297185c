"""The mass heads learn: every direct head gets gradient from the loss, every head starts at the
training fold's answer, presence gating is one model in training and evaluation, and the LR
schedule reaches the rates the flags name."""

import numpy as np
import pytest
import torch

from src.core.config import TrainConfig, resolve
from src.core.targets import TARGETS
from src.losses import build_criterion
from src.losses.regression import HuberDead
from src.models.biomass import BiomassModel
from src.training.optim import LR_FLOOR, build_optimizer, build_scheduler

BASE = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)
HEADS = {
    "default": {},
    "train_dead": {"train_dead": True},
    "no_train_clover": {"train_clover": False},
    "compositional": {"use_compositional": True},
    "planthydra": {"use_planthydra_loss": True},
    "presence": {"use_presence_heads": True},
    "huber": {"use_huber": True},
    "species_prior": {"use_species_head": True, "use_species_prior": True},
    "state_scaling": {"use_state_scaling": True},
}


def _model(fold, **flags):
    cfg = resolve(TrainConfig(**{**BASE, **flags}))
    torch.manual_seed(0)
    return cfg, BiomassModel(cfg, fold["stats"], fold["extras"]), build_criterion(cfg, fold["stats"])


def _head_grads(model, crit, batch) -> torch.Tensor:
    """|d loss / d bias| of the density head's last layer, one per direct head."""
    model.train()
    model.zero_grad()
    loss, _ = crit(model(batch), batch)
    loss.backward()
    return model.head.mlp[-1].bias.grad.abs().clone()


@pytest.mark.parametrize("name", list(HEADS))
def test_every_direct_head_gets_gradient_at_start_and_after_updates(fold, name):
    _, model, crit = _model(fold, **HEADS[name])
    batch = fold["batch"]
    assert (_head_grads(model, crit, batch) > 0).all(), "a head gets no gradient at initialisation"
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        _head_grads(model, crit, batch)
        opt.step()
    assert (_head_grads(model, crit, batch) > 0).all(), "a head lost its gradient during training"
    if "Dry_Total_g" in model.direct:
        # Where a clip would cut it off: the Total head far below Green + Clover (Dead would clip to 0).
        with torch.no_grad():
            model.head.mlp[-1].bias[model.direct.index("Dry_Total_g")] = -6.0
        grads = _head_grads(model, crit, batch)
        assert grads[model.direct.index("Dry_Total_g")] > 0


@pytest.mark.parametrize("name", list(HEADS))
def test_every_head_starts_at_the_training_fold_mean(fold, name):
    cfg, model, _ = _model(fold, **HEADS[name])
    stats = fold["stats"]
    out = model.train()(fold["batch"])
    idx = [TARGETS.index(t) for t in model.direct]
    raw = out["raw"][:, idx]
    if cfg.use_log_transform:  # the log1p loss's space: the mean of log1p(grams)
        np.testing.assert_allclose(torch.log1p(raw).detach(), stats["log_mean"][idx].expand_as(raw),
                                   atol=1e-3 * float(stats["log_std"].min()))  # fmt: skip
    else:
        np.testing.assert_allclose(raw.detach(), stats["mean"][idx].expand_as(raw), atol=1e-3 * float(stats["std"].min()))
        if not cfg.use_compositional:  # derived ones too: means are additive in grams
            np.testing.assert_allclose(out["pred"].detach(), stats["mean"].expand_as(out["pred"]), rtol=1e-4)
    for key in ("height", "ndvi", "logvar"):
        if key in out:
            assert out[key].abs().max() < 1e-6, key
    for key, prior in (("species", "species_freq"), ("state", "state_freq")):
        if key in out:
            want = stats[prior].clamp(min=1e-3) / stats[prior].clamp(min=1e-3).sum()
            np.testing.assert_allclose(out[key].softmax(-1).detach(), want.expand_as(out[key]), atol=1e-4)
    if "presence" in out:
        np.testing.assert_allclose(torch.sigmoid(out["presence"]).detach(), stats["presence"].expand(16, 2), atol=1e-4)


def test_auxiliary_heads_start_at_their_targets_mean(fold):
    _, model, _ = _model(fold, use_height_head=True, use_ndvi_head=True, use_species_head=True, use_uncertainty=True)
    out = model(fold["batch"])
    train = fold["train"]
    np.testing.assert_allclose(out["height_cm"].detach(), np.expm1(np.log1p(train["Height_Ave_cm"]).mean()), rtol=1e-4)
    np.testing.assert_allclose(out["ndvi_value"].detach(), train["Pre_GSHH_NDVI"].mean(), rtol=1e-4)
    assert out["logvar"].abs().max() < 1e-6


def test_presence_gating_is_the_same_in_training_and_evaluation(fold):
    _, model, _ = _model(fold, use_presence_heads=True)
    with torch.no_grad():
        torch.nn.init.normal_(model.aux["presence"][-1].weight, std=0.5)  # presence varies per photo
        torch.nn.init.normal_(model.head.mlp[-1].weight, std=0.3)
        train_pred = model.train()(fold["batch"])["pred"]
        eval_pred = model.eval()(fold["batch"])["pred"]
    torch.testing.assert_close(train_pred, eval_pred)


def test_huber_is_in_the_same_standardised_units_as_the_other_terms(fold):
    """Grams x 10 (with --huber-delta x 10) must not change the loss: it is in units of the std."""
    stats, batch = fold["stats"], fold["batch"]
    out = {"raw": batch["targets"] * 0.7 + 3.0}
    a = HuberDead(TrainConfig(use_huber=True, huber_delta=5.0), stats)(out, batch)
    big = {**stats, "std": stats["std"] * 10}
    b = HuberDead(TrainConfig(use_huber=True, huber_delta=50.0), big)({"raw": out["raw"] * 10},
                                                                       {"targets": batch["targets"] * 10})
    torch.testing.assert_close(a, b)


def _schedule(cfg, epochs=6, steps=5, train_backbone=True):
    model = BiomassModel(cfg)
    opt = build_optimizer(model, cfg, train_backbone)
    sched = build_scheduler(opt, cfg, epochs, steps)
    lrs = []
    for n in range(epochs * steps):
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})  # the LR update n is taken with
        sched.step_update(n + 1)
    return [lr["heads"] for lr in lrs], [lr.get("backbone") for lr in lrs]


@pytest.mark.guards("--lr", "--backbone-lr", "--warmup-epochs")
def test_warmup_rises_to_the_configured_lrs_then_decays_to_a_floor_of_each():
    # values away from the defaults, so a flag whose read fell back to its default would show
    cfg = TrainConfig(**BASE, lr=3e-4, backbone_lr=2e-5, warmup_epochs=2.0)
    heads, backbone = _schedule(cfg)
    peak = int(np.argmax(heads))
    assert heads[peak] == pytest.approx(3e-4) and max(backbone) == pytest.approx(2e-5)
    assert peak == 10 and all(a < b for a, b in zip(heads[:peak], heads[1:peak + 1]))  # warm-up over two epochs
    assert all(a >= b for a, b in zip(heads[peak:], heads[peak + 1:]))  # then only down
    assert heads[-1] == pytest.approx(LR_FLOOR * 3e-4, rel=0.2) and backbone[-1] == pytest.approx(LR_FLOOR * 2e-5, rel=0.2)
    assert heads[0] < 0.05 * 3e-4 and backbone[0] < 0.05 * 2e-5  # warm-up starts low for each group
    # the heads' schedule is theirs alone: --backbone-lr does not move it
    other, _ = _schedule(TrainConfig(**BASE, lr=3e-4, backbone_lr=1e-3, warmup_epochs=2.0))
    assert other == pytest.approx(heads)
    frozen, _ = _schedule(cfg, train_backbone=False)
    assert frozen == pytest.approx(heads)


@pytest.mark.guards("--density-tokens")
def test_with_density_tokens_patch_the_masses_come_from_the_patch_tokens_alone(fold):
    """--density-tokens patch: the CLS token is no input of the density head (the default,
    cls_patch, joins it to every patch: tests/test_token_choices.py)."""
    _, model, _ = _model(fold, density_tokens="patch")
    with torch.no_grad():  # a head that has learnt something (start_at zeroes its input weights)
        torch.nn.init.normal_(model.head.mlp[-1].weight, std=0.3)
        torch.nn.init.normal_(model.head.linear.weight, std=0.3)
    model.eval()
    image = fold["batch"]["image"]
    with torch.no_grad():
        cls, patches = model.tokens(image)
        cached = {"cls": cls.view(len(image), 2, -1), "patches": patches.view(len(image), 2, *patches.shape[1:])}
        pred = model(cached)["pred"]
        other_cls = model({**cached, "cls": torch.randn_like(cached["cls"]) * 3})["pred"]
        other_patches = model({**cached, "patches": cached["patches"].roll(1, dims=0)})["pred"]
    torch.testing.assert_close(other_cls, pred)
    assert (other_patches - pred).abs().max() > 1e-3  # the patches do drive the masses
