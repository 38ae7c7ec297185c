"""Full-data refits are used only on evidence: the refit check (the refit procedure per fold, scored
on the fold's validation images) must beat the fold models' OOF, pooled and beyond its standard
error over the folds (src.rounds.final.refit_decision); its epochs come from the other folds only."""

import json

import numpy as np
import pandas as pd
import pytest
from test_final import _write, write_members
from test_training import _train

from src.core.config import TrainConfig
from src.core.errors import UserError
from src.core.metrics import weighted_r2
from src.data.schema import load_test, load_train
from src.rounds import postprocess as pp
from src.rounds.final import NO_EVIDENCE, build, refit_decision
from src.rounds.oof import PRED, TRUE

N_FOLDS, PER_FOLD = 5, 24


def _oof(noise_per_fold, seed=0, truth_seed=0, scale=(1.0,) * N_FOLDS):
    """An OOF frame of PER_FOLD images per fold: the truth (times the fold's ``scale``), predicted
    with multiplicative noise of the given size on each fold (the same truth for every call with the
    same ``truth_seed`` and ``scale``)."""
    n = N_FOLDS * PER_FOLD
    fold = np.arange(n) // PER_FOLD
    truth = np.random.default_rng(truth_seed).uniform(5, 40, (n, 3)) * np.asarray(scale)[fold][:, None]
    rng = np.random.default_rng(seed)
    noise = np.asarray(noise_per_fold, dtype=float)[fold][:, None]
    df = pd.DataFrame({"image_id": [f"ID{i:04d}" for i in range(n)], "fold": fold, "State": "NSW"})
    df[TRUE] = pp.expand(truth)
    df[PRED] = pp.expand(truth * np.exp(noise * rng.standard_normal(truth.shape)))
    return df


