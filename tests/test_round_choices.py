"""The pseudo-label round's choices are made on data that did not make them: fold k's labels come
from an ensemble whose method and weights never saw fold k's OOF, and round 2 is kept only when its
nested-CV OOF score beats round 1's. No model training: small parquet/JSON inputs in tmp_path."""

import json

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from src.core.metrics import weighted_r2
from src.core.targets import TARGETS, WEIGHTS
from src.data.schema import load_test
from src.rounds.ensemble import choose_blend
from src.rounds.oof import PRED, TRUE

N, FOLDS = 100, 5


def _truth(rng, n=N):
    y = rng.uniform(2, 60, (n, 5))
    y[:, 3], y[:, 4] = y[:, 0] + y[:, 2], y[:, 0] + y[:, 1] + y[:, 2]  # GDM, Total
    return y


def _oof_frame(y, pred, folds):
    f = pd.DataFrame({"image_id": [f"ID{i:03d}" for i in range(len(y))], "fold": folds, "State": "NSW"})
    f[TRUE], f[PRED] = y, pred
    return f


def _round1(tmp, demo_data, y, preds, folds):
    """The round-1 results make() reads: each model's OOF (rows shuffled differently per model, so only
    image_id aligns them), its per-fold test predictions, and ensemble/weights.json chosen on all OOF
    as the ensemble rule chooses it."""
    ids = load_test(demo_data)["image_id"].tolist()
    for i, (m, p) in enumerate(preds.items()):
        (tmp / f"models/{m}").mkdir(parents=True, exist_ok=True)
        order = np.random.default_rng(i).permutation(len(y))
        _oof_frame(y, p, folds).iloc[order].to_parquet(tmp / f"models/{m}/oof.parquet")
        rows = [{"image_id": img, "fold": k, **{t: (1 + i) * 10.0 + 3.0 * k + j + c for c, t in enumerate(TARGETS)}}
                for k in range(FOLDS) for j, img in enumerate(ids)]  # fmt: skip
        pd.DataFrame(rows).to_parquet(tmp / f"models/{m}/test_pred_folds.parquet")
    method, w, scores, _ = choose_blend(np.stack(list(preds.values())), y, folds)
    (tmp / "ensemble").mkdir(exist_ok=True)
    (tmp / "ensemble/weights.json").write_text(json.dumps({"method": method, "weights": dict(zip(preds, w.tolist())),
                                                           "oof_weighted_r2": scores}))  # fmt: skip


def _labels(tmp, demo_data, y, preds, folds):
    from src.rounds.pseudo_labels import make

    _round1(tmp, demo_data, y, preds, folds)
    summary = make(tmp, list(preds), demo_data, FOLDS, keep_fraction=1.0)
    labels = {k: pd.read_csv(tmp / f"round2/pseudo/fold{k}.csv")[list(TARGETS)].to_numpy() for k in range(FOLDS)}
    return labels, summary


def _two_models(rng):
    """Both models under-predict (x0.6, 0.7) with their own noise: NNLS scales them up and beats the
    mean, by a margin that differs by fold."""
    y = _truth(rng)
    folds = np.arange(N) % FOLDS
    return y, folds, {"a": 0.6 * y + rng.normal(0, 2, y.shape), "b": 0.7 * y + rng.normal(0, 6, y.shape)}


