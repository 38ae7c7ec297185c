"""Post-processing: each step is kept exactly when nested CV on OOF shows it helps, and does what it says."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src import postprocess as pp_cli
from src.core.io_utils import write_json
from src.core.metrics import weighted_r2
from src.core.targets import TARGETS
from src.rounds import postprocess as pp
from src.rounds.oof import PRED, TRUE

STATES = np.array(["NSW", "Tas", "Vic", "WA"])
CLEAR_GAIN = 1e-3  # a nested-CV gain well above noise on these frames


def _frame(true_c, pred_c, state=None, seed=0) -> pd.DataFrame:
    """OOF frame from components (N, 3) of truth and prediction; 5 folds at random."""
    n = len(true_c)
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"image_id": [f"ID{i:05d}" for i in range(n)], "fold": rng.integers(0, 5, n),
                       "State": state if state is not None else rng.choice(STATES[:3], n)})  # fmt: skip
    df[TRUE] = pp.expand(true_c)
    df[PRED] = pp.expand(pred_c)
    return df


def _truth(rng, n):
    return np.column_stack([rng.uniform(5, 60, n), rng.uniform(2, 40, n), rng.uniform(2, 30, n)])


def _step(params, name):
    return next(s for s in params["steps"] if s["name"] == name)


def _score(df):
    return weighted_r2(df[TRUE].to_numpy(), df[PRED].to_numpy())


def test_shrink_kept_with_clover_too_high():
    rng = np.random.default_rng(1)
    t = _truth(rng, 300)
    p = t * rng.lognormal(0, 0.1, t.shape) * [1.0, 1.0, 1.25]
    df = _frame(t, p)
    params = pp.fit(df)
    s = _step(params, "shrink")
    assert s["kept"] and s["oof_weighted_r2_with"] > s["oof_weighted_r2_without"] + 0.005
    assert s["params"]["factor"]["Dry_Clover_g"] == pytest.approx(0.8, abs=0.03)
    assert s["params"]["factor"]["Dry_Green_g"] == pytest.approx(1.0, abs=0.03)
    out = pp.apply_oof(df, params)
    assert _score(out) > _score(df) + 0.005
    assert np.median(out["pred_Dry_Clover_g"] / df["pred_Dry_Clover_g"]) == pytest.approx(0.8, abs=0.03)


def test_calibrate_kept_for_affine_bias():
    rng = np.random.default_rng(2)
    t = _truth(rng, 300)
    df = _frame(t, 10 + 0.6 * t + rng.normal(0, 1, t.shape))
    params = pp.fit(df)
    s = _step(params, "calibrate")
    assert s["kept"] and s["oof_weighted_r2_with"] > s["oof_weighted_r2_without"] + 0.01
    assert params["oof_weighted_r2_after"] > 0.98 > params["oof_weighted_r2_before"] + 0.05
    # whatever the steps before it did, the chain undoes pred = 10 + 0.6 * truth (slope and level)
    probe = pd.DataFrame({"image_id": ["a", "b"]})
    probe[list(TARGETS)] = pp.expand(10 + 0.6 * np.array([[20.0] * 3, [30.0] * 3]))
    out = pp.apply(probe, params)[list(TARGETS[:3])].to_numpy()
    assert out[1] - out[0] == pytest.approx(np.full(3, 10.0), abs=0.5)
    assert out[0] == pytest.approx(np.full(3, 20.0), abs=2.5)  # shrink alone: 26 for Green


def test_zero_small_kept_for_tiny_predictions_of_absent_clover():
    rng = np.random.default_rng(3)
    t = _truth(rng, 300)
    absent = rng.random(300) < 0.4
    t[absent, 2] = 0.0
    t[~absent, 2] = rng.uniform(10, 40, (~absent).sum())
    p = t * rng.lognormal(0, 0.05, t.shape)
    p[absent, 2] = rng.uniform(1.0, 6.0, absent.sum())
    df = _frame(t, p)
    params = pp.fit(df)
    s = _step(params, "zero_small")
    assert s["kept"] and s["oof_weighted_r2_with"] > s["oof_weighted_r2_without"] + CLEAR_GAIN
    assert 4 < s["params"]["threshold"]["Dry_Clover_g"] < 10
    out = pp.apply_oof(df, params)["pred_Dry_Clover_g"].to_numpy()
    assert (out[absent] == 0).mean() > 0.9 and (out[~absent] == 0).mean() < 0.02


def _state_frame(seed=4, n=400):
    """WA never has Dead but its predictions leak some; WA is recognisable (much Clover, little Green)."""
    rng = np.random.default_rng(seed)
    state = rng.choice(STATES, n, p=[0.25, 0.25, 0.25, 0.25])
    wa = state == "WA"
    t = np.column_stack([rng.uniform(20, 60, n), rng.uniform(3, 40, n), rng.uniform(0, 5, n)])
    t[wa, 0], t[wa, 1], t[wa, 2] = rng.uniform(5, 15, wa.sum()), 0.0, rng.uniform(20, 40, wa.sum())
    p = t * rng.lognormal(0, 0.05, t.shape)
    p[wa, 1] = rng.uniform(3, 15, wa.sum())
    return _frame(t, p, state=state, seed=seed), wa


def test_state_rule_kept_and_zeroes_dead_of_predicted_wa():
    df, wa = _state_frame()
    params = pp.fit(df)
    s = _step(params, "state_rule")
    assert s["kept"] and s["oof_weighted_r2_with"] > s["oof_weighted_r2_without"] + CLEAR_GAIN
    assert [(r["state"], r["component"]) for r in s["params"]["rules"]] == [("WA", "Dry_Dead_g")]
    out = pp.apply_oof(df, params)["pred_Dry_Dead_g"].to_numpy()
    assert (out[wa] == 0).mean() > 0.9 and (out[~wa] == 0).mean() < 0.05
    json.dumps(params)  # no numpy scalars, no pickled classifier


def test_apply_on_test_frame_equals_apply_oof_and_survives_json_in_another_process(tmp_path):
    df, _ = _state_frame(seed=5)
    params = pp.fit(df)
    assert sum(s["kept"] for s in params["steps"]) >= 2  # the check below covers more than one step
    write_json(tmp_path / "pp.json", params)
    loaded = json.loads((tmp_path / "pp.json").read_text())
    test = df[["image_id", *PRED]].rename(columns=dict(zip(PRED, TARGETS))).iloc[::-1]  # no State, other order
    out = pp.apply(test, loaded)
    assert out["image_id"].tolist() == test["image_id"].tolist()
    expected = pp.apply_oof(df, params)[PRED].to_numpy()[::-1]
    np.testing.assert_array_equal(out[list(TARGETS)].to_numpy(), expected)
    assert not np.allclose(expected, df[PRED].to_numpy()[::-1])  # the steps changed something
    # the Kaggle side: a fresh process with the JSON only, and neither sklearn nor scipy's optimiser loaded
    test.to_parquet(tmp_path / "test.parquet")
    code = ("import json, sys, pandas as pd; from src.rounds.postprocess import apply; "
            f"p = json.load(open({str(tmp_path / 'pp.json')!r})); "
            f"apply(pd.read_parquet({str(tmp_path / 'test.parquet')!r}), p).to_parquet({str(tmp_path / 'out.parquet')!r}); "
            "assert not {'sklearn', 'scipy.optimize'} & set(sys.modules), 'apply needs only numpy and pandas'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    other = pd.read_parquet(tmp_path / "out.parquet")[list(TARGETS)].to_numpy()
    np.testing.assert_allclose(other, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [4, 6])
def test_relations_hold_exactly_and_masses_nonnegative(seed):
    df, _ = _state_frame(seed=seed)
    params = pp.fit(df)  # shrink, State rule and calibration (negative intercepts) kept; small and negative inputs
    raw = pd.DataFrame({"image_id": list("abcd")})
    raw[list(TARGETS)] = pp.expand(np.array([[0.0, 0, 0], [0.1, 0.2, 0.05], [30, 10, 5], [80, 0, 40]]))
    raw.loc[0, "Dry_Dead_g"] = -3.0  # a bad input component is clipped, not propagated
    none_kept = {**params, "steps": [{**s, "kept": False} for s in params["steps"]]}
    outs = [pp.apply(raw, p)[list(TARGETS)].to_numpy() for p in (params, none_kept)]
    for out in [*outs, pp.apply_oof(df, params)[PRED].to_numpy()]:
        g, d, c, gdm, total = out.T
        np.testing.assert_array_equal(gdm, g + c)
        np.testing.assert_array_equal(total, gdm + d)
        assert (out >= 0).all()


def test_no_step_kept_on_unbiased_predictions():
    """truth = pred * noise with mean 1: E[truth | pred] = pred, nothing to correct. In-sample the calibration
    would still 'gain' (least squares always does); only the nested CV sees that it does not."""
    rng = np.random.default_rng(7)
    p = _truth(rng, 300) + 8
    s = 0.4
    df = _frame(p * rng.lognormal(-s * s / 2, s, p.shape), p)
    params = pp.fit(df)
    assert [s["kept"] for s in params["steps"]] == [False] * 4
    assert params["oof_weighted_r2_after"] == pytest.approx(params["oof_weighted_r2_before"], abs=1e-9)
    y, raw = df[TRUE].to_numpy(), df[PRED[:3]].to_numpy()
    in_sample = pp._apply_calibrate(raw, raw, pp._fit_calibrate(raw, raw, y, None))
    assert weighted_r2(y, pp.expand(in_sample)) > weighted_r2(y, pp.expand(raw))
    cal = _step(params, "calibrate")  # nested: no gain, or one within its fold-to-fold noise
    assert cal["gain"] <= 0 or np.mean(cal["fold_gains"]) <= pp.KEEP_SE * cal["gain_se"]
    out = pp.apply_oof(df, params)
    np.testing.assert_allclose(out[PRED].to_numpy(), df[PRED].to_numpy(), rtol=1e-12)


def test_nested_cv_never_fits_on_held_out_fold(monkeypatch):
    df, _ = _state_frame(seed=8, n=200)
    folds = df["fold"].to_numpy()
    green = df["true_Dry_Green_g"].to_numpy()  # unique floats: which rows a fit saw
    seen = []
    for name, (fit_step, apply_step) in list(pp.STEPS.items()):
        def spy(c, raw, y, state, _fit=fit_step):
            seen.append(frozenset(y[:, 0].tolist()))
            return _fit(c, raw, y, state)

        monkeypatch.setitem(pp.STEPS, name, (spy, apply_step))
    params = pp.fit(df)

    def n_fits(kept):  # a selection fits step i after the k_i steps kept before it: k_i + 1 fits per fold
        kept_before = np.cumsum([0] + [n in kept for n in pp.STEPS])[:-1]
        return int((kept_before + 1).sum())

    kept = [s["name"] for s in params["steps"] if s["kept"]]
    assert len(kept) >= 2
    outer = {o["fold"]: o["kept"] for o in params["outer_folds"]}
    assert sorted(outer) == params["folds"] and any(outer.values())
    rows = lambda *ks: frozenset(green[~np.isin(folds, ks)].tolist())  # noqa: E731
    # the selection on all rows: n_fits per fold on the other folds, and as many final fits on all rows; the outer
    # fold k: its selection on folds other than k and j for each j, then its kept chain once on all folds but k
    expected = Counter({rows(): n_fits(kept)})
    for k in outer:
        expected[rows(k)] += n_fits(kept) + len(outer[k])
        for j in outer:
            if j != k:
                expected[rows(k, j)] += n_fits(outer[k])
    assert Counter(seen) == expected


def test_cli_writes_json_and_prints_table(tmp_path, capsys):
    df, _ = _state_frame(seed=9, n=150)
    df.to_parquet(tmp_path / "oof.parquet")
    pp_cli.main(["--oof", str(tmp_path / "oof.parquet"), "--out", str(tmp_path / "pp.json")])
    printed = capsys.readouterr().out
    params = json.loads((tmp_path / "pp.json").read_text())
    assert [line.split()[0] for line in printed.splitlines()[1:5]] == list(pp.STEPS)
    assert params["n_images"] == 150 and params["folds"] == sorted(df["fold"].unique().tolist())
    assert f"{params['oof_weighted_r2_after']:.4f}" in printed


@pytest.mark.parametrize("breakage, message", [
    (lambda df: df.drop(columns=["pred_Dry_Dead_g"]), "missing columns ['pred_Dry_Dead_g']"),
    (lambda df: df.assign(fold=0), "nested CV needs at least 2"),
    (lambda df: df.assign(pred_Dry_Green_g=np.where(df.index == 3, np.nan, df["pred_Dry_Green_g"])), "ID00003"),
])  # fmt: skip
def test_cli_bad_input_is_one_user_error_line(tmp_path, capsys, breakage, message):
    df, _ = _state_frame(seed=10, n=60)
    breakage(df).to_parquet(tmp_path / "oof.parquet")
    with pytest.raises(SystemExit) as exc:
        pp_cli.main(["--oof", str(tmp_path / "oof.parquet"), "--out", str(tmp_path / "pp.json")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert message in err and str(tmp_path / "oof.parquet") in err
    assert not (tmp_path / "pp.json").exists()


@pytest.mark.parametrize("states", [STATES[[0, 3]], STATES])
def test_stored_classifier_reproduces_sklearn_probabilities(states):
    from sklearn.linear_model import LogisticRegression

    df, _ = _state_frame(seed=11, n=200)
    df = df[df["State"].isin(states)]
    raw = df[PRED[:3]].to_numpy()
    params = pp._fit_state(raw, raw, df[TRUE].to_numpy(), df["State"].to_numpy())
    lr = LogisticRegression(solver="newton-cholesky", max_iter=1000).fit(np.log1p(raw), df["State"].to_numpy())
    assert params["classifier"]["classes"] == list(states)
    np.testing.assert_allclose(pp._proba(raw, params["classifier"]), lr.predict_proba(np.log1p(raw)), atol=1e-9)


def test_apply_rejects_non_finite_predictions():
    df, _ = _state_frame(seed=12, n=60)
    test = df[["image_id", *PRED]].rename(columns=dict(zip(PRED, TARGETS)))
    test.loc[5, "Dry_Clover_g"] = np.inf
    with pytest.raises(pp.UserError, match="ID00005"):
        pp.apply(test, {"steps": []})


def _arrays(df):
    return (df[PRED[:3]].to_numpy(), df[TRUE].to_numpy(), df["State"].astype(str).to_numpy(), df["fold"].to_numpy())


def test_outer_selection_never_sees_the_fold_it_predicts():
    """The honest predictions of fold k come from a selection and a fit on the other folds only: perturbing fold
    k's truths leaves them exactly as they were. The perturbation is one that a selection seeing fold k would react
    to (Clover x 2 there makes the Clover x 0.8 shrink a loss: on all rows nothing is kept), and it does move the
    other folds' predictions, whose fits see fold k."""
    rng = np.random.default_rng(13)
    t = _truth(rng, 150)
    df = _frame(t, t * rng.lognormal(0, 0.1, t.shape) * [1.0, 1.0, 1.25], seed=13)
    raw, y, state, folds = _arrays(df)
    held = folds == 0
    c = y[:, :3].copy()
    c[held, 2] *= 2
    y2 = pp.expand(c)
    assert pp._select(raw, y, state, folds)[0] != pp._select(raw, y2, state, folds)[0]  # fold 0 sways a selection
    base, outer = pp._honest(raw, y, state, folds)
    pert, outer2 = pp._honest(raw, y2, state, folds)
    np.testing.assert_array_equal(pert[held], base[held])
    assert not np.allclose(pert[~held], base[~held])
    assert all("shrink" in o["kept"] for o in outer) and outer2[0] == outer[0] == {"fold": 0, "kept": outer[0]["kept"]}


