"""After round 1: pseudo-labels (how they are made, weighted and kept out of validation), the
round blend, and full-data refits (their epochs, their data, their loading)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_training import _train, _weights

from src.core.config import TrainConfig
from src.core.targets import TARGETS
from src.data.schema import load_test, load_train
from src.losses import build_criterion
from src.rounds.oof import PRED, TRUE

guards = pytest.mark.guards
QUICK = ["--freeze-epochs", "1", "--stage2-epochs", "1", "--batch-size", "8"]


@guards("--pseudo-weight")
def test_a_pseudo_labelled_image_trains_the_mass_heads_at_its_weight_and_no_auxiliary_head(fold):
    cfg = TrainConfig(use_height_head=True, pseudo_weight=0.3)
    criterion = build_criterion(cfg, fold["stats"])
    batch = {k: v for k, v in fold["batch"].items() if k in ("targets", "height")}
    n = len(batch["targets"])
    pseudo = torch.zeros(n, dtype=torch.bool)
    pseudo[::3] = True

    def grads(extra):
        raw = (batch["targets"] * 1.3 + 2.0).requires_grad_()
        height = torch.zeros(n, 1, requires_grad=True)
        loss, _ = criterion({"raw": raw, "height": height}, {**batch, **extra})
        loss.backward()
        return raw.grad, height.grad.squeeze(-1)

    raw_all, height_all = grads({})  # every image real
    raw_mix, height_mix = grads({"is_pseudo": pseudo})
    torch.testing.assert_close(raw_mix[~pseudo], raw_all[~pseudo])
    torch.testing.assert_close(raw_mix[pseudo], 0.3 * raw_all[pseudo])  # weighted, not dropped
    assert raw_all[pseudo].abs().sum() > 0
    torch.testing.assert_close(height_mix[~pseudo], height_all[~pseudo])
    assert height_mix[pseudo].abs().sum() == 0 and height_all[pseudo].abs().sum() > 0  # placeholders never train


def _pseudo_csv(data, path, scale=1.0, n=6):
    test = load_test(data).iloc[:n]
    rng = np.random.default_rng(0)
    g, d, c = (rng.uniform(5, 40, len(test)) * scale for _ in range(3))
    df = pd.DataFrame({"image_id": test["image_id"], "image_path": test["image_path"], "Dry_Green_g": g, "Dry_Dead_g": d,
                       "Dry_Clover_g": c, "GDM_g": g + c, "Dry_Total_g": g + c + d})  # fmt: skip
    df.to_csv(path, index=False)
    return df


@pytest.mark.long
@guards("--pseudo-labels")
def test_pseudo_labelled_images_reach_training_only_and_their_labels_change_what_is_learnt(demo_data, tmp_path):
    for k in (0, 1):
        _pseudo_csv(demo_data, tmp_path / f"fold{k}.csv")
    _pseudo_csv(demo_data, tmp_path / "big0.csv", scale=3.0)
    run = lambda name, *extra: _train(demo_data, tmp_path / name, "--folds", "0", *QUICK, *extra)  # noqa: E731
    plain = run("plain")
    pseudo = run("pseudo", "--pseudo-labels", str(tmp_path / "fold{fold}.csv"))
    run("big", "--pseudo-labels", str(tmp_path / "big{fold}.csv"))
    n_real = (pd.read_csv(demo_data / "trainfold_group_location.csv")["fold"] != 0).sum()
    assert f"{n_real} train" in plain.stdout and f"{n_real} train" in pseudo.stdout
    assert f"feature cache: {n_real + 6} images" in pseudo.stdout  # the 6 pseudo-labelled ones train
    oof = pd.read_parquet(tmp_path / "pseudo/fold0/oof.parquet")
    folds = pd.read_csv(demo_data / "trainfold_group_location.csv")
    assert sorted(oof["image_id"]) == sorted(folds.loc[folds["fold"] == 0, "image_id"])  # validated on real only
    w = {name: _weights(tmp_path / name / "fold0/best.safetensors") for name in ("plain", "pseudo", "big")}
    heads = [k for k in w["plain"] if k.startswith("head.")]
    assert any(not torch.equal(w["plain"][k], w["pseudo"][k]) for k in heads)
    assert any(not torch.equal(w["pseudo"][k], w["big"][k]) for k in heads)  # the labels themselves count

    # Changed labels under the same path: a resume starts the fold over.
    _pseudo_csv(demo_data, tmp_path / "fold0.csv", scale=2.0)
    again = run("pseudo", "--pseudo-labels", str(tmp_path / "fold{fold}.csv"), "--resume")
    assert "inputs changed since the saved run (pseudo labels)" in again.stdout


def test_a_pseudo_label_csv_that_breaks_the_rules_is_refused_in_one_line(demo_data, tmp_path):
    from src.core.errors import UserError
    from src.data.pseudo import load_pseudo

    train = load_train(demo_data)
    df = _pseudo_csv(demo_data, tmp_path / "p.csv")
    df.loc[2, "GDM_g"] += 5
    df.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(UserError) as err:
        load_pseudo(str(tmp_path / "p.csv"), 0, demo_data, train)
    assert str(err.value) == (f"{tmp_path / 'p.csv'}: row 4: the masses break GDM = Green + Clover or Total = GDM + "
                              "Dead; write predictions that obey them")
    pd.concat([df.iloc[:1].assign(image_id=train["image_id"].iloc[0])]).to_csv(tmp_path / "q.csv", index=False)
    with pytest.raises(UserError, match="is a training image or appears twice"):
        load_pseudo(str(tmp_path / "q.csv"), 0, demo_data, train)


def _fold_preds(path, value_of, ids, folds):
    rows = [{"image_id": i, "fold": k, **{t: value_of(k, j, t) for t in TARGETS}} for k in folds for j, i in enumerate(ids)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)


def test_fold_k_is_labelled_by_fold_k_models_only_and_the_agreeing_images_are_kept(demo_data, tmp_path):
    from src.rounds.pseudo_labels import make

    ids = load_test(demo_data)["image_id"].tolist()
    (tmp_path / "ensemble").mkdir()
    (tmp_path / "ensemble/weights.json").write_text(json.dumps({"weights": {"a": 0.25, "b": 0.75}}))
    # model a: 10 * (fold + 1) g everywhere; model b agrees with it on the first half of the images only
    _fold_preds(tmp_path / "models/a/test_pred_folds.parquet", lambda k, j, t: 10.0 * (k + 1), ids, range(3))
    _fold_preds(tmp_path / "models/b/test_pred_folds.parquet", lambda k, j, t: 10.0 * (k + 1) * (1 if j < 5 else 3),
                ids, range(3))  # fmt: skip
    oof = pd.DataFrame({"image_id": [f"ID{i}" for i in range(30)], "fold": np.arange(30) % 3, "State": "NSW"})
    oof[TRUE] = oof[PRED] = np.random.default_rng(0).uniform(0, 50, (30, 5))  # both exact: a tie, the mean wins
    for m in ("a", "b"):
        oof.to_parquet(tmp_path / f"models/{m}/oof.parquet")
    make(tmp_path, ["a", "b"], demo_data, 3, keep_fraction=0.5)
    for k in range(3):
        labels = pd.read_csv(tmp_path / f"round2/pseudo/fold{k}.csv")
        assert labels["image_id"].tolist() == ids[:5]
        np.testing.assert_allclose(labels["Dry_Total_g"], 10.0 * (k + 1))  # fold k's models, weighted
    refits = pd.read_csv(tmp_path / "round2/pseudo/all.csv")  # no OOF to protect: every fold's models
    assert refits["image_id"].tolist() == ids[:5]
    np.testing.assert_allclose(refits["Dry_Total_g"], 20.0)


def test_the_round_blend_weight_is_chosen_on_oof_and_scored_by_nested_cv(tmp_path):
    from src.rounds.pseudo_labels import blend

    rng = np.random.default_rng(0)
    y = rng.uniform(0, 50, (60, 5))
    y[:, 3], y[:, 4] = y[:, 0] + y[:, 2], y[:, 0] + y[:, 1] + y[:, 2]
    base = pd.DataFrame({"image_id": [f"ID{i}" for i in range(60)], "fold": np.arange(60) % 3, "State": "NSW"})
    for name, noise in (("ensemble", 12.0), ("round2/ensemble", 3.0)):
        f = base.copy()
        f[TRUE] = y
        f[PRED] = y + rng.normal(0, noise, y.shape)
        (tmp_path / name).mkdir(parents=True)
        f.to_parquet(tmp_path / name / "oof.parquet")
    (tmp_path / "round2/ensemble/weights.json").write_text(json.dumps({"weights": {"m": 1.0}}))
    out = blend(tmp_path)
    s = out["oof_weighted_r2"]
    assert out["alpha"] >= 0.8 and s["blend"] >= s["round2"] > s["round1"]
    assert s["blend_nested"] <= s["blend"] + 1e-12  # honest: never above the in-sample choice


def test_refit_epochs_are_the_folds_median_up_to_each_best_epoch(tmp_path):
    from src.training.refit import chosen_epochs

    # fold 0: Stage 1 best at its 3rd epoch, Stage 2 best at its 2nd; fold 1: 1st and 4th; fold 2: Stage 2 never better
    curves = [([0.1, 0.3, 0.5, 0.4], [0.6, 0.7, 0.65]), ([0.5, 0.2], [0.4, 0.5, 0.55, 0.9]), ([0.1, 0.8, 0.2], [0.5])]
    for k, (s1, s2) in enumerate(curves):
        h = pd.DataFrame({"stage": ["stage1"] * len(s1) + ["stage2"] * len(s2), "weighted_r2": s1 + s2})
        (tmp_path / f"fold{k}").mkdir()
        h.to_csv(tmp_path / f"fold{k}/history.csv", index=False)
        (tmp_path / f"fold{k}/metrics.json").write_text("{}")
    plan, per = chosen_epochs(tmp_path, TrainConfig())
    assert per == [(3, 2), (1, 4), (2, 0)]
    assert plan == {"freeze_epochs": 2, "stage2_epochs": 2}


@pytest.mark.long
@guards("--refit-from")
def test_a_refit_trains_on_every_image_for_the_chosen_epochs_and_predicts_as_one_model(demo_data, tmp_path):
    from src.inference.predictor import load_fold_models, predict_split

    cv = tmp_path / "cv"
    _train(demo_data, cv, "--folds", "0", "1", "--freeze-epochs", "2", "--stage2-epochs", "1", "--stage1-patience", "5")
    proc = _train(demo_data, tmp_path / "refit", "--freeze-epochs", "2", "--stage2-epochs", "1", "--refit-from", str(cv))
    metrics = json.loads((tmp_path / "refit/full/metrics.json").read_text())
    assert metrics["n_images"] == len(load_train(demo_data)) and "refit on all 60 images" in proc.stdout
    want = {k: int(np.round(np.median([p[i] for p in metrics["folds_epochs"]]))) for i, k in
            enumerate(("freeze_epochs", "stage2_epochs"))}  # fmt: skip
    assert {k: metrics[k] for k in want} == want and metrics["epochs_run"] == sum(want.values())
    assert len(pd.read_csv(tmp_path / "refit/full/history.csv")) == sum(want.values())
    assert not list((tmp_path / "refit").glob("fold*"))  # no validation fold: nothing to score
    models = load_fold_models(tmp_path / "refit", "cpu")
    assert [k for k, _, _ in models] == [-1] and models[0][1].freeze_epochs == want["freeze_epochs"]
    pred = predict_split(models, demo_data, "test", tta=False)
    assert len(pred) == len(load_test(demo_data)) and np.isfinite(pred[list(TARGETS)].to_numpy()).all()
    # it learnt from every image: its weights are not the CV folds'
    cv0 = _weights(cv / "fold0/best.safetensors")
    full = _weights(tmp_path / "refit/full/best.safetensors")
    assert any(not torch.equal(cv0[k], full[k]) for k in cv0 if k.startswith("head."))
