"""Every experiment of the guide changes the computation, composes with the others, and runs."""

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.config import TrainConfig, parse_config, resolve
from src.core.errors import UserError
from src.core.targets import TARGETS
from src.data.depth import build_cache, cache_path
from src.losses import build_criterion
from src.models.biomass import BiomassModel
from src.models.depth_anything import make_tiny

BASE = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)

# flags -> (loss terms it adds, aux heads / modules it adds)
FEATURES = {
    "log_transform": ({"use_log_transform": True}, {"smoothl1_log"}, set()),
    "cosine": ({"use_cosine_sim": True}, {"cosine"}, set()),
    "compositional": ({"use_compositional": True}, {"compositional"}, set()),
    "planthydra": ({"use_planthydra_loss": True}, {"smoothl1_log", "cosine", "compositional"}, set()),
    "mass_balance": ({"use_mass_balance": True}, {"mass_balance"}, set()),
    "huber": ({"use_huber": True}, {"huber_dead"}, set()),
    "height": ({"use_height_head": True}, {"height"}, {"aux.height"}),
    "ndvi": ({"use_ndvi_head": True}, {"ndvi"}, {"aux.ndvi"}),
    "species": ({"use_species_head": True}, {"species"}, {"aux.species"}),
    "species_prior": ({"use_species_head": True, "use_species_prior": True}, {"species"}, {"aux.species", "species_prior"}),
    "aos": ({"use_ndvi_head": True, "use_aos_hallucination": True}, {"ndvi", "aos"}, {"aux.ndvi"}),
    "state_scaling": ({"use_state_scaling": True}, {"state"}, {"aux.state", "state_scaling"}),
    "uncertainty": ({"use_uncertainty": True}, {"nll"}, {"aux.logvar"}),
    "qc": ({"use_qc_plausibility": True}, {"qc"}, set()),
    "presence": ({"use_presence_heads": True}, {"presence"}, {"aux.presence"}),
    "cross_view": ({"use_cross_view_consistency": True}, {"cross_view"}, set()),
}
DEFAULT_TERMS = {"smoothl1"}
GUARDS = {"log_transform": "--use-log-transform", "cosine": "--use-cosine-sim", "compositional": "--use-compositional",
          "planthydra": "--use-planthydra-loss", "mass_balance": "--use-mass-balance", "huber": "--use-huber",
          "height": "--use-height-head", "ndvi": "--use-ndvi-head", "species": "--use-species-head",
          "species_prior": "--use-species-prior", "aos": "--use-aos-hallucination", "state_scaling": "--use-state-scaling",
          "uncertainty": "--use-uncertainty", "qc": "--use-qc-plausibility", "presence": "--use-presence-heads",
          "cross_view": "--use-cross-view-consistency"}  # fmt: skip


def _build(fold, low_total: bool = False, **flags):
    """A model as it is some way into training: heads start at the data's means with a zero last
    layer, which would make every photo's prediction the same; random last layers stand in."""
    cfg = resolve(TrainConfig(**{**BASE, **flags}))
    torch.manual_seed(0)
    model = BiomassModel(cfg, fold["stats"], fold["extras"])
    with torch.no_grad():
        for last in [model.head.mlp[-1], *(h[-1] for h in model.aux.values())]:
            torch.nn.init.normal_(last.weight, std=0.3)
    if low_total:  # Total's head starts far below Green + Clover: the physical penalties have work to do
        with torch.no_grad():
            model.head.mlp[-1].bias[model.direct.index("Dry_Total_g")] = -6.0
    return cfg, model, build_criterion(cfg, fold["stats"])