def _fake_step(df, delta):
    """A step that moves each row's components by delta[fold] x (truth - prediction): positive towards the truth.
    It looks the rows up by their (unique) predicted Green, so whichever subset it is fitted on or applied to,
    fold f gains or loses exactly as delta[f] says."""
    raw, y, _, folds = _arrays(df)
    order = np.argsort(raw[:, 0])
    key, move, f = raw[order, 0], (y[:, :3] - raw)[order], folds[order]

    def apply_step(c, r, p):
        i = np.searchsorted(key, r[:, 0])
        return c + np.asarray(delta)[f[i], None] * move[i]

    return (lambda c, r, y, state: {}), apply_step


def test_gain_within_fold_to_fold_noise_not_kept(monkeypatch):
    """One fold gains much, the other four lose a little: the pooled gain is positive (the old rule, gain > 1e-4,
    kept it), but the mean per-fold gain is below its standard error, so the step is not kept. The same step
    gaining in every fold is kept."""
    rng = np.random.default_rng(14)
    t = _truth(rng, 200)
    df = _frame(t, t * rng.lognormal(0, 0.3, t.shape), seed=14)
    monkeypatch.setattr(pp, "STEPS", {"fake": _fake_step(df, [0.5, -0.06, -0.06, -0.06, -0.06])})
    s = _step(pp.fit(df), "fake")
    g = np.array(s["fold_gains"])
    assert s["gain"] > 1e-3 and g[0] > 0 > g[1:].max()
    assert s["gain_se"] == pytest.approx(g.std(ddof=1) / np.sqrt(5)) and 0 < g.mean() < s["gain_se"]
    assert not s["kept"]
    monkeypatch.setattr(pp, "STEPS", {"fake": _fake_step(df, [0.2, 0.15, 0.25, 0.2, 0.1])})
    s = _step(pp.fit(df), "fake")
    assert s["kept"] and np.mean(s["fold_gains"]) > s["gain_se"] > 0


