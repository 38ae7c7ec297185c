"""The caches record the photos they were made from: a photo replaced in place (even with its old
file time, which Snakemake cannot see) is refused by their readers and rebuilt by their builders."""

import os
import shutil

import pytest
from PIL import Image

from src.core.errors import UserError
from src.data import depth, image_cache
from src.data.fingerprint import split_photos_hash
from src.data.schema import load_test, load_train
from src.models.depth_anything import make_tiny


def _mirror_keeping_time(path):
    st = path.stat()
    Image.open(path).transpose(Image.FLIP_LEFT_RIGHT).save(path, quality=90)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def data(demo_data, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(demo_data, dst)
    return dst


def test_a_changed_photo_makes_the_image_cache_stale(data, tmp_path):
    out = tmp_path / "cache/32/train.npy"
    assert image_cache.build(data, "train", 32, out)
    ids = load_train(data)["image_id"].tolist()
    image_cache.load(out, ids, 32, False, "CMD", photos=split_photos_hash(data, "train"))  # as built: served
    _mirror_keeping_time(data / load_train(data)["image_path"].iloc[3])
    with pytest.raises(UserError, match="built from other photos .* rebuild it with: CMD"):
        image_cache.load(out, ids, 32, False, "CMD", photos=split_photos_hash(data, "train"))
    assert image_cache.build(data, "train", 32, out)  # not "up to date": rebuilt
    image_cache.load(out, ids, 32, False, "CMD", photos=split_photos_hash(data, "train"))


def test_a_changed_photo_makes_the_depth_cache_stale(data, tmp_path):
    model = str(make_tiny(tmp_path / "da2"))
    out = tmp_path / "depth/small/test.safetensors"
    depth.build_cache(data, "test", model, out, resolution=16)
    ids = load_test(data)
    kw = dict(model=model, backend="torchvision", resolution=16, command="CMD")
    depth.load_cache(out, ids["image_id"].tolist(), **kw, photos=split_photos_hash(data, "test"))
    _mirror_keeping_time(data / ids["image_path"].iloc[0])
    with pytest.raises(UserError, match="built from other photos"):
        depth.load_cache(out, ids["image_id"].tolist(), **kw, photos=split_photos_hash(data, "test"))
    before = out.stat().st_mtime_ns
    depth.build_cache(data, "test", model, out, resolution=16)
    assert out.stat().st_mtime_ns != before  # rebuilt, not "up to date"
