"""The synthetic Kaggle-layout dataset: file layout, label relations, realism, determinism, learnability."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from src import synth as synth_cli
from src.data import synth
from src.data.synth import color_fractions, generate

W, H = 400, 200
N_TRAIN, N_TEST = 120, 40
TARGET_ORDER = ["Dry_Clover_g", "Dry_Dead_g", "Dry_Green_g", "Dry_Total_g", "GDM_g"]
REAL_SPECIES = {
    "Ryegrass_Clover", "Ryegrass", "Phalaris_Clover", "Clover", "Fescue", "Lucerne", "Phalaris",
    "Phalaris_Ryegrass_Clover", "Phalaris_Clover_Ryegrass_Barleygrass_Bromegrass",
    "Phalaris_BarleyGrass_SilverGrass_SpearGrass_Clover_Capeweed", "Fescue_CrumbWeed", "WhiteClover",
    "SubcloverLosa", "SubcloverDalkeith", "Mixed",
}  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "demo"
    generate(out, N_TRAIN, N_TEST, seed=0, width=W, height=H)
    return out


def wide(train: pd.DataFrame) -> pd.DataFrame:
    """One row per image with the five targets as columns."""
    keys = ["image_path", "Sampling_Date", "State", "Species", "Pre_GSHH_NDVI", "Height_Ave_cm"]
    return train.pivot_table(index=keys, columns="target_name", values="target").reset_index()


def test_layout(demo):
    train = pd.read_csv(demo / "train.csv")
    test = pd.read_csv(demo / "test.csv")
    sub = pd.read_csv(demo / "sample_submission.csv")
    sol = pd.read_csv(demo / "test_solution.csv")
    assert list(train.columns) == [
        "sample_id", "image_path", "Sampling_Date", "State", "Species",
        "Pre_GSHH_NDVI", "Height_Ave_cm", "target_name", "target",
    ]  # fmt: skip
    assert list(test.columns) == ["sample_id", "image_path", "target_name"]
    assert list(sub.columns) == ["sample_id", "target"] and list(sol.columns) == ["sample_id", "target"]
    assert len(train) == 5 * N_TRAIN and len(test) == 5 * N_TEST

    for df, split in ((train, "train"), (test, "test")):
        assert df["sample_id"].is_unique
        ids = df["sample_id"].str.extract(r"^(ID\d{10})__(\w+)$")
        assert ids.notna().all().all(), "sample_id must be ID + 10 digits + __ + target"
        assert (ids[1] == df["target_name"]).all()
        assert (df["image_path"] == split + "/" + ids[0] + ".jpg").all()
        # Five rows per image, contiguous, in Kaggle's alphabetical target order.
        assert df["target_name"].tolist() == TARGET_ORDER * (len(df) // 5)
        paths = df["image_path"].tolist()
        assert paths == [p for p in paths[::5] for _ in range(5)]
        for rel in df["image_path"].unique():
            with Image.open(demo / rel) as im:
                assert im.format == "JPEG" and im.size == (W, H)
    assert not set(train["image_path"].str[6:]) & set(test["image_path"].str[5:]), "train and test ids overlap"

    assert (sub["sample_id"] == test["sample_id"]).all() and (sub["target"] == 0).all()
    assert (sol["sample_id"] == test["sample_id"]).all()
    assert sol["target"].notna().all()


def test_relations_and_metadata(demo):
    train = pd.read_csv(demo / "train.csv")
    w = wide(train)
    assert len(w) == N_TRAIN  # metadata constant within an image
    assert (train["target"] >= 0).all()
    assert (w["GDM_g"] - w["Dry_Green_g"] - w["Dry_Clover_g"]).abs().max() < 1e-6
    assert (w["Dry_Total_g"] - w["Dry_Green_g"] - w["Dry_Dead_g"] - w["Dry_Clover_g"]).abs().max() < 1e-6
    assert (w["Dry_Total_g"] > 0).all()
    assert (w.loc[w["State"] == "WA", "Dry_Dead_g"] == 0).all()
    assert w["Pre_GSHH_NDVI"].between(0.16, 0.91).all() and w["Height_Ave_cm"].between(1, 70).all()
    assert set(w["Species"]) <= REAL_SPECIES

    # Test rows follow the same label rules.
    sol = pd.read_csv(demo / "test_solution.csv")
    t = sol.assign(name=sol["sample_id"].str.split("__").str[1]).pivot_table(
        index=sol["sample_id"].str.split("__").str[0], columns="name", values="target"
    )
    assert (t["Dry_Total_g"] - t["Dry_Green_g"] - t["Dry_Dead_g"] - t["Dry_Clover_g"]).abs().max() < 1e-6
    assert (t["GDM_g"] - t["Dry_Green_g"] - t["Dry_Clover_g"]).abs().max() < 1e-6


def test_visits_states_dates(demo):
    w = wide(pd.read_csv(demo / "train.csv"))
    assert w["Sampling_Date"].str.fullmatch(r"2015/([1-9]|1[0-2])/([1-9]|[12]\d|3[01])").all()
    visits = w.groupby(["State", "Sampling_Date"]).size()
    assert visits.between(3, 6).all(), visits[~visits.between(3, 6)]
    # One visit per State + date, so a visit shares its species.
    assert (w.groupby(["State", "Sampling_Date"])["Species"].nunique() == 1).all()
    share = w["State"].value_counts(normalize=True)
    real = pd.Series(synth.STATE_IMAGES, dtype=float) / sum(synth.STATE_IMAGES.values())
    assert set(share.index) == {"Tas", "Vic", "NSW", "WA"}
    assert (share - real).abs().max() < 0.03, share
    months = pd.to_datetime(w["Sampling_Date"], format="%Y/%m/%d").dt.month
    seasons = set(((months % 12) // 3).tolist())  # 0 summer, 1 autumn, 2 winter, 3 spring
    assert seasons == {0, 1, 2, 3}


def test_distributions_mimic_real_data(tmp_path):
    # Many tiny images: the label distributions need a big sample, not pixels.
    generate(tmp_path, 1000, 0, seed=3, width=32, height=16)
    w = wide(pd.read_csv(tmp_path / "train.csv"))
    green, dead, clover, total = (w[c] for c in ("Dry_Green_g", "Dry_Dead_g", "Dry_Clover_g", "Dry_Total_g"))
    assert 20 < green.mean() < 34 and green.median() < green.mean()  # right-skewed
    assert 8 < dead.mean() < 16 and 4 < clover.mean() < 10
    assert 0.30 < (clover == 0).mean() < 0.46
    assert 0.02 < (green == 0).mean() < 0.09 and 0.07 < (dead == 0).mean() < 0.16
    assert total.max() <= 186.0 + 1e-9 and 35 < total.mean() < 55
    assert 6 < w["Height_Ave_cm"].mean() < 9.5 and w["Height_Ave_cm"].skew() > 1
    assert 0.58 < w["Pre_GSHH_NDVI"].mean() < 0.72
    green_frac = w["GDM_g"] / total
    assert np.corrcoef(w["Pre_GSHH_NDVI"], green_frac)[0, 1] > 0.3
    assert np.corrcoef(np.log(w["Height_Ave_cm"]), np.log(total))[0, 1] > 0.5
    assert set(w["Species"]) == REAL_SPECIES
    # Visits differ: a good part of the variance of log Green lies between visits.
    log_g = np.log1p(green)
    between = log_g.groupby([w["State"], w["Sampling_Date"]]).transform("mean").var()
    assert between > 0.35 * log_g.var()


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 5), (b, 5), (c, 6)):
        generate(out, 8, 4, seed=seed, width=200, height=100)
    for name in ("train.csv", "test.csv", "sample_submission.csv", "test_solution.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    images = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(images) == 12
    assert images == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in images)
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()
    assert not {p.name for p in images} & {p.name for p in c.rglob("*.jpg")}


def load_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def features(paths) -> np.ndarray:
    f = np.array([color_fractions(load_rgb(p)) for p in paths])
    # Random strokes cover ~1 - exp(-k * mass): -log(bare soil) is about linear in Total.
    return np.c_[f, -np.log(f[:, 3:] + 1e-3)]


def test_learnable_from_colour_fractions(demo):
    w = wide(pd.read_csv(demo / "train.csv"))
    x = features(demo / p for p in w["image_path"])
    groups = w["State"] + w["Sampling_Date"]  # site visits: a random split would leak
    r2 = {}
    for t in ("Dry_Total_g", "Dry_Green_g", "Dry_Clover_g", "Dry_Dead_g"):
        pred = cross_val_predict(Ridge(alpha=1e-3), x, w[t], groups=groups, cv=GroupKFold(5))
        r2[t] = r2_score(w[t], pred)

    test = pd.read_csv(demo / "test.csv").merge(pd.read_csv(demo / "test_solution.csv"), on="sample_id")
    total = test[test["target_name"] == "Dry_Total_g"]
    model = Ridge(alpha=1e-3).fit(x, w["Dry_Total_g"])
    r2_holdout = r2_score(total["target"], model.predict(features(demo / p for p in total["image_path"])))
    print(f"grouped-CV R2 {r2}; Dry_Total_g R2 on the generated test set {r2_holdout:.3f}")
    assert r2["Dry_Total_g"] > 0.8 and r2_holdout > 0.8
    assert r2["Dry_Green_g"] > 0.6 and r2["Dry_Clover_g"] > 0.6


def test_halves_have_the_same_density(demo):
    paths = sorted((demo / "train").glob("*.jpg"))[:40]
    cover = np.array([[1 - color_fractions(half)[3] for half in np.split(load_rgb(p), 2, axis=1)] for p in paths])
    assert np.corrcoef(cover[:, 0], cover[:, 1])[0, 1] > 0.9
    assert np.abs(cover[:, 0] - cover[:, 1]).mean() < 0.05


def test_nuisances_date_stamp(demo):
    stamped = []
    for p in sorted((demo / "train").glob("*.jpg")):
        hsv = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2HSV)[-H // 8 :, -W // 3 :]
        orange = (hsv[..., 0] >= 10) & (hsv[..., 0] <= 20) & (hsv[..., 1] > 170) & (hsv[..., 2] > 200)
        stamped.append(orange.mean() > 0.01)
    assert 0.1 < np.mean(stamped) < 0.45


def test_color_fractions_classes():
    patches = {
        0: synth.GREEN_RGB[0], 1: synth.CLOVER_RGB[0], 2: synth.DEAD_RGB[1], 3: tuple(synth.SOIL_RGB.astype(int)),
    }  # fmt: skip
    for cls, rgb in patches.items():
        img = np.broadcast_to(np.array(rgb, np.uint8), (8, 8, 3))
        expected = np.zeros(4)
        expected[cls] = 1
        np.testing.assert_array_equal(color_fractions(img), expected)
    mixed = np.concatenate([np.full((4, 8, 3), synth.GREEN_RGB[0], np.uint8), np.full((4, 8, 3), 90, np.uint8)])
    np.testing.assert_allclose(color_fractions(mixed), [0.5, 0, 0, 0.5])


def test_cli_and_bad_arguments(tmp_path):
    synth_cli.main(["--out", str(tmp_path / "cli"), "--n-train", "3", "--n-test", "3", "--width", "64", "--height", "32"])
    assert len(pd.read_csv(tmp_path / "cli" / "train.csv")) == 15
    assert len(list((tmp_path / "cli" / "test").glob("*.jpg"))) == 3
    with pytest.raises(ValueError, match="n_train"):
        generate(tmp_path / "bad", 0, 3)