def test_the_refit_is_used_only_when_its_check_wins_on_the_folds_beyond_noise():
    folds = _oof([0.3] * N_FOLDS, seed=1)
    # wins on every fold by a margin
    win = refit_decision(_oof([0.1] * N_FOLDS, seed=2), folds)
    assert win["used"] and win["refit_check_weighted_r2"] > win["folds_weighted_r2"]
    assert all(d > 0 for d in win["fold_differences"].values()) and win["mean_difference"] > win["standard_error"]
    assert set(win["fold_differences"]) == {str(k) for k in range(N_FOLDS)} and win["n_images"] == len(folds)
    # loses
    lose = refit_decision(_oof([0.5] * N_FOLDS, seed=2), folds)
    assert not lose["used"] and lose["refit_check_weighted_r2"] < lose["folds_weighted_r2"]
    assert "does not beat" in lose["why"]
    # wins pooled, but on one fold only: the mean gain is within its standard error
    noisy = refit_decision(_oof([0.02, 0.33, 0.33, 0.33, 0.33], seed=1), folds)
    d = np.array(list(noisy["fold_differences"].values()))
    assert noisy["refit_check_weighted_r2"] > noisy["folds_weighted_r2"] and d.mean() > 0  # the premise
    assert noisy["standard_error"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
    assert noisy["mean_difference"] <= noisy["standard_error"] and not noisy["used"] and "within noise" in noisy["why"]
    # better on the mean of the folds, by more than its standard error, but worse pooled: fold 4 holds
    # most of the mass (10x), and there the check is worse
    big = (1, 1, 1, 1, 10)
    split = refit_decision(_oof([0.2] * 4 + [0.42], seed=1, scale=big), _oof([0.3] * 4 + [0.4], seed=1, scale=big))
    assert split["mean_difference"] > split["standard_error"]  # the premise
    assert split["refit_check_weighted_r2"] < split["folds_weighted_r2"] and not split["used"]
    # the per-fold differences are the folds' own weighted R^2 differences
    c, f = _oof([0.1] * N_FOLDS, seed=2), folds
    k0 = lambda df: df[df["fold"] == 0]  # noqa: E731
    want = weighted_r2(k0(c)[TRUE].to_numpy(), k0(c)[PRED].to_numpy()) - weighted_r2(k0(f)[TRUE].to_numpy(), k0(f)[PRED].to_numpy())
    assert win["fold_differences"]["0"] == pytest.approx(want)
    with pytest.raises(UserError, match="other images"):
        refit_decision(c.iloc[5:], folds)


@pytest.fixture
def results(demo_data, tmp_path):
    """Round 1 (models a and b), round 2 (blend weight 0.4), refits of both rounds, and the
    evidence: a's refit check beats its fold models on every fold, b's loses."""
    rng = np.random.default_rng(0)
    ids = load_test(demo_data)["image_id"].tolist()
    res = tmp_path / "results"
    write_members(res, ids, rng)
    _write(res / "ensemble/weights.json", {"method": "nnls", "weights": {"a": 0.25, "b": 0.75}})
    _write(res / "round2/blend.json", {"alpha": 0.4, "weights": {"a": 0.5, "b": 0.5}})
    oof = _oof([0.2] * N_FOLDS, seed=5)
    _write(res / "ensemble/oof.parquet", oof)
    _write(res / "round2/blend/oof.parquet", oof)
    _write(res / "ensemble/postprocess.json", {"steps": [], "oof_weighted_r2_before": 0.5, "oof_weighted_r2_after": 0.5})
    _write(res / "models/a/oof.parquet", _oof([0.3] * N_FOLDS, seed=1))
    _write(res / "refit_check/a/oof.parquet", _oof([0.1] * N_FOLDS, seed=2))
    _write(res / "models/b/oof.parquet", _oof([0.3] * N_FOLDS, seed=3))
    _write(res / "refit_check/b/oof.parquet", _oof([0.5] * N_FOLDS, seed=4))
    return res


def test_the_recipe_takes_a_refit_only_where_the_evidence_says_so(results, demo_data):
    recipe = build(results, demo_data, round2=True, refit=True, refit_evidence_required=True)
    members = {m["model_dir"]: m["weight"] for m in recipe["members"]}
    # a's refit won its check: its refits in both rounds; b's lost: its fold models in both rounds
    assert members == pytest.approx({"refit/a": 0.15, "models/b": 0.45, "round2/refit/a": 0.2, "round2/models/b": 0.2})
    evidence = json.loads((results / "final/refit_evidence.json").read_text())
    assert evidence["evidence"] == "evidence"
    assert evidence["models"]["a"]["used"] and not evidence["models"]["b"]["used"]
    for m in ("a", "b"):
        e = evidence["models"][m]
        assert {"refit_check_weighted_r2", "folds_weighted_r2", "fold_differences", "standard_error", "why"} <= set(e)
    row = next(s for s in json.loads((results / "final/steps.json").read_text())["steps"] if "refit" in s["step"])
    assert row["refit_models"] == ["a"] and row["evidence"] == "evidence" and row["used"]
    assert json.loads((results / "final/recipe.json").read_text())["members"] == recipe["members"]

    # refit.evidence: false: the refits as configured, and the row says there was no evidence
    plain = build(results, demo_data, round2=True, refit=True, refit_evidence_required=False)
    assert {m["model_dir"] for m in plain["members"]} == {"refit/a", "refit/b", "round2/refit/a", "round2/refit/b"}
    row = next(s for s in json.loads((results / "final/steps.json").read_text())["steps"] if "refit" in s["step"])
    assert row["refit_models"] == ["a", "b"] and row["evidence"] == NO_EVIDENCE


def test_no_refit_when_no_check_wins_and_missing_evidence_stops_the_build(results, demo_data):
    _write(results / "refit_check/a/oof.parquet", _oof([0.5] * N_FOLDS, seed=2))  # now a loses too
    recipe = build(results, demo_data, round2=True, refit=True, refit_evidence_required=True)
    assert all(m["model_dir"].split("/")[-2] == "models" for m in recipe["members"])
    row = next(s for s in json.loads((results / "final/steps.json").read_text())["steps"] if "refit" in s["step"])
    assert row["refit_models"] == [] and not row["used"] and row["holdout_with"] == row["holdout_without"]
    (results / "refit_check/b/oof.parquet").unlink()
    with pytest.raises(UserError, match=r"refit_check/b/oof\.parquet not found.*refit_check"):
        build(results, demo_data, round2=True, refit=True, refit_evidence_required=True)


def _history(path, s1, s2):
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"stage": ["stage1"] * len(s1) + ["stage2"] * len(s2), "weighted_r2": s1 + s2}).to_csv(
        path / "history.csv", index=False)  # fmt: skip
    (path / "metrics.json").write_text("{}")


