"""Scores that chose nothing (src/rounds/oof.py): each fold is scored at the epoch chosen on the OTHER
folds' validation curves and at its last epoch, beside its own best epoch (optimistic); the
trainer keeps every epoch's validation predictions for it."""

import json

import numpy as np
import pandas as pd
import pytest
from test_averaging import TINY

from src.core.config import TrainConfig
from src.core.metrics import weighted_r2
from src.rounds.oof import EPOCH_PREDS, LAST, PRED, SELECTED, TRUE, crossfold_epochs, merge_oof
from src.training import run as run_module


def _truth(n, rng):
    g, d, c = rng.gamma(2.0, 15.0, n), rng.gamma(1.5, 8.0, n), rng.gamma(0.8, 5.0, n)
    return np.stack([g, d, c, g + c, g + d + c], axis=1)


def _epochs(fold: int, noise_by_epoch: list[float], rng, n: int = 30, stage1: int = 2) -> pd.DataFrame:
    """One fold's epoch_preds: predictions = truth + noise of the given size at each epoch."""
    y = _truth(n, rng)
    rows = []
    for e, sd in enumerate(noise_by_epoch):
        df = pd.DataFrame(y, columns=TRUE).join(pd.DataFrame(y + rng.normal(0, sd, y.shape), columns=PRED))
        stage, stage_epoch = ("stage1", e) if e < stage1 else ("stage2", e - stage1)
        rows.append(df.assign(image_id=[f"F{fold}_{i}" for i in range(n)], fold=fold, State="Vic", epoch=e, stage=stage,
                              stage_epoch=stage_epoch))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


# Fold 0 is excellent at epoch 1 and awful at epoch 3; folds 1 and 2 the other way round. Chosen on
# fold 0's own curve (or on all folds pooled, fold 0's awful epoch 3 included) fold 0 gets epoch 1.
NOISE = {0: [30, 0.5, 30, 200, 30], 1: [30, 20, 30, 2, 30], 2: [30, 20, 30, 2, 30]}


def test_fold_k_epoch_is_chosen_on_the_other_folds_curves_alone():
    rng = np.random.default_rng(0)
    epochs = {k: _epochs(k, noise, rng) for k, noise in NOISE.items()}
    chosen = crossfold_epochs(epochs)
    assert chosen[0]["epoch"] == 3 and chosen[0]["stage"] == "stage2" and chosen[0]["stage_epoch"] == 1
    # Fold 0's own curve does not move its choice, another fold's does.
    changed = {**epochs, 0: _epochs(0, [0.1, 300, 0.1, 300, 0.1], rng)}
    assert crossfold_epochs(changed)[0] == chosen[0]
    moved = {**epochs, 1: _epochs(1, [30, 0.5, 30, 300, 30], rng), 2: _epochs(2, [30, 0.5, 30, 300, 30], rng)}
    assert crossfold_epochs(moved)[0]["epoch"] == 1


def test_epochs_are_aligned_by_stage_when_stage_1_ends_at_different_epochs():
    rng = np.random.default_rng(1)
    # Fold 0 left Stage 1 after 2 epochs, folds 1-2 after 3: Stage 2's second epoch is run epoch 3 in fold 0, 4 in the others.
    epochs = {0: _epochs(0, [30, 30, 30, 1, 30], rng, stage1=2), 1: _epochs(1, [30, 30, 30, 30, 1, 30], rng, stage1=3),
              2: _epochs(2, [30, 30, 30, 30, 1, 30], rng, stage1=3)}  # fmt: skip
    chosen = crossfold_epochs(epochs)
    assert chosen[0] == {**chosen[0], "stage": "stage2", "stage_epoch": 1, "epoch": 3}
    assert chosen[1]["epoch"] == 4 and chosen[1]["stage_epoch"] == 1