def test_honest_score_written_and_below_the_selection_score_on_noise(tmp_path, capsys):
    """Unbiased predictions (nothing to correct): what the selection keeps there it kept on noise, so its own
    nested score flatters it; the outer CV, whose folds keep other steps, does not."""
    rng = np.random.default_rng(117)
    p = _truth(rng, 120) + 8
    df = _frame(p * rng.lognormal(-0.08, 0.4, p.shape), p, seed=117)
    df.to_parquet(tmp_path / "oof.parquet")
    pp_cli.main(["--oof", str(tmp_path / "oof.parquet"), "--out", str(tmp_path / "pp.json")])
    printed = capsys.readouterr().out
    params = json.loads((tmp_path / "pp.json").read_text())
    outer = params["outer_folds"]
    assert [o["fold"] for o in outer] == params["folds"] and any(o["kept"] for o in outer)
    assert len({tuple(o["kept"]) for o in outer}) > 1  # the kept set changes from outer fold to outer fold
    assert params["oof_weighted_r2_honest"] < params["oof_weighted_r2_after"] - 1e-3
    assert params["honest_gain"] == pytest.approx(params["oof_weighted_r2_honest"] - params["oof_weighted_r2_before"])
    assert f"{params['oof_weighted_r2_honest']:.4f} honest" in printed and "selection score" in printed


def test_two_folds_keep_no_step_in_the_outer_folds():
    """With 2 folds each outer fold's selection has 1 inner fold: no nested CV, so no step; the final selection
    (2 folds) still runs."""
    rng = np.random.default_rng(15)
    t = _truth(rng, 80)
    df = _frame(t, t * rng.lognormal(0, 0.1, t.shape) * [1.0, 1.0, 1.25]).assign(fold=np.arange(80) % 2)
    params = pp.fit(df)
    assert params["folds"] == [0, 1] and params["outer_folds"] == [{"fold": 0, "kept": []}, {"fold": 1, "kept": []}]
    assert params["oof_weighted_r2_honest"] == pytest.approx(params["oof_weighted_r2_before"], abs=1e-12)
    assert _step(params, "shrink")["kept"] and len(_step(params, "shrink")["fold_gains"]) == 2
