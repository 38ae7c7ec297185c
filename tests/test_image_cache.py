"""The image cache: same pixels as the JPEG path, same training, refusal of other settings."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from src.core.errors import UserError
from src.data.dataset import BiomassDataset
from src.data.image_cache import build, cache_path, load
from src.data.schema import load_train
from src.data.transforms import HalfTransform


@pytest.fixture(scope="module")
def cache(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("imgcache")
    assert build(demo_data, "train", 32, cache_path(root, 32, "train"))
    return root


def test_cached_halves_give_the_same_samples(demo_data, cache):
    images = load_train(demo_data)
    ids = images["image_id"].tolist()
    halves = load(cache_path(cache, 32, "train"), ids, 32, False, "CMD")
    for train in (False, True):
        tf = HalfTransform(size=32, train=train)
        a = BiomassDataset(images, demo_data, tf, seed=3)
        b = BiomassDataset(images, demo_data, tf, seed=3, halves=halves)
        for i in (0, 7, len(images) - 1):
            assert torch.equal(a[i]["image"], b[i]["image"])


def test_rebuild_is_skipped_and_other_settings_refused(demo_data, cache, capsys):
    path = cache_path(cache, 32, "train")
    before = path.stat().st_mtime_ns
    assert not build(demo_data, "train", 32, path)
    assert path.stat().st_mtime_ns == before and "up to date" in capsys.readouterr().out
    ids = load_train(demo_data)["image_id"].tolist()
    with pytest.raises(UserError, match="holds 32px.*wants 64px.*CMD"):
        load(path, ids, 64, False, "CMD")
    with pytest.raises(UserError, match="not found; build it with: CMD"):
        load(cache_path(cache, 48, "train"), ids, 48, False, "CMD")
    with pytest.raises(UserError, match="lacks image nope"):
        load(path, ["nope"], 32, False, "CMD")
    arr, rows = load(path, ids[::-1], 32, False, "CMD")
    assert arr.dtype == np.uint8 and arr.shape[1:] == (2, 32, 32, 3) and rows[0] == len(ids) - 1


def test_training_from_the_cache_matches_training_from_jpegs(demo_data, cache, tmp_path):
    def train(out, *extra):
        cmd = [sys.executable, "-m", "src.dinov3_train", "--data-dir", str(demo_data), "--fold-csv",
               str(demo_data / "trainfold_group_location.csv"), "--backbone-size", "tiny", "--backbone-weights", "none",
               "--image-size", "32", "--no-use-depth", "--num-workers", "0", "--folds", "1", "--no-two-stage",
               "--epochs", "1", "--batch-size", "8", "--output-dir", str(out), *extra]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]

    from safetensors.torch import load_file

    train(tmp_path / "jpeg")
    train(tmp_path / "cached", "--image-cache-dir", str(cache))
    a, b = load_file(str(tmp_path / "jpeg/fold1/last.safetensors")), load_file(str(tmp_path / "cached/fold1/last.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