def _step(model, crit, batch, steps: int = 2):
    """The loss parts of the first step, and the weights after ``steps`` SGD steps (heads start with
    a zero last layer, so the first step moves only that layer; the second reaches the backbone)."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss, parts = crit(model(batch), batch)
        loss.backward()
        opt.step()
        first = first or parts
    return first, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.guards(GUARDS[n], "--smoothl1")) for n in FEATURES])
def test_feature_changes_the_computation_and_off_removes_it(fold, name):
    flags, terms, modules = FEATURES[name]
    low = name in ("mass_balance", "qc")
    _, default_model, default_crit = _build(fold, low_total=low)
    _, model, crit = _build(fold, low_total=low, **flags)
    default_parts, default_after = _step(default_model, default_crit, fold["batch"])
    parts, after = _step(model, crit, fold["batch"])
    assert set(default_parts) == DEFAULT_TERMS
    assert terms <= set(parts), (set(parts), terms)
    for t in terms:
        assert torch.isfinite(parts[t]) and float(parts[t].detach()) > 0, (t, float(parts[t].detach()))
    keys = set(after)
    for m in modules:
        assert any(k.startswith(m) for k in keys), m
        assert not any(k.startswith(m) for k in default_after), m
    # what the model learns differs: the shared weights (backbone, density head) move differently
    shared = [k for k in default_after if k in after and k.startswith(("head.", "backbone."))
              and after[k].shape == default_after[k].shape]
    assert any(not torch.allclose(after[k], default_after[k]) for k in shared), "the feature did not change learning"


def test_forward_changing_features_change_predictions(fold):
    x = {"image": fold["batch"]["image"]}
    _, base, _ = _build(fold)
    base.eval()
    ref = base(x)["pred"]
    for flags in ({"use_compositional": True}, {"use_species_head": True, "use_species_prior": True},
                  {"use_presence_heads": True}, {"use_state_scaling": True}):  # fmt: skip
        _, m, _ = _build(fold, **flags)
        m.eval()
        if "state_scaling" in dict(m.named_children()):
            torch.nn.init.normal_(m.state_scaling.log_scale, std=0.5)
        assert not torch.allclose(m(x)["pred"], ref), flags


def test_outputs_stay_consistent_and_non_negative_with_every_feature(fold):
    every = {k: v for flags, _, _ in FEATURES.values() for k, v in flags.items()}
    cfg, model, crit = _build(fold, **every)
    model.eval()
    out = model({"image": fold["batch"]["image"]})
    p = out["pred"]
    g, d, c, gdm, tot = p.unbind(-1)
    assert (p >= 0).all() and torch.allclose(gdm, g + c, atol=1e-4) and torch.allclose(tot, g + d + c, atol=1e-4)
    assert {"height_cm", "ndvi_value", "pred_std"} <= set(out)
    model.train()
    loss, parts = crit(model(fold["batch"]), fold["batch"])
    assert torch.isfinite(loss) and len(parts) >= 12


def test_compositional_inference_reconciles_five_heads(fold):
    cfg, model, _ = _build(fold, use_compositional=True)
    assert model.direct == TARGETS and model.head.mlp[-1].out_features == 5
    model.eval()
    out = model({"image": fold["batch"]["image"]})
    raw, pred = out["raw"], out["pred"]
    assert not torch.allclose(raw[:, 3], raw[:, 0] + raw[:, 2])  # the free heads disagree...
    assert torch.allclose(pred[:, 3], pred[:, 0] + pred[:, 2], atol=1e-4)  # ...the reported values do not


@pytest.mark.parametrize("argv, words", [
    (["--use-aos-hallucination"], "needs --use-ndvi-head"),
    (["--use-species-prior"], "needs --use-species-head"),
    (["--use-planthydra-loss", "--train-dead"], "drop --train-dead"),
    (["--use-compositional", "--no-train-clover"], "drop --train-dead / --no-train-clover"),
    (["--cosine-weight", "-1"], "--cosine-weight must be a finite number >= 0"),
])  # fmt: skip
def test_bad_combinations_are_refused(argv, words):
    with pytest.raises(UserError, match=words):
        parse_config(argv)


@pytest.mark.guards("--use-planthydra-loss", "--no-use-depth")
def test_planthydra_expands_into_its_parts():
    cfg = parse_config(["--use-planthydra-loss"])
    assert cfg.use_log_transform and cfg.use_cosine_sim and cfg.use_compositional
    assert parse_config(["--no-use-depth"]).depth_attention is False


# --- the guide's commands, phases 1-6, on the demo data -------------------------------------------
FEW = ["--freeze-epochs", "1", "--stage2-epochs", "1", "--epochs", "2"]
GUIDE = {
    "1.1 baseline": [],
    "1.2 head-only": ["--no-two-stage", "--freeze-backbone"],
    "1.3 single fold": ["--lr", "0.0005"],
    "2.1 planthydra": ["--use-planthydra-loss"],
    "2.2 aux heads": ["--use-planthydra-loss", "--use-height-head", "--height-weight", "0.2", "--use-ndvi-head",
                      "--ndvi-weight", "0.2"],
    "2.3 cross-view": ["--use-planthydra-loss", "--use-height-head", "--use-ndvi-head", "--use-cross-view-consistency",
                       "--cross-view-weight", "0.1"],
    "3.1 depth base": ["--use-planthydra-loss", "--use-height-head", "--use-ndvi-head", "--depth-model-size", "base"],
    "3.2 species prior": ["--use-planthydra-loss", "--use-species-head", "--use-species-prior", "--aux-species-weight", "0.1"],
    "3.3 large (tiny here)": ["--use-planthydra-loss", "--use-height-head", "--use-ndvi-head", "--gradient-checkpointing"],
    "4.1 mass balance": ["--use-planthydra-loss", "--use-mass-balance", "--mass-balance-weight", "0.2"],
    "4.2 aos": ["--use-planthydra-loss", "--use-ndvi-head", "--use-aos-hallucination", "--aos-weight", "0.3"],
    "4.3 state scaling": ["--use-planthydra-loss", "--use-state-scaling"],
    "5.1 robustness": ["--use-planthydra-loss", "--use-height-head", "--use-ndvi-head", "--use-perspective-jitter",
                       "--use-border-mask"],
    "5.2 uncertainty qc": ["--use-planthydra-loss", "--use-uncertainty", "--use-qc-plausibility", "--qc-weight", "0.1"],
    "6 best combination": ["--use-planthydra-loss", "--use-height-head", "--height-weight", "0.2", "--use-ndvi-head",
                           "--ndvi-weight", "0.2", "--use-cross-view-consistency", "--cross-view-weight", "0.1",
                           "--use-mass-balance", "--mass-balance-weight", "0.1", "--use-perspective-jitter",
                           "--lr-mult", "0.8"],
    "troubleshooting": ["--train-dead", "--use-presence-heads", "--use-huber", "--warmup-epochs", "5",
                        "--grad-clip", "0.5", "--lr", "1e-4", "--backbone-lr", "5e-6", "--use-pad-to-square"],
}  # fmt: skip
TORCHRUN = {"4.2 aos", "6 best combination"}


@pytest.fixture(scope="module")
def depth_dirs(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("guide-depth")
    model = str(make_tiny(root / "tiny-da2"))
    for size in ("small", "base"):
        build_cache(demo_data, "train", model, cache_path(root / "cache", size, "train"))
    return model, root / "cache"


@pytest.mark.parametrize("phase", list(GUIDE))
def test_guide_command_runs_to_the_end(demo_data, depth_dirs, tmp_path, phase):
    model, cache = depth_dirs
    args = ["--data-dir", str(demo_data), "--fold-csv", str(demo_data / "trainfold_group_location.csv"), "--folds", "0",
            "--backbone-size", "tiny", "--backbone-weights", "none", "--image-size", "32", "--batch-size", "8",
            "--num-workers", "0", "--depth-model", model, "--depth-cache-dir", str(cache),
            "--output-dir", str(tmp_path / "out"), *FEW, *GUIDE[phase]]  # fmt: skip
    if phase in TORCHRUN:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "src.dinov3_train"]
    else:
        cmd = [sys.executable, "-m", "src.dinov3_train"]
    # A timeout turns a DDP deadlock (a collective one rank skipped) into a failure instead of a hung CI.
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    hist = pd.read_csv(tmp_path / "out/fold0/history.csv")
    losses = hist.filter(regex="^(train|val)_")
    assert len(hist) >= 2 and np.isfinite(losses.to_numpy()).all()
    cfg = parse_config(["--config", str(tmp_path / "out/fold0/config.yaml")])
    if "--use-planthydra-loss" in GUIDE[phase]:
        main = "train_nll" if "--use-uncertainty" in GUIDE[phase] else "train_smoothl1_log"
        assert {main, "train_cosine", "train_compositional"} <= set(hist)
        assert cfg.use_compositional
    assert cfg == replace(cfg)  # the written config reads back