def test_fold_k_pseudo_labels_come_from_an_ensemble_choice_made_without_fold_k(demo_data, tmp_path):
    rng = np.random.default_rng(0)
    y, folds, preds = _two_models(rng)
    base, summary = _labels(tmp_path / "base", demo_data, y, preds, folds)
    full = json.loads((tmp_path / "base/ensemble/weights.json").read_text())
    assert full["method"] == "nnls"
    nnls_folds = [k for k in range(FOLDS) if summary["folds"][str(k)]["method"] == "nnls"]
    assert nnls_folds, "NNLS must win on some fold for this test to mean anything"
    for k in range(FOLDS):
        chosen = summary["folds"][str(k)]
        assert chosen["chosen_on_folds"] == [j for j in range(FOLDS) if j != k]
        rows = folds != k
        method, w, _, _ = choose_blend(np.stack([preds["a"][rows], preds["b"][rows]]), y[rows], folds[rows])
        assert chosen["method"] == method
        np.testing.assert_allclose([chosen["weights"]["a"], chosen["weights"]["b"]], w)
        assert chosen["weights"] != full["weights"]  # the full-data choice is not fold k's
    assert summary["folds"]["all"]["weights"] == full["weights"]  # the refits keep the full-data choice
    saved = json.loads((tmp_path / "base/round2/pseudo/summary.json").read_text())
    assert saved["folds"]["0"]["method"] == summary["folds"]["0"]["method"]

    for k in nnls_folds[:2]:
        held = folds == k
        # fold k's OOF truths, then its predictions, changed: fold k's labels stay, another fold's move
        y2 = y.copy()
        y2[held] *= rng.uniform(0.5, 1.5, y2[held].shape)
        p2 = {m: p.copy() for m, p in preds.items()}
        p2["a"][held] = 1.1 * y[held] + rng.normal(0, 10, y[held].shape)
        for i, (yy, pp) in enumerate(((y2, preds), (y, p2))):
            labels, _ = _labels(tmp_path / f"k{k}_{i}", demo_data, yy, pp, folds)
            np.testing.assert_array_equal(labels[k], base[k])
            for j in range(FOLDS):
                if j != k and summary["folds"][str(j)]["method"] == "nnls":
                    assert np.abs(labels[j] - base[j]).max() > 1e-3, (k, j)


def test_with_one_model_fold_labels_are_its_fold_predictions(demo_data, tmp_path):
    rng = np.random.default_rng(1)
    y, folds, preds = _two_models(rng)
    labels, summary = _labels(tmp_path, demo_data, y, {"a": preds["a"]}, folds)
    ids = load_test(demo_data)["image_id"].tolist()
    for k in range(FOLDS):
        assert summary["folds"][str(k)]["method"] == "mean" and summary["folds"][str(k)]["weights"] == {"a": 1.0}
        want = [[10.0 + 3.0 * k + j + c for c in range(5)] for j in range(len(ids))]
        np.testing.assert_allclose(labels[k], want)


def _rounds(tmp, y, p1, p2, folds):
    for name, p in (("ensemble", p1), ("round2/ensemble", p2)):
        (tmp / name).mkdir(parents=True)
        _oof_frame(y, p, folds).to_parquet(tmp / name / "oof.parquet")
    (tmp / "round2/ensemble/weights.json").write_text(json.dumps({"weights": {"m": 1.0}}))


def test_round_2_is_kept_only_when_its_nested_oof_beats_round_1(tmp_path, capsys):
    from src.rounds.pseudo_labels import blend

    rng = np.random.default_rng(2)
    y = _truth(rng)
    folds = np.arange(N) % FOLDS
    p1 = y + rng.normal(0, 8, y.shape)
    # round 2: near perfect on fold 0, slightly worse than round 1 on every other fold (its errors 1.1 times
    # round 1's there, so any a > 0 fitted without fold 0 is worse on them)
    p2 = y + 1.1 * (p1 - y)
    p2[folds == 0] = y[folds == 0] + rng.normal(0, 0.5, y[folds == 0].shape)
    _rounds(tmp_path / "worse", y, p1, p2, folds)
    out = blend(tmp_path / "worse")
    s = out["oof_weighted_r2"]
    assert out["alpha_fitted"] > 0 and s["blend"] > s["round1"]  # on all OOF, round 2 looks worth it...
    assert s["blend_nested"] < s["round1"]  # ...but not when a is chosen without the fold it is scored on
    assert out["alpha"] == 0.0 and out["kept"] is False and "does not beat" in out["why"]
    assert json.loads((tmp_path / "worse/round2/blend.json").read_text()) == json.loads(json.dumps(out))
    oof = pd.read_parquet(tmp_path / "worse/round2/blend/oof.parquet").sort_values("image_id")
    np.testing.assert_allclose(oof[PRED].to_numpy(), p1)  # round 1's OOF
    assert "round 2 NOT kept: " in capsys.readouterr().out

    p2 = y + rng.normal(0, 4, y.shape)  # better on every fold
    for k in range(FOLDS):
        held = folds == k
        assert weighted_r2(y[held], p2[held]) > weighted_r2(y[held], p1[held])
    _rounds(tmp_path / "better", y, p1, p2, folds)
    out = blend(tmp_path / "better")
    s = out["oof_weighted_r2"]
    assert out["kept"] is True and out["alpha"] == out["alpha_fitted"] > 0 and s["blend_nested"] > s["round1"]
    assert "beats" in out["why"] and s["used"] == s["blend"]
    oof = pd.read_parquet(tmp_path / "better/round2/blend/oof.parquet").sort_values("image_id")
    np.testing.assert_allclose(oof[PRED].to_numpy(), (1 - out["alpha"]) * p1 + out["alpha"] * p2)
    assert "round 2 kept: " in capsys.readouterr().out


