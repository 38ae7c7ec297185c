"""The results folder as DVC reads it (src/reporting/dvc_metrics.py): scores equal the report's table, the
learning curve averages the folds, the scatter is the ensemble's OOF, a rerun replaces the folder."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from src.core.errors import UserError
from src.reporting.dvc_metrics import write_dvc_metrics
from src.reporting.report import load_model_oofs, model_table
from src.rounds.oof import PRED, TRUE


def _oof(n, rng, noise):
    truth = rng.uniform(1, 50, (n, len(TRUE)))
    df = pd.DataFrame(truth, columns=TRUE).join(pd.DataFrame(truth + rng.normal(0, noise, truth.shape), columns=PRED))
    return df.assign(image_id=[f"ID{i}" for i in range(n)], fold=np.arange(n) % 2, State=np.where(np.arange(n) % 3, "Vic", "NSW"))


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    for model, noise, epochs in (("good", 2.0, (3, 5)), ("poor", 15.0, (4, 4))):
        d = tmp_path / "models" / model
        d.mkdir(parents=True)
        _oof(40, rng, noise).to_parquet(d / "oof.parquet")
        (d / "oof_metrics.json").write_text(json.dumps({"score": "crossfold_epoch"}))
        for k, n in enumerate(epochs):
            (d / f"fold{k}").mkdir()
            pd.DataFrame({"epoch": range(n), "weighted_r2": [0.1 * (k + 1) * (e + 1) for e in range(n)],
                          "val_loss": 1.0, "train_loss": 2.0}).to_csv(d / f"fold{k}/history.csv", index=False)  # fmt: skip
    (tmp_path / "ensemble").mkdir()
    _oof(40, rng, 1.0).to_parquet(tmp_path / "ensemble/oof.parquet")
    return tmp_path


def test_scores_match_the_report_table_and_the_best_is_the_ensemble(results):
    out = write_dvc_metrics(results, ["good", "poor"], results / "metrics")
    scores = json.loads((out / "models.json").read_text())
    table = model_table(results, load_model_oofs(results, ["good", "poor"]),
                        pd.read_parquet(results / "ensemble/oof.parquet")).set_index("model")  # fmt: skip
    for name in ("good", "poor", "ensemble"):
        assert scores[name]["weighted_r2"] == pytest.approx(table.loc[name, "weighted_r2"])
    assert scores["ensemble"]["weighted_r2"] > scores["good"]["weighted_r2"] > scores["poor"]["weighted_r2"]
    assert "submission" not in scores  # no final rule yet
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as any folder made here: not mkdtemp's 0700


def test_the_submissions_scores_after_every_step_are_a_metric(results):
    (results / "final").mkdir()
    steps = {"steps": [{"step": "round 1", "oof_weighted_r2": 0.7}, {"step": "+ post-processing",
             "oof_nested_with": 0.72, "oof_honest_with": 0.71, "holdout_with": 0.66}], "holdout_weighted_r2": 0.66}  # fmt: skip
    (results / "final/steps.json").write_text(json.dumps(steps))
    scores = json.loads((write_dvc_metrics(results, ["good"], results / "metrics") / "models.json").read_text())
    assert scores["submission"] == {"oof_weighted_r2_honest": 0.71, "holdout_weighted_r2": 0.66}  # not the selection score


def test_curves_average_the_folds_that_reached_each_epoch(results):
    out = write_dvc_metrics(results, ["good", "poor"], results / "metrics")
    good = pd.read_csv(out / "curves/good.csv")
    assert good["epoch"].tolist() == [0, 1, 2, 3, 4] and good["folds"].tolist() == [2, 2, 2, 1, 1]
    assert good["weighted_r2"].tolist() == pytest.approx([0.15, 0.3, 0.45, 0.8, 1.0])  # fold 1 alone after epoch 2


def test_the_scatter_is_the_ensembles_oof_per_target(results):
    out = write_dvc_metrics(results, ["good"], results / "metrics")
    ens = pd.read_parquet(results / "ensemble/oof.parquet")
    dead = pd.read_csv(out / "pred_vs_true/dead.csv")
    assert sorted(p.stem for p in (out / "pred_vs_true").glob("*.csv")) == ["clover", "dead", "gdm", "green", "total"]
    assert dead["pred_g"].to_numpy() == pytest.approx(ens["pred_Dry_Dead_g"].to_numpy())
    assert dead["true_g"].to_numpy() == pytest.approx(ens["true_Dry_Dead_g"].to_numpy())


def test_a_rerun_replaces_the_folder_and_a_missing_model_writes_nothing(results):
    out = write_dvc_metrics(results, ["good", "poor"], results / "metrics")
    write_dvc_metrics(results, ["good"], out)
    assert [p.name for p in (out / "curves").iterdir()] == ["good.csv"]  # no stale curve of a dropped model
    before = (out / "models.json").read_text()
    with pytest.raises(UserError, match="missing"):
        write_dvc_metrics(results, ["good", "missing"], out)
    assert (out / "models.json").read_text() == before and not list(results.glob(".metrics.*"))
