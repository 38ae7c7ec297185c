"""Photo cleaning as photos are decoded (src/data/photo_prep.py): the demo's date stamps are found
and painted out, and no longer reach the model; the bottom crop; caches made otherwise are
separate files, and one made with other cleaning is refused."""

import cv2
import numpy as np
import pytest
import torch

from src import image_cache as image_cache_cli
from src.core.config import TrainConfig
from src.core.errors import UserError
from src.data import image_cache
from src.data.photo_prep import STAMP_HSV_HI, STAMP_HSV_LO, PhotoPrep, clean_stamp, stamp_mask
from src.data.photos import read_rgb
from src.data.schema import load_train
from src.models.biomass import BiomassModel
from src.training import run as run_module

guards = pytest.mark.guards


def _photos(data):
    return [read_rgb(data / p) for p in load_train(data)["image_path"]]


def _stamp_pixels(rgb: np.ndarray) -> int:
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    return int((cv2.inRange(hsv, STAMP_HSV_LO, STAMP_HSV_HI) > 0).sum())


def test_the_stamp_is_painted_out_and_nothing_else_changes(demo_data):
    photos = _photos(demo_data)
    stamped = [p for p in photos if stamp_mask(p).any()]
    plain = [p for p in photos if not stamp_mask(p).any()]
    assert 5 <= len(stamped) < len(photos) / 2 and plain  # the demo stamps about a quarter of its photos
    for rgb in stamped:
        mask, clean = stamp_mask(rgb), clean_stamp(rgb)
        assert _stamp_pixels(clean) == 0 < _stamp_pixels(rgb)
        assert np.array_equal(clean[~mask], rgb[~mask])  # only the stamp's own pixels are repainted
    assert all(clean_stamp(p) is p for p in plain)


def test_the_bottom_crop_and_the_cache_folder_names():
    rgb = np.zeros((500, 1000, 3), np.uint8)
    assert PhotoPrep(crop_bottom=0.1).apply(rgb).shape == (450, 1000, 3)
    for prep in (PhotoPrep(), PhotoPrep(True), PhotoPrep(False, 0.05), PhotoPrep(True, 0.125)):
        assert PhotoPrep.from_tag(f"64_pad{prep.tag}") == prep
    assert PhotoPrep(True, 0.05).flags() == ["--clean-date-stamp", "--crop-bottom", "0.05"]
    assert image_cache.cache_path("c", 64, "train", True, PhotoPrep(True)).as_posix() == "c/64_pad_nostamp/train.npy"


@guards("--clean-date-stamp", "--crop-bottom")
@pytest.mark.parametrize("clean, crop", [(False, 0.0), (True, 0.0), (False, 0.25)])
def test_the_stamp_no_longer_reaches_the_model(demo_data, tmp_path, monkeypatch, clean, crop):
    """Every half the model gets in training and validation, at the photos' own scale (128 px
    halves of 256 x 128 photos, flips only: no pixel resampled or recoloured): stamp pixels arrive
    without the flags, none with --clean-date-stamp or --crop-bottom 0.25 (the stamp is in the
    bottom 8%)."""
    seen, real = [], BiomassModel.forward

    def spy(self, batch):
        if "image" in batch:
            seen.append(batch["image"].detach().clone())
        return real(self, batch)

    monkeypatch.setattr(BiomassModel, "forward", spy)
    run_module.run(TrainConfig(data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"),
                               output_dir=str(tmp_path / "m"), folds=[0], two_stage=False, epochs=1, batch_size=8,
                               num_workers=0, device="cpu", backbone_size="tiny", backbone_weights="none",
                               image_size=128, use_depth=False, depth_attention=False, strong_aug=False,
                               clean_date_stamp=clean, crop_bottom=crop))  # fmt: skip
    halves = torch.cat(seen).flatten(0, 1)  # (images x 2, 3, S, S) uint8 RGB: the model normalises
    assert halves.dtype == torch.uint8 and halves.shape[-1] == 128
    stamp = sum(_stamp_pixels(h) for h in halves.permute(0, 2, 3, 1).numpy())
    assert (stamp == 0) if (clean or crop) else (stamp > 20), stamp


@guards("--clean-date-stamp")
def test_the_image_caches_hold_the_cleaned_photos(demo_data, tmp_path):
    """The file cache (built by its CLI) and the in-memory one, at the photos' own scale (128 px halves of 256 x 128
    photos): each stamped photo's row is its cleaned halves, stamp pixels painted out."""
    images = load_train(demo_data)
    raw = _photos(demo_data)
    stamped = [i for i, p in enumerate(raw) if stamp_mask(p).any()]
    assert stamped
    prep = PhotoPrep(clean_date_stamp=True)
    out = image_cache.cache_path(tmp_path, 128, "train", False, prep)
    image_cache_cli.main(["--data-dir", str(demo_data), "--size", "128", "--clean-date-stamp", "--out", str(out)])
    arr, rows = image_cache.load(out, images["image_id"].tolist(), 128, False, "CMD", prep)
    memory = image_cache.InMemory(len(images), 128, False, prep)
    for i in stamped:
        memory.add(i, raw[i])
        want = np.stack(image_cache.squares(clean_stamp(raw[i]), 128, False))
        assert not np.array_equal(want, np.stack(image_cache.squares(raw[i], 128, False)))
        for row in (arr[rows[i]], memory.array[i]):
            assert np.array_equal(row, want) and _stamp_pixels(row[1]) == 0  # the stamp is in the right half


def test_a_cache_made_with_other_cleaning_is_refused(demo_data, tmp_path):
    out = image_cache.cache_path(tmp_path, 32, "train", False, PhotoPrep(True))
    image_cache.build(demo_data, "train", 32, out, False, PhotoPrep(True))
    ids = load_train(demo_data)["image_id"].tolist()
    arr, rows = image_cache.load(out, ids, 32, False, "CMD", PhotoPrep(True))
    assert arr.shape[0] == len(ids) and len(rows) == len(ids)
    with pytest.raises(UserError, match="cleaning"):
        image_cache.load(out, ids, 32, False, "CMD", PhotoPrep())


@pytest.mark.parametrize("crop", [-0.1, 0.6])
def test_a_crop_outside_0_to_half_is_refused(crop):
    from src.core.config import validate

    with pytest.raises(UserError, match="--crop-bottom"):
        validate(TrainConfig(crop_bottom=crop), "cli")


def test_prediction_cleans_as_training_did(demo_data, tmp_path, predicts_its_oof):
    """A fold trained with --clean-date-stamp predicts from cleaned photos: its OOF is reproduced."""
    from src.inference.predictor import load_fold_models

    run_module.run(TrainConfig(data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"),
                               output_dir=str(tmp_path / "m"), folds=[0], two_stage=False, epochs=1, batch_size=8,
                               num_workers=0, device="cpu", backbone_size="tiny", backbone_weights="none",
                               image_size=128, use_depth=False, depth_attention=False, clean_date_stamp=True))  # fmt: skip
    assert load_fold_models(tmp_path / "m", "cpu")[0][1].clean_date_stamp
    predicts_its_oof(tmp_path / "m", demo_data)