def _old_choice(p_oof, y, folds):
    """src.rounds.ensemble.blend's choice as it was written before choose_blend, for the comparison."""
    sw = np.sqrt(np.array([WEIGHTS[t] for t in TARGETS]))

    def fit(p, yy):
        w, _ = nnls((p * sw).reshape(len(p), -1).T, (yy * sw).ravel())
        return w if w.sum() > 0 else np.full(len(p), 1.0 / len(p))

    nested = np.zeros_like(y)
    for k in np.unique(folds):
        held = folds == k
        nested[held] = np.tensordot(fit(p_oof[:, ~held], y[~held]), p_oof[:, held], axes=1)
    candidates = {"mean": p_oof.mean(0), "nnls": nested}
    scores = {k: weighted_r2(y, v) for k, v in candidates.items()}
    method = max(scores, key=scores.get) if len(p_oof) > 1 else "mean"
    weights = np.full(len(p_oof), 1 / len(p_oof)) if method == "mean" else fit(p_oof, y)
    return method, weights, scores, candidates[method]


def test_the_ensemble_blend_chooses_as_before(demo_data, tmp_path):
    from src.rounds.ensemble import blend

    rng = np.random.default_rng(3)
    y = _truth(rng, 40)
    folds = np.arange(40) % 4
    ids = load_test(demo_data)["image_id"].tolist()
    cases = {"nnls": {"a": 0.6 * y + rng.normal(0, 2, y.shape), "b": 0.7 * y + rng.normal(0, 6, y.shape)},
             "mean": {"a": y + rng.normal(0, 5, y.shape), "b": y + rng.normal(0, 5, y.shape)},
             "one": {"a": 0.6 * y + rng.normal(0, 2, y.shape)}}  # fmt: skip
    for case, preds in cases.items():
        res = tmp_path / case
        for m, p in preds.items():
            (res / f"models/{m}").mkdir(parents=True)
            _oof_frame(y, p, folds).to_parquet(res / f"models/{m}/oof.parquet")
            test = pd.DataFrame({"image_id": ids})
            test[list(TARGETS)] = rng.uniform(5, 30, (len(ids), 5))
            test["Dry_Total_g"] = test["Dry_Green_g"] + test["Dry_Dead_g"] + test["Dry_Clover_g"]
            test["GDM_g"] = test["Dry_Green_g"] + test["Dry_Clover_g"]
            test.to_parquet(res / f"models/{m}/test_pred.parquet")
        blend(res, list(preds), demo_data)
        method, w, scores, oof = _old_choice(np.stack(list(preds.values())), y, folds)
        got = json.loads((res / "ensemble/weights.json").read_text())
        assert got["method"] == method == ("mean" if case == "one" else case)
        np.testing.assert_allclose(list(got["weights"].values()), w, rtol=1e-12)
        assert got["oof_weighted_r2"] == scores
        out = pd.read_parquet(res / "ensemble/oof.parquet")
        np.testing.assert_allclose(out[PRED].to_numpy(), oof, rtol=1e-12)
        again = choose_blend(np.stack(list(preds.values())), y, folds)
        assert again[0] == method and np.array_equal(again[1], w)
