"""What the run-shaping flags change in learning: stages and patience, batch and accumulation,
clipping, seed, folds, pad-to-square, gradient checkpointing, loss weights and loss shapes.

Each test is marked with the flags it guards: ``tests/mutation/check.py`` removes a flag's
effect and expects one of them to fail.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from src.core.config import TrainConfig, resolve
from src.core.targets import TARGETS
from src.data.folds import make_folds
from src.data.photos import check_photos
from src.data.schema import load_train
from src.data.synth import generate
from src.losses import build_criterion
from src.models.biomass import BiomassModel
from src.training import fit
from src.training import run as run_module
from src.training.fit import plan_stages

guards = pytest.mark.guards
TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)


def _run(data, out, **kw) -> dict[str, torch.Tensor]:
    """One fold of a tiny in-process run; its last weights."""
    settings = dict(data_dir=str(data), fold_csv=str(data / "trainfold_group_location.csv"), output_dir=str(out),
                    folds=[0], two_stage=False, epochs=1, batch_size=8, num_workers=0, device="cpu", **TINY)
    run_module.run(TrainConfig(**{**settings, **kw}))
    return load_file(str(out / "fold0/last.safetensors"))


def _same(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


# --- stages -------------------------------------------------------------------------------------
@guards("--two-stage", "--no-two-stage", "--freeze-epochs", "--stage2-epochs", "--epochs", "--freeze-backbone",
        "--stage1-patience")  # fmt: skip
def test_stage_plan_follows_the_epoch_flags():
    plan = lambda **kw: [(s.name, s.epochs, s.train_backbone, s.patience) for s in plan_stages(TrainConfig(**kw))]  # noqa: E731
    assert plan(freeze_epochs=3, stage2_epochs=2, stage1_patience=4) == [("stage1", 3, False, 4), ("stage2", 2, True, None)]
    assert plan(freeze_backbone=True)[1][2] is False  # two stages, backbone never trained
    assert plan(two_stage=False, epochs=7) == [("single", 7, True, None)]
    assert plan(two_stage=False, epochs=7, freeze_backbone=True) == [("single", 7, False, None)]


@guards("--stage1-patience", "--freeze-epochs", "--stage2-epochs")
def test_stage1_ends_after_patience_epochs_without_gain(demo_data, tmp_path, monkeypatch):
    """A validation score that only falls: Stage 1 ends after --stage1-patience epochs without gain."""
    real, calls = fit.summary, []

    def falling(*args, **kw):
        calls.append(1)
        return {**real(*args, **kw), "weighted_r2": -float(len(calls))}

    monkeypatch.setattr(fit, "summary", falling)
    _run(demo_data, tmp_path / "m", two_stage=True, freeze_epochs=6, stage1_patience=2, stage2_epochs=1)
    stages = pd.read_csv(tmp_path / "m/fold0/history.csv")["stage"].tolist()
    assert stages == ["stage1"] * 3 + ["stage2"], stages


# --- batches, accumulation, clipping, seed ------------------------------------------------------
@guards("--grad-accum", "--batch-size", "--folds", "--output-dir")
def test_accumulating_two_batches_of_8_is_one_batch_of_16(demo_data, tmp_path):
    """The same images make each update (the sampler's order does not depend on the batch), so
    8 x --grad-accum 2 learns what 16 x 1 learns, and 8 x 1 (twice the updates) does not."""
    b16 = _run(demo_data, tmp_path / "b16", batch_size=16)
    b8x2 = _run(demo_data, tmp_path / "b8x2", batch_size=8, grad_accum=2)
    b8 = _run(demo_data, tmp_path / "b8", batch_size=8)
    assert _same(b16, b8x2, atol=1e-5)
    assert not _same(b16, b8, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "b16").glob("fold*")) == ["fold0"]  # --folds 0: that fold only


@guards("--grad-clip")
def test_grad_clip_changes_the_updates(demo_data, tmp_path):
    loose = _run(demo_data, tmp_path / "loose", grad_clip=0.0)
    tight = _run(demo_data, tmp_path / "tight", grad_clip=1e-4)
    assert not _same(loose, tight, atol=1e-6)


@guards("--seed")
def test_seed_sets_the_model_initialisation(demo_data, tmp_path):
    """A frozen random backbone keeps its initial weights: they follow --seed, and only --seed."""
    frozen = dict(freeze_backbone=True, feature_cache_views=1)
    w1 = _run(demo_data, tmp_path / "s1", seed=1, **frozen)
    w1_again = _run(demo_data, tmp_path / "s1b", seed=1, **frozen)
    w2 = _run(demo_data, tmp_path / "s2", seed=2, **frozen)
    key = "backbone.blocks.0.attn.qkv.weight"
    assert torch.equal(w1[key], w1_again[key]) and not torch.equal(w1[key], w2[key])
    assert _same(w1, w1_again)


# --- pad-to-square --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oblong(tmp_path_factory):
    """Photos 3:1 (halves 3:2), unlike the real 2:1 ones."""
    out = tmp_path_factory.mktemp("oblong")
    generate(out, n_train=24, n_test=0, seed=3, width=288, height=96)
    make_folds(load_train(out), n_folds=3, strategy="group_location", seed=42).to_csv(
        out / "trainfold_group_location.csv", index=False)
    return out


@guards("--use-pad-to-square")
def test_pad_to_square_changes_what_is_learnt_from_oblong_halves(oblong, tmp_path):
    stretched = _run(oblong, tmp_path / "stretch", n_folds=3)
    padded = _run(oblong, tmp_path / "pad", n_folds=3, use_pad_to_square=True)
    assert not _same(stretched, padded, atol=1e-6)


@guards("--use-pad-to-square")
def test_pad_to_square_on_square_halves_says_it_cannot_act(demo_data, oblong):
    notes = lambda data, **kw: run_module.data_notes(TrainConfig(**kw), check_photos(data, load_train(data)))  # noqa: E731
    said = " ".join(notes(demo_data, use_pad_to_square=True))
    assert "--use-pad-to-square acts only on photos whose halves are not square; these photos are 256x128" in said
    assert notes(oblong, use_pad_to_square=True) == [] and notes(demo_data) == []


# --- gradient checkpointing -----------------------------------------------------------------------
@guards("--gradient-checkpointing")
def test_gradient_checkpointing_recomputes_the_blocks_in_backward():
    """Same gradients; each block runs twice per step (forward, then again in backward)."""
    x = {"image": torch.rand(2, 2, 3, 32, 32) * 255}
    grads, calls = {}, {}
    for on in (False, True):
        torch.manual_seed(0)
        model = BiomassModel(TrainConfig(**TINY, gradient_checkpointing=on))
        with torch.no_grad():
            torch.nn.init.normal_(model.head.linear.weight, std=0.1)
        model.train()
        n = []
        model.backbone.blocks[0].attn.register_forward_hook(lambda *_, n=n: n.append(1))
        model(x)["raw"].sum().backward()
        calls[on] = len(n)
        grads[on] = model.backbone.blocks[0].attn.qkv.weight.grad.clone()
    assert calls == {False: 1, True: 2}
    torch.testing.assert_close(grads[True], grads[False])


# --- loss weights and shapes ----------------------------------------------------------------------
WEIGHTED = {  # weight flag: (the flags that turn its term on, the term)
    "--cosine-weight": ({"use_cosine_sim": True}, "cosine"),
    "--compositional-weight": ({"use_compositional": True}, "compositional"),
    "--mass-balance-weight": ({"use_compositional": True, "use_mass_balance": True}, "mass_balance"),
    "--height-weight": ({"use_height_head": True}, "height"),
    "--ndvi-weight": ({"use_ndvi_head": True}, "ndvi"),
    "--aux-species-weight": ({"use_species_head": True}, "species"),
    "--aos-weight": ({"use_ndvi_head": True, "use_aos_hallucination": True}, "aos"),
    "--cross-view-weight": ({"use_cross_view_consistency": True}, "cross_view"),
    "--qc-weight": ({"use_qc_plausibility": True}, "qc"),
}


@pytest.mark.parametrize("weight_flag", [pytest.param(f, marks=guards(f)) for f in WEIGHTED])
def test_weight_flag_scales_its_term_in_the_loss(fold, weight_flag):
    """The total loss moves by (w2 - w1) x the term when only the term's weight changes."""
    flags, term = WEIGHTED[weight_flag]
    field = weight_flag[2:].replace("-", "_")
    torch.manual_seed(0)
    cfg = resolve(TrainConfig(**TINY, **flags))
    model = BiomassModel(cfg, fold["stats"], fold["extras"])
    with torch.no_grad():  # a model some way into training: the terms are not all at their minimum
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.train()
    torch.manual_seed(1)
    outputs = model(fold["batch"])
    totals = {}
    for w in (0.0, 0.7):
        total, parts = build_criterion(resolve(TrainConfig(**TINY, **flags, **{field: w})), fold["stats"])(
            outputs, fold["batch"])
        totals[w] = float(total.detach())
    assert float(parts[term].detach()) > 0
    assert totals[0.7] - totals[0.0] == pytest.approx(0.7 * float(parts[term].detach()), rel=1e-4)


def _errors_of(fold, sigmas: float) -> dict:
    """Outputs that miss every target by ``sigmas`` training-fold standard deviations."""
    y = fold["batch"]["targets"]
    return {"raw": y + sigmas * fold["stats"]["std"].float()}


@guards("--smoothl1", "--no-smoothl1")
def test_no_smoothl1_is_mse_on_standardised_grams(fold):
    out = _errors_of(fold, 3.0)  # 3 standard deviations off: MSE 9, SmoothL1 2.5
    _, mse = build_criterion(TrainConfig(**TINY, smoothl1=False), fold["stats"])(out, fold["batch"])
    _, sl1 = build_criterion(TrainConfig(**TINY), fold["stats"])(out, fold["batch"])
    assert set(mse) == {"mse"} and float(mse["mse"]) == pytest.approx(9.0, rel=1e-4)
    assert set(sl1) == {"smoothl1"} and float(sl1["smoothl1"]) == pytest.approx(2.5, rel=1e-4)


@guards("--huber-delta", "--use-huber")
def test_huber_delta_is_in_grams(fold):
    """Dead off by 2 std: a delta above the error is quadratic, a delta below it linear."""
    out = _errors_of(fold, 2.0)
    dead_std = float(fold["stats"]["std"][TARGETS.index("Dry_Dead_g")])
    part = lambda delta: float(build_criterion(TrainConfig(**TINY, use_huber=True, huber_delta=delta),  # noqa: E731
                                               fold["stats"])(out, fold["batch"])[1]["huber_dead"])
    assert part(10 * dead_std) == pytest.approx(0.5 * 2.0**2, rel=1e-4)
    assert part(0.5 * dead_std) == pytest.approx(0.5 * (2.0 - 0.25), rel=1e-4)  # delta (|e| - delta / 2)
    np.testing.assert_array_less(part(0.5 * dead_std), part(10 * dead_std))


# --- which heads are direct -----------------------------------------------------------------------
@guards("--train-dead", "--no-train-dead", "--train-clover", "--no-train-clover")
@pytest.mark.parametrize("flags, direct", [
    ({}, ("Dry_Green_g", "Dry_Clover_g", "Dry_Total_g")),
    ({"train_dead": True}, ("Dry_Green_g", "Dry_Clover_g", "Dry_Dead_g")),
    ({"train_clover": False}, ("Dry_Green_g", "GDM_g", "Dry_Total_g")),
])  # fmt: skip
def test_train_dead_and_train_clover_choose_the_direct_heads(fold, flags, direct):
    """Moving one direct head moves the targets derived from it, and only those."""
    torch.manual_seed(0)
    model = BiomassModel(TrainConfig(**TINY, **flags), fold["stats"], fold["extras"]).train()
    assert model.direct == direct
    x = {"image": fold["batch"]["image"]}
    before = model(x)["raw"].detach()
    with torch.no_grad():
        model.head.mlp[-1].bias[-1] += 1.0  # the last direct head: Total, or Dead
    moved = (model(x)["raw"].detach() - before).abs().mean(0) > 1e-4
    derived_from_last = {"Dry_Total_g": {"Dry_Total_g", "Dry_Dead_g"}, "Dry_Dead_g": {"Dry_Dead_g", "Dry_Total_g"}}
    assert {t for t, m in zip(TARGETS, moved.tolist()) if m} == derived_from_last[direct[-1]]
