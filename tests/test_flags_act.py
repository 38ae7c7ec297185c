"""Flags act where the guide says, and say so where they cannot: folds, DDP batch line, hints."""

import pandas as pd
import pytest

from src.core.config import TrainConfig, idle_flags, parse_config
from src.data.schema import load_train
from src.training.distributed import DistInfo, per_rank_batch
from src.training.monitor import Hints
from src.training.run import resolve_folds


@pytest.mark.guards("--cv-strategy", "--no-predefined-folds")
def test_built_folds_follow_the_fold_seed_not_the_model_seed(demo_data):
    images = load_train(demo_data)
    built = lambda **kw: resolve_folds(TrainConfig(use_predefined_folds=False, **kw), images)  # noqa: E731
    pd.testing.assert_series_equal(built(seed=18), built(seed=123))  # the guide's ensemble members share folds
    assert not built(fold_seed=1).equals(built(fold_seed=2))
    assert not built(cv_strategy="kfold").equals(built(cv_strategy="group_location"))


@pytest.mark.guards("--use-predefined-folds", "--fold-csv", "--n-folds", "--no-predefined-folds")
def test_predefined_folds_come_from_the_fold_csv_and_built_ones_number_n_folds(demo_data, tmp_path):
    import numpy as np

    images = load_train(demo_data)
    mine = pd.DataFrame({"image_id": images["image_id"], "fold": np.arange(len(images)) % 3})
    mine.to_csv(tmp_path / "mine.csv", index=False)
    read = resolve_folds(TrainConfig(fold_csv=str(tmp_path / "mine.csv"), n_folds=3), images)
    assert read.tolist() == mine["fold"].tolist()
    built = resolve_folds(TrainConfig(use_predefined_folds=False, n_folds=3), images)
    assert sorted(set(built)) == [0, 1, 2] and built.tolist() != mine["fold"].tolist()


@pytest.mark.parametrize("argv, said", [
    (["--cv-strategy", "kfold"], "--cv-strategy acts only with --no-predefined-folds"),
    (["--fold-seed", "7"], "--fold-seed acts only with --no-predefined-folds"),
    (["--epochs", "30"], "--epochs acts only with --no-two-stage"),
    (["--no-use-depth", "--depth-model-size", "base"], "--depth-model-size acts only with --use-depth"),
    (["--freeze-epochs", "10"], "--stage1-patience 10 cannot end Stage 1 before --freeze-epochs 10"),
])  # fmt: skip
def test_a_flag_that_cannot_act_says_so(argv, said):
    assert any(said in line for line in idle_flags(parse_config(argv)))


@pytest.mark.parametrize("argv", [["--no-predefined-folds", "--cv-strategy", "kfold", "--fold-seed", "7"],
                                  ["--no-two-stage", "--epochs", "30"], ["--depth-model-size", "base"], [],
                                  ["--freeze-epochs", "10", "--stage1-patience", "5"]])
def test_flags_that_act_say_nothing(argv):
    assert idle_flags(parse_config(argv)) == []


def test_ddp_line_counts_gradient_accumulation(capsys):
    assert per_rank_batch(16, DistInfo(rank=0, world_size=2)) == 8
    assert "DDP batch adjustment: 16 → 8/GPU (effective: 16)" in capsys.readouterr().out  # the guide's words
    per_rank_batch(16, DistInfo(rank=0, world_size=2), grad_accum=2)
    assert "(effective: 32 = 16 x --grad-accum 2)" in capsys.readouterr().out


def _row(epoch, **kw):
    return {"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "r2_dead": 0.5, "r2_clover": 0.5, **kw}


def _said(cfg, rows):
    hints = Hints(cfg)
    return [msg for r in rows for msg in hints.check(r["epoch"], r)]


def test_hints_advise_only_what_the_run_can_still_try():
    stalled = [_row(e, r2_dead=0.0, r2_clover=0.1) for e in range(25)]
    plain = " ".join(_said(TrainConfig(), stalled))
    assert "try --train-dead" in plain and "try --use-cross-view-consistency" in plain
    tried = " ".join(_said(TrainConfig(train_dead=True, use_cross_view_consistency=True), stalled))
    assert "--train-dead" not in tried and "--use-cross-view-consistency" not in tried
    # --use-planthydra-loss refuses --train-dead: the guide's second option instead
    hydra = " ".join(_said(parse_config(["--use-planthydra-loss"]), stalled))
    assert "--train-dead" not in hydra and "try --use-presence-heads" in hydra


def test_val_loss_increasing_and_overfitting_hints_fire():
    rising = [_row(e, val_loss=1.0 + 0.1 * max(0, e - 3)) for e in range(12)]
    assert any("val loss increasing" in m for m in _said(TrainConfig(), rising))
    assert not any("val loss increasing" in m for m in _said(TrainConfig(), [_row(e) for e in range(12)]))
    gap = [_row(e, train_loss=0.1, val_loss=0.5) for e in range(3)]
    assert any("overfitting" in m for m in _said(TrainConfig(), gap))


def test_mass_balance_is_an_equality_that_acts_on_every_batch_of_free_heads(fold):
    """Under PlantHydra (five free heads) the balance term is never idle, and minimising it alone
    closes the gap Total - (Green + Dead + Clover)."""
    import torch

    from src.core.config import resolve
    from src.core.targets import TARGETS
    from src.losses import build_criterion
    from src.models.biomass import BiomassModel

    cfg = resolve(TrainConfig(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False,
                              use_planthydra_loss=True, use_mass_balance=True))  # fmt: skip
    torch.manual_seed(0)
    model = BiomassModel(cfg, fold["stats"], fold["extras"])
    term = next(t for t in build_criterion(cfg, fold["stats"]).terms if t.name == "mass_balance")
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    g, d, c, t = (TARGETS.index(k) for k in ("Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g", "Dry_Total_g"))
    gaps = []
    for _ in range(30):
        raw = model(fold["batch"])["raw"]
        gaps.append(float((raw[:, t] - raw[:, g] - raw[:, d] - raw[:, c]).abs().mean().detach()))
        loss = term({"raw": raw}, fold["batch"])
        assert float(loss.detach()) > 0  # the heads start at the per-target means, which do not balance in log space
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gaps[-1] < 0.5 * gaps[0], gaps