def _model_dir(root, rng, selection="best_epoch"):
    d = root / "model"
    for k, noise in NOISE.items():
        fold = d / f"fold{k}"
        fold.mkdir(parents=True)
        ep = _epochs(k, noise, rng)
        ep.to_parquet(fold / EPOCH_PREDS)
        errors = {e: weighted_r2(g[TRUE].to_numpy(), g[PRED].to_numpy()) for e, g in ep.groupby("epoch")}
        best = max(errors, key=errors.get)  # what the trainer saves: the fold's own best epoch
        ep[ep["epoch"] == best].drop(columns=["epoch", "stage", "stage_epoch"]).to_parquet(fold / "oof.parquet")
        (fold / "metrics.json").write_text(json.dumps({"best_epoch": best, "selection": selection}))
    return d


def test_the_merge_writes_the_unbiased_oof_and_the_optimistic_one_beside_it(tmp_path):
    d = _model_dir(tmp_path, np.random.default_rng(2))
    scores = merge_oof(d, 3, require_all=True)
    oof, sel, last = (pd.read_parquet(d / f) for f in ("oof.parquet", SELECTED, LAST))
    assert scores["score"] == "crossfold_epoch" and scores["epochs"]["0"]["epoch"] == 3
    assert len(oof) == len(sel) == len(last) == 90
    # Fold 0's unbiased rows are its epoch-3 predictions; the optimistic ones its own best (epoch 1).
    ep0 = pd.read_parquet(d / "fold0" / EPOCH_PREDS)
    want = ep0[ep0["epoch"] == 3].sort_values("image_id")[PRED].to_numpy()
    np.testing.assert_allclose(oof[oof["fold"] == 0].sort_values("image_id")[PRED].to_numpy(), want)
    assert scores["selected"]["weighted_r2"] > scores["weighted_r2"]  # selection on the scoring images flatters
    assert scores["weighted_r2"] == pytest.approx(weighted_r2(oof[TRUE].to_numpy(), oof[PRED].to_numpy()))
    assert scores["last"]["weighted_r2"] == pytest.approx(weighted_r2(last[TRUE].to_numpy(), last[PRED].to_numpy()))
    assert (last.groupby("fold").size() == 30).all()


def test_swa_of_the_last_epochs_is_its_own_unbiased_score_and_swa_of_the_best_has_none(tmp_path):
    d = _model_dir(tmp_path / "last", np.random.default_rng(3), selection="swa_last")
    scores = merge_oof(d, 3)
    assert scores["score"] == "swa_last"
    oof, sel = pd.read_parquet(d / "oof.parquet"), pd.read_parquet(d / SELECTED)
    assert oof[["image_id", *PRED]].equals(sel[["image_id", *PRED]])
    d = _model_dir(tmp_path / "best", np.random.default_rng(3), selection="swa_best")
    assert merge_oof(d, 3)["score"] == "selected"  # chosen on the scoring fold: no unbiased score exists


def test_the_trainer_keeps_every_epochs_validation_predictions(demo_data, tmp_path):
    out = tmp_path / "run"
    run_module.run(TrainConfig(
        data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"), output_dir=str(out),
        folds=[0, 1], two_stage=True, freeze_epochs=2, stage1_patience=5, stage2_epochs=2, batch_size=8, num_workers=0,
        device="cpu", **TINY))  # fmt: skip
    for k in (0, 1):
        ep = pd.read_parquet(out / f"fold{k}" / EPOCH_PREDS)
        hist = pd.read_csv(out / f"fold{k}" / "history.csv")
        assert sorted(ep["epoch"].unique()) == hist["epoch"].tolist() == [0, 1, 2, 3]
        assert list(ep.groupby("epoch")["stage"].first()) == ["stage1", "stage1", "stage2", "stage2"]
        for e, g in ep.groupby("epoch"):  # the history's score is the score of these predictions
            assert abs(weighted_r2(g[TRUE].to_numpy(), g[PRED].to_numpy()) - hist.loc[e, "weighted_r2"]) < 1e-5
        best = json.loads((out / f"fold{k}" / "metrics.json").read_text())["best_epoch"]
        oof = pd.read_parquet(out / f"fold{k}" / "oof.parquet").sort_values("image_id")
        at_best = ep[ep["epoch"] == best].sort_values("image_id")
        np.testing.assert_allclose(at_best[PRED].to_numpy(), oof[PRED].to_numpy(), rtol=1e-6)
    scores = merge_oof(out, 5)
    assert scores["score"] == "crossfold_epoch" and set(scores["epochs"]) == {"0", "1"}