def test_the_check_of_fold_k_takes_its_epochs_from_the_other_folds_only(tmp_path):
    from src.training.refit import chosen_epochs

    _history(tmp_path / "fold0", [0.1, 0.3, 0.5, 0.4], [0.6, 0.7, 0.65])  # (3, 2)
    _history(tmp_path / "fold1", [0.5, 0.2], [0.4, 0.5, 0.55, 0.9])  # (1, 4)
    _history(tmp_path / "fold2", [0.1, 0.8, 0.2], [0.5])  # (2, 0)
    cfg = TrainConfig()
    plan, per = chosen_epochs(tmp_path, cfg, exclude=1)
    assert per == [(3, 2), (2, 0)] and plan == {"freeze_epochs": 2, "stage2_epochs": 1}
    all_plan, _ = chosen_epochs(tmp_path, cfg)
    _history(tmp_path / "fold1", [0.1] * 9 + [0.9], [0.1] * 7 + [0.95])  # fold 1 now says (10, 8)
    assert chosen_epochs(tmp_path, cfg, exclude=1) == (plan, per)  # unchanged: fold 1 never entered
    assert chosen_epochs(tmp_path, cfg)[0] != all_plan  # the full refit does read it
    for k in (0, 2):
        (tmp_path / f"fold{k}/metrics.json").unlink()
    with pytest.raises(UserError, match="no finished fold other than fold 1"):
        chosen_epochs(tmp_path, cfg, exclude=1)


@pytest.mark.long
def test_the_refit_check_trains_on_fold_k_training_images_and_predicts_its_validation_images(demo_data, tmp_path):
    from src.training.refit import _fold_epochs

    cv = tmp_path / "cv"
    quick = ["--freeze-epochs", "2", "--stage2-epochs", "1", "--stage1-patience", "5", "--batch-size", "8"]
    _train(demo_data, cv, "--folds", "0", "1", *quick)
    proc = _train(demo_data, tmp_path / "check", *quick, "--refit-from", str(cv), "--folds", "0")
    folds = pd.read_csv(demo_data / "trainfold_group_location.csv")
    val_ids = set(folds.loc[folds["fold"] == 0, "image_id"])
    n_train = len(load_train(demo_data)) - len(val_ids)
    out = tmp_path / "check/fold0"
    oof = pd.read_parquet(out / "oof.parquet")
    assert set(oof["image_id"]) == val_ids and len(oof) == len(val_ids) and (oof["fold"] == 0).all()
    assert list(oof.columns) == list(pd.read_parquet(cv / "fold0/oof.parquet").columns)  # a CV fold's columns
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == n_train and metrics["n_val"] == len(val_ids)
    assert f"refit check of fold 0: {n_train} training images" in proc.stdout
    # the epochs come from fold 1's history alone, all of them run, no selection, no weights saved
    want = _fold_epochs(pd.read_csv(cv / "fold1/history.csv"), True)
    assert metrics["folds_epochs"] == [list(want)]
    assert (metrics["freeze_epochs"], metrics["stage2_epochs"]) == want
    assert len(pd.read_csv(out / "history.csv")) == metrics["epochs_run"] == metrics["freeze_epochs"] + metrics["stage2_epochs"]
    assert not list(out.glob("*.safetensors")) and not (tmp_path / "check/full").exists()
    assert metrics["weighted_r2"] == pytest.approx(weighted_r2(oof[TRUE].to_numpy(), oof[PRED].to_numpy()), abs=1e-6)
    assert metrics["seed"] not in (42 + 0, 42 + 5)  # neither the CV fold's seed nor the full refit's
    # another model than the CV fold's: its predictions of the same images differ
    cv_oof = pd.read_parquet(cv / "fold0/oof.parquet").set_index("image_id").loc[oof["image_id"]]
    assert not np.allclose(cv_oof[PRED].to_numpy(), oof[PRED].to_numpy())
