import subprocess
import sys

import pandas as pd
import pytest

from src.core.errors import UserError
from src.data.folds import STRATEGIES, make_folds, read_fold_csv
from src.data.schema import load_train


@pytest.fixture(scope="module")
def images(demo_data):
    return load_train(demo_data)


def test_group_location_has_no_group_in_two_folds_and_is_balanced(images):
    f = make_folds(images, n_folds=5, strategy="group_location", seed=42)
    assert len(f) == len(images) and f["image_id"].is_unique and set(f["image_id"]) == set(images["image_id"])
    assert sorted(f["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (f.groupby("group")["fold"].nunique() == 1).all()
    sizes = f["fold"].value_counts()
    max_group = f["group"].value_counts().max()
    assert sizes.max() - sizes.min() <= max_group + 1
    assert {"State", "Season", "Species", "stratum"} <= set(f.columns)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_deterministic_and_covers_all(images, strategy):
    a = make_folds(images, 5, strategy, seed=1)
    b = make_folds(images, 5, strategy, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert (a["fold"] >= 0).all() and a["fold"].nunique() == 5
    if strategy == "group_date":
        assert (a.groupby("Sampling_Date")["fold"].nunique() == 1).all()


def test_seed_changes_assignment(images):
    a = make_folds(images, 5, "group_location", seed=1)["fold"]
    b = make_folds(images, 5, "group_location", seed=2)["fold"]
    assert (a != b).any()


def test_bad_fold_counts(images):
    with pytest.raises(UserError, match="--n-folds 1"):
        make_folds(images, 1)
    with pytest.raises(UserError, match="site visits"):
        make_folds(images, 10_000)


def test_fold_csv_round_trip_and_missing_image(images, tmp_path):
    f = make_folds(images, 5)
    f.to_csv(tmp_path / "f.csv", index=False)
    assert (read_fold_csv(tmp_path / "f.csv", images, 5).to_numpy() == f["fold"].to_numpy()).all()
    f.iloc[1:].to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(UserError, match=f"{images.image_id[0]}|has no fold"):
        read_fold_csv(tmp_path / "g.csv", images)
    with pytest.raises(UserError, match="not found"):
        read_fold_csv(tmp_path / "nope.csv", images)


def test_make_folds_cli_prints_summary(demo_data, tmp_path):
    out = tmp_path / "folds.csv"
    proc = subprocess.run([sys.executable, "-m", "src.make_folds", "--data-dir", str(demo_data), "--out", str(out),
                           "--n-folds", "5", "--cv-strategy", "group_location", "--seed", "42"],
                          capture_output=True, text=True, check=True)
    assert "mean_total_g" in proc.stdout and "groups" in proc.stdout
    df = pd.read_csv(out)
    assert list(df.columns[:3]) == ["image_id", "image_path", "fold"]
