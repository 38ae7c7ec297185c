"""Photos: decoded fully and in one orientation everywhere; a damaged, bomb-sized or tiny photo is
one line naming the file and the fix, before training starts; photos far from 2:1 are warned."""

import io
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from src.core.errors import UserError
from src.data.photos import check_photos, photo_size, read_rgb
from src.data.schema import load_train


def _jpeg(w=256, h=128, exif=None) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    img = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
    img.save(buf, "JPEG", quality=90, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def _bomb_header(w=60000, h=40000) -> bytes:
    """A real JPEG whose frame header claims w x h pixels: a decompression bomb's header."""
    data = bytearray(_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _garbage_body(data: bytes) -> bytes:
    out = bytearray(data)
    out[700:-2] = np.random.default_rng(1).integers(0, 256, len(data) - 702, dtype=np.uint8).tobytes()
    return bytes(out)


def _ico() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(buf, "ICO")
    return buf.getvalue()


BROKEN = {  # what lands in a photo's file -> what the one line says (the header check, or the full decode)
    "cut in half": (lambda: _jpeg()[: len(_jpeg()) // 2], "cannot be decoded (image file is truncated"),
    "garbage body": (lambda: _garbage_body(_jpeg()), "cannot be decoded (broken data stream"),
    "bomb header": (_bomb_header, "exceeds limit"),
    "ico renamed": (_ico, "16x16 is too small for a quadrat photo"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_photo_is_one_line_naming_it(tmp_path, case):
    make, said = BROKEN[case]
    path = tmp_path / "ID1.jpg"
    path.write_bytes(make())
    with pytest.raises(UserError, match="photo .*ID1.jpg: ") as exc:
        read_rgb(path)
    assert said in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("case", ["cut in half", "garbage body"])
def test_the_trainer_stops_on_a_damaged_photo_before_training(demo_copy, tmp_path, case):
    images = load_train(demo_copy)
    victim = demo_copy / images.image_path[5]
    victim.write_bytes(BROKEN[case][0]())
    load_train(demo_copy)  # the header still reads: only a full decode sees it
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "src.dinov3_train", "--data-dir", str(demo_copy), "--fold-csv",
                           str(demo_copy / "trainfold_group_location.csv"), "--backbone-size", "tiny", "--backbone-weights",
                           "none", "--image-size", "32", "--no-use-depth", "--num-workers", "0", "--folds", "0",
                           "--output-dir", str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: photo ") and victim.name in last and BROKEN[case][1] in last
    assert not (out / "fold0").exists()  # stopped before any fold started


def test_exif_orientation_is_the_same_for_sizes_and_pixels(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a 256x128 sensor image shown as 128x256
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg(256, 128, exif=exif.tobytes()))
    assert photo_size(path) == (128, 256)
    assert read_rgb(path).shape == (256, 128, 3)  # the halves are cut from what the size check saw


def test_photos_far_from_2_to_1_are_warned_once(demo_copy, capsys):
    images = load_train(demo_copy)
    check_photos(demo_copy, images)
    assert "far from 2:1" not in capsys.readouterr().out
    for rel in images.image_path[:3]:
        (demo_copy / rel).write_bytes(_jpeg(128, 128))
    check_photos(demo_copy, images)
    said = capsys.readouterr().out
    assert said.count("far from 2:1") == 1 and "3 of 60 photos" in said and "128x128" in said
