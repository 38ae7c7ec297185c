"""Prediction: Kaggle submission files, TTA and fold averaging, checkpoint round trip, photo mode."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from src.core.errors import UserError
from src.core.targets import G_PER_QUADRAT_TO_KG_PER_HA, TARGETS
from src.data.photos import read_rgb
from src.data.schema import load_train
from src.inference.predictor import load_fold_models, predict_images
from src.predict import main

FOLDS = (0, 1)


@pytest.fixture(scope="module")
def model_dir(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    cmd = [sys.executable, "-m", "src.dinov3_train", "--data-dir", str(demo_data),
           "--fold-csv", str(demo_data / "trainfold_group_location.csv"), "--backbone-size", "tiny",
           "--backbone-weights", "none", "--image-size", "32", "--no-use-depth", "--no-depth-attention",
           "--freeze-epochs", "1", "--stage2-epochs", "1", "--batch-size", "8", "--num-workers", "0",
           "--device", "cpu", "--folds", *map(str, FOLDS), "--output-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny models gain nothing from more threads, and OpenMP spinning on a busy CPU costs seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(model_dir):
    return load_fold_models(model_dir, "cpu")


@pytest.fixture(scope="module")
def train_images(demo_data):
    return load_train(demo_data)


def _assert_relations(pred):
    pred = np.asarray(pred, dtype=np.float64)
    g, d, c, gdm, tot = (pred[:, TARGETS.index(t)] for t in TARGETS)
    np.testing.assert_allclose(gdm, g + c, rtol=0, atol=1e-4)
    np.testing.assert_allclose(tot, g + d + c, rtol=0, atol=1e-4)


def test_cli_writes_submission_in_sample_order(demo_data, model_dir, tmp_path):
    out = tmp_path / "pred"
    proc = subprocess.run(
        [sys.executable, "-m", "src.predict", "--model-dir", str(model_dir), "--data-dir", str(demo_data),
         "--split", "test", "--out-dir", str(out), "--device", "cpu"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out / "submission.csv") in proc.stdout and str(out / "test_pred.parquet") in proc.stdout

    sub = pd.read_csv(out / "submission.csv")
    sample = pd.read_csv(demo_data / "sample_submission.csv")
    assert list(sub.columns) == ["sample_id", "target"]
    assert sub["sample_id"].tolist() == sample["sample_id"].tolist()
    assert np.isfinite(sub["target"]).all() and (sub["target"] >= 0).all()

    pred = pd.read_parquet(out / "test_pred.parquet")
    test_ids = pd.read_csv(demo_data / "test.csv")["sample_id"].str.split("__").str[0].unique()
    assert list(pred.columns) == ["image_id", *TARGETS]
    assert sorted(pred["image_id"]) == sorted(test_ids) and pred["image_id"].is_unique
    _assert_relations(pred[list(TARGETS)].to_numpy())
    # the submission carries the parquet's numbers
    img = pred.iloc[0]
    for t in TARGETS:
        assert sub.loc[sub.sample_id == f"{img.image_id}__{t}", "target"].item() == pytest.approx(img[t], abs=1e-6)


def test_submission_follows_sample_order_and_rejects_mismatch(demo_copy, model_dir, tmp_path, capfd):
    sample = pd.read_csv(demo_copy / "sample_submission.csv")
    shuffled = sample.sample(frac=1.0, random_state=1).reset_index(drop=True)
    shuffled.to_csv(demo_copy / "sample_submission.csv", index=False)
    main(["--model-dir", str(model_dir), "--data-dir", str(demo_copy), "--out-dir", str(tmp_path / "a"),
          "--device", "cpu", "--no-tta"])  # fmt: skip
    sub = pd.read_csv(tmp_path / "a/submission.csv")
    assert sub["sample_id"].tolist() == shuffled["sample_id"].tolist()
    pred = pd.read_parquet(tmp_path / "a/test_pred.parquet").set_index("image_id")
    img, target = sub["sample_id"].str.split("__", n=1).str[0], sub["sample_id"].str.split("__", n=1).str[1]
    want = [pred.at[i, t] for i, t in zip(img, target)]
    np.testing.assert_allclose(sub["target"], want, rtol=0, atol=1e-6)

    # without sample_submission.csv: test.csv's row order
    (demo_copy / "sample_submission.csv").unlink()
    main(["--model-dir", str(model_dir), "--data-dir", str(demo_copy), "--out-dir", str(tmp_path / "c"),
          "--device", "cpu", "--no-tta"])  # fmt: skip
    test_ids = pd.read_csv(demo_copy / "test.csv")["sample_id"]
    assert pd.read_csv(tmp_path / "c/submission.csv")["sample_id"].tolist() == test_ids.tolist()

    shuffled.to_csv(demo_copy / "sample_submission.csv", index=False)
    shuffled.iloc[:-1].to_csv(demo_copy / "sample_submission.csv", index=False)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--model-dir", str(model_dir), "--data-dir", str(demo_copy), "--out-dir", str(tmp_path / "b"),
              "--device", "cpu"])  # fmt: skip
    assert exc.value.code == 2
    err = capfd.readouterr().err.strip()
    assert "sample_submission.csv" in err and shuffled["sample_id"].iloc[-1] in err
    assert not (tmp_path / "b").exists()  # nothing written


def test_tta_and_fold_average(models, train_images, demo_data):
    imgs = train_images.head(12)
    plain = predict_images(models, imgs, demo_data, tta=False, batch_size=5)
    tta = predict_images(models, imgs, demo_data, tta=True, batch_size=5)
    assert plain.shape == tta.shape == (12, 5)
    assert np.abs(tta - plain).max() > 1e-4
    _assert_relations(tta)
    assert (tta >= 0).all() and (plain >= 0).all()

    singles = [predict_images([m], imgs, demo_data, tta=True, batch_size=5) for m in models]
    assert len(singles) == len(FOLDS) and np.abs(singles[0] - singles[1]).max() > 1e-4
    np.testing.assert_allclose(tta, np.mean(singles, axis=0), rtol=1e-6, atol=1e-5)


def test_tta_scales_average_predictions_at_each_scaled_size(models, train_images, demo_data, monkeypatch):
    """--tta-scales 0.5 1: the mean of a pass at half the trained size (16 px) and one at it (32 px)."""
    from src.models.biomass import BiomassModel

    imgs = train_images.head(6)
    sizes, real = set(), BiomassModel.forward

    def spy(self, batch):
        sizes.add(batch["image"].shape[-1])
        return real(self, batch)

    monkeypatch.setattr(BiomassModel, "forward", spy)
    both = predict_images(models, imgs, demo_data, tta=False, tta_scales=(0.5, 1.0), batch_size=3)
    assert sizes == {16, 32}
    half = predict_images(models, imgs, demo_data, tta=False, tta_scales=(0.5,), batch_size=3)
    full = predict_images(models, imgs, demo_data, tta=False, batch_size=3)
    assert np.abs(half - full).max() > 1e-4  # the scale reaches the model
    np.testing.assert_allclose(both, (half + full) / 2, rtol=1e-6, atol=1e-5)
    _assert_relations(both)
    with pytest.raises(UserError, match="--tta-scales"):
        predict_images(models, imgs, demo_data, tta_scales=(0.0, 1.0))


def test_cli_tta_scales_change_the_submission(demo_data, model_dir, tmp_path):
    subs = []
    for extra in ([], ["--tta-scales", "0.5", "1"]):
        out = tmp_path / f"s{len(subs)}"
        proc = subprocess.run([sys.executable, "-m", "src.predict", "--model-dir", str(model_dir), "--data-dir",
                               str(demo_data), "--out-dir", str(out), "--device", "cpu", "--no-tta", *extra],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        subs.append(pd.read_csv(out / "submission.csv")["target"].to_numpy())
    assert "scales 0.5 1" in proc.stdout and np.abs(subs[0] - subs[1]).max() > 1e-4


def test_tta_is_the_mean_of_flipped_photos(models, train_images, demo_data, tmp_path):
    """TTA of a photo = no-TTA mean over the photo with both halves flipped left-right / up-down."""
    img = read_rgb(demo_data / train_images.image_path.iloc[0])
    mid = img.shape[1] // 2
    hflip = np.concatenate([img[:, :mid, :][:, ::-1], img[:, mid:, :][:, ::-1]], axis=1)
    paths = []
    for name, a in {"id": img, "h": hflip, "v": img[::-1]}.items():
        paths.append(tmp_path / f"{name}.png")  # lossless, so the pixels are exactly flipped
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2BGR))
    one = [models[0]]
    plain = predict_images(one, paths, tta=False)
    tta = predict_images(one, paths[:1], tta=True)
    np.testing.assert_allclose(tta[0], plain.mean(0), rtol=1e-5, atol=1e-4)


def test_fold_model_reproduces_trainer_oof(models, model_dir, train_images, demo_data):
    assert [m[0] for m in models] == list(FOLDS)
    for fold_model in models:
        oof = pd.read_parquet(model_dir / f"fold{fold_model[0]}/oof.parquet")
        imgs = train_images.set_index("image_id").loc[oof["image_id"]].reset_index()
        pred = predict_images([fold_model], imgs, demo_data, tta=False, batch_size=3)
        want = oof[[f"pred_{t}" for t in TARGETS]].to_numpy(np.float64, copy=True)
        # components and GDM straight from the model; Total is G + D + C (raised to GDM where the
        # model's Total < GDM clipped Dead at 0)
        want[:, TARGETS.index("Dry_Total_g")] = want[:, :3].sum(1)
        np.testing.assert_allclose(pred, want, rtol=1e-5, atol=1e-4)


def test_images_mode_prints_grams_and_kg_per_ha(models, model_dir, demo_data, tmp_path, capfd):
    photos = sorted((demo_data / "test").glob("*.jpg"))[:2]
    out = tmp_path / "masses.csv"
    main(["--model-dir", str(model_dir), "--images", *map(str, photos), "--out", str(out), "--device", "cpu"])
    printed = capfd.readouterr().out
    table = pd.read_csv(out)
    assert table["photo"].tolist() == [str(p) for p in photos]
    np.testing.assert_allclose(table[list(TARGETS)].to_numpy(), predict_images(models, photos), rtol=1e-6, atol=1e-6)
    g, kg = table["Dry_Total_g"].iloc[0], table["Dry_Total_kg_ha"].iloc[0]
    assert (
        g > 0 and kg == pytest.approx(g * 47.62, rel=1e-4) and G_PER_QUADRAT_TO_KG_PER_HA == pytest.approx(47.619, 1e-4)
    )
    assert f"{kg:.2f}" in printed and f"{g:.2f}" in printed and str(out) in printed


@pytest.mark.parametrize("case", ["missing photo", "unreadable photo", "no checkpoints", "no model dir"])
def test_user_errors_exit_2_with_one_line(case, model_dir, demo_data, tmp_path, capfd):
    photo = sorted((demo_data / "test").glob("*.jpg"))[0]
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a jpeg")
    argv, named = {
        "missing photo": (
            ["--model-dir", str(model_dir), "--images", str(photo), str(tmp_path / "gone.jpg")],
            "gone.jpg",
        ),
        "unreadable photo": (["--model-dir", str(model_dir), "--images", str(bad)], "bad.jpg"),
        "no checkpoints": (["--model-dir", str(demo_data), "--images", str(photo)], str(demo_data)),
        "no model dir": (["--model-dir", str(tmp_path / "nothing"), "--data-dir", str(demo_data)], "nothing"),
    }[case]
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--device", "cpu"])
    assert exc.value.code == 2
    err = capfd.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    if case in ("no checkpoints", "no model dir"):
        assert "python -m src.dinov3_train" in err


def test_fold_models_trained_differently_are_refused_unless_allowed(model_dir, tmp_path, capfd):
    import shutil

    import yaml

    mixed = tmp_path / "mixed"
    shutil.copytree(model_dir, mixed)
    cfg = yaml.safe_load((mixed / "fold1/config.yaml").read_text())
    cfg.update(lr=0.5, stage2_epochs=9)  # another run's settings, same weight shapes
    (mixed / "fold1/config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match=r"fold0 and fold1 were trained with different settings \(lr 0.0002 vs 0.5, "
                                        r"stage2_epochs 1 vs 9\); .* --allow-mixed-folds"):  # fmt: skip
        load_fold_models(mixed, "cpu")
    capfd.readouterr()
    assert len(load_fold_models(mixed, "cpu", allow_mixed=True)) == 2
    assert "averaging them anyway (--allow-mixed-folds)" in capfd.readouterr().err
    assert len(load_fold_models(model_dir, "cpu")) == 2  # the same run's folds differ only in --folds
