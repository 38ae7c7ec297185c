"""The submission's recipe: members and weights from the ensemble, round 2 and the refits, the
post-processing applied, and every step scored without and with it (on synthetic predictions)."""

import json

import numpy as np
import pandas as pd
import pytest

from src.core.targets import TARGETS
from src.data.schema import load_test
from src.rounds import postprocess as pp
from src.rounds.final import build, combine
from src.rounds.oof import PRED, TRUE
from src.rounds.score import score


def _write(path, df):
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path) if path.suffix == ".parquet" else path.write_text(json.dumps(df))


def _preds(ids, rng, scale):
    c = rng.uniform(5, 40, (len(ids), 3)) * scale
    df = pd.DataFrame({"image_id": ids})
    df[list(TARGETS)] = pp.expand(c)
    return df


def write_members(res, ids, rng):
    """Test predictions of models a and b: their folds' mean and refits, in both rounds."""
    for i, folder in enumerate(["models/a", "models/b", "refit/a", "refit/b", "round2/models/a", "round2/models/b",
                                "round2/refit/a", "round2/refit/b"]):  # fmt: skip
        _write(res / folder / "test_pred.parquet", _preds(ids, rng, 1 + i / 10))


@pytest.fixture
def results(demo_data, tmp_path):
    """Round 1 (two models, weights 0.25/0.75), round 2 (blend weight 0.4), refits, and a
    post-processing that halves Clover, as the rules before `final` would leave them."""
    rng = np.random.default_rng(0)
    ids = load_test(demo_data)["image_id"].tolist()
    res = tmp_path / "results"
    write_members(res, ids, rng)
    _write(res / "ensemble/weights.json", {"method": "nnls", "weights": {"a": 0.25, "b": 0.75}})
    _write(res / "round2/blend.json", {"alpha": 0.4, "weights": {"a": 1.0, "b": 0.0}})
    n = 40
    oof = pd.DataFrame({"image_id": [f"T{i}" for i in range(n)], "fold": np.arange(n) % 4, "State": "NSW"})
    truth = rng.uniform(5, 40, (n, 3))
    oof[TRUE], oof[PRED] = pp.expand(truth), pp.expand(truth * rng.lognormal(0, 0.2, truth.shape))
    _write(res / "ensemble/oof.parquet", oof)
    _write(res / "round2/blend/oof.parquet", oof.assign(**{p: oof[p] * 1.05 for p in PRED}))
    post = {"steps": [{"name": "shrink", "kept": True, "params": {"factor": {"Dry_Green_g": 1.0, "Dry_Dead_g": 1.0,
            "Dry_Clover_g": 0.5}}}], "oof_weighted_r2_before": 0.5, "oof_weighted_r2_after": 0.6}  # fmt: skip
    _write(res / "ensemble/postprocess.json", post)
    return res


def test_the_recipe_blends_the_chosen_members_then_post_processes(results, demo_data):
    recipe = build(results, demo_data, round2=True, refit=True, refit_evidence_required=False)
    members = {m["model_dir"]: m["weight"] for m in recipe["members"]}
    # round 1 keeps 1 - 0.4 of its weights, round 2 gets 0.4 of its own; b's round-2 weight 0 is no member
    assert members == pytest.approx({"refit/a": 0.15, "refit/b": 0.45, "round2/refit/a": 0.4})
    read = lambda d: pd.read_parquet(results / d / "test_pred.parquet").set_index("image_id")[list(TARGETS)]  # noqa: E731
    raw = sum(w * read(d) for d, w in members.items())
    sub = pd.read_csv(results / "submission.csv")
    got = sub.assign(image_id=sub["sample_id"].str.split("__").str[0], t=sub["sample_id"].str.split("__").str[1])
    clover = got[got["t"] == "Dry_Clover_g"].set_index("image_id")["target"]
    np.testing.assert_allclose(clover.loc[raw.index], 0.5 * raw["Dry_Clover_g"], rtol=1e-9)  # post-processed
    gdm = got[got["t"] == "GDM_g"].set_index("image_id")["target"]
    np.testing.assert_allclose(gdm.loc[raw.index], raw["Dry_Green_g"] + 0.5 * raw["Dry_Clover_g"], rtol=1e-9)
    # the same recipe, applied again in memory (as the Kaggle package does), gives the same numbers
    again = combine(json.loads((results / "final/recipe.json").read_text()), {d: read(d).reset_index() for d in members})
    np.testing.assert_allclose(again.set_index("image_id").loc[raw.index, "Dry_Clover_g"], clover.loc[raw.index])


def test_each_step_is_scored_without_and_with_it_on_the_holdout(results, demo_data):
    build(results, demo_data, round2=True, refit=True, refit_evidence_required=False)
    steps = json.loads((results / "final/steps.json").read_text())
    names = [s["step"] for s in steps["steps"]]
    assert names[0].startswith("round 1") and "pseudo-label" in names[1] and "refit" in names[2]
    assert names[3].startswith("+ post-processing (shrink)")
    # The chain links: each step's "without" is the previous one's "with".
    chain = [steps["steps"][0]["holdout_weighted_r2"]] + [s["holdout_with"] for s in steps["steps"][1:]]
    assert [s["holdout_without"] for s in steps["steps"][1:]] == pytest.approx(chain[:-1])
    assert len(set(np.round(chain, 6))) == len(chain)  # every step changed the predictions
    assert steps["holdout_weighted_r2"] == pytest.approx(chain[-1])
    assert chain[-1] == pytest.approx(score(results / "submission.csv", demo_data / "test_solution.csv")["weighted_r2"])
    assert steps["steps"][2]["oof_with"] is None  # a refit has no OOF: none is made up
    plain = build(results, demo_data)  # neither round 2 nor refits: round 1's own members
    assert {m["model_dir"] for m in plain["members"]} == {"models/a", "models/b"}
