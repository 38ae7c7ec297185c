"""The data contract: every user error is one clear line naming file + row/id + fix, exit code 2."""

import subprocess
import sys

import pandas as pd
import pytest

from src.core.errors import UserError
from src.core.targets import TARGETS
from src.data.schema import load_test, load_train


def _edit(data, fn):
    df = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    df = fn(df)
    df.to_csv(data / "train.csv", index=False)


def test_load_train_gives_one_row_per_image(demo_data):
    images = load_train(demo_data)
    long = pd.read_csv(demo_data / "train.csv")
    assert len(images) == long["image_path"].nunique() == len(long) // 5
    assert list(images.columns[-5:]) == list(TARGETS)
    row = images.iloc[0]
    for t in TARGETS:
        assert long.loc[long["sample_id"] == f"{row.image_id}__{t}", "target"].item() == pytest.approx(row[t])
    assert len(load_test(demo_data)) == pd.read_csv(demo_data / "test.csv")["image_path"].nunique()


def _set(col, value, row=3):
    def fn(df):
        df.loc[row, col] = value
        return df

    return fn


CASES = {
    "missing column": (lambda df: df.drop(columns=["State"]), ["train.csv", "missing column", "State"]),
    "negative target": (_set("target", "-1.5"), ["train.csv", "row 5", "negative"]),
    "not a number": (_set("Height_Ave_cm", "tall"), ["train.csv", "row 5", "Height_Ave_cm", "not a number"]),
    "nan": (_set("Pre_GSHH_NDVI", ""), ["row 5", "Pre_GSHH_NDVI", "empty"]),
    "unknown target": (_set("target_name", "Dry_Weed_g"), ["row 5", "Dry_Weed_g"]),
    "duplicate id": (lambda df: pd.concat([df, df.iloc[[7]]], ignore_index=True), ["duplicated sample_id"]),
    "escaping path": (lambda df: df.assign(image_path=df["image_path"].where(df.index != 0, "../secret.jpg")),
                      ["row 2", "../secret.jpg", "inside"]),
    "bad date": (_set("Sampling_Date", "04-09-2015", row=0), ["row 2", "Sampling_Date"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_train_csv_gets_a_clear_error(demo_copy, case):
    edit, words = CASES[case]
    _edit(demo_copy, edit)
    with pytest.raises(UserError) as exc:
        load_train(demo_copy)
    msg = str(exc.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_and_unreadable_images(demo_copy):
    images = load_train(demo_copy)
    (demo_copy / images.image_path[0]).unlink()
    with pytest.raises(UserError, match=rf"row 2: photo .*{images.image_id[0]}.jpg: file not found"):
        load_train(demo_copy)
    (demo_copy / images.image_path[0]).write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="not a readable image"):
        load_train(demo_copy)


def test_broken_mass_relation_warns_with_ids(demo_copy, capsys):
    images = load_train(demo_copy)
    bad_id = images.image_id[2]
    _edit(demo_copy, lambda df: df.assign(target=df["target"].where(df["sample_id"] != f"{bad_id}__Dry_Total_g", "999")))
    load_train(demo_copy)
    err = capsys.readouterr().err
    assert "warning" in err and bad_id in err and "Total = Green + Dead + Clover" in err


@pytest.mark.parametrize("case", ["missing column", "negative target"])
def test_cli_exits_2_with_one_line_and_writes_nothing(demo_copy, tmp_path, case):
    _edit(demo_copy, CASES[case][0])
    out = tmp_path / "folds.csv"
    proc = subprocess.run([sys.executable, "-m", "src.make_folds", "--data-dir", str(demo_copy), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "train.csv" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".folds.csv*"))


def test_cli_missing_image_exits_2(demo_copy, tmp_path):
    images = load_train(demo_copy)
    (demo_copy / images.image_path[5]).unlink()
    out = tmp_path / "folds.csv"
    proc = subprocess.run([sys.executable, "-m", "src.make_folds", "--data-dir", str(demo_copy), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and images.image_id[5] in proc.stderr and not out.exists()


def test_photos_linked_from_outside_the_data_folder_are_read(demo_copy, tmp_path):
    """A train/ folder that is a link (data on another disk) and DVC's cache.type symlink (each photo a
    link into .dvc/cache) both point outside the data folder: the links are the user's, and followed.
    What train.csv itself says must still stay inside: no '..', not absolute."""
    want = load_train(demo_copy)
    store = tmp_path / "elsewhere/train"
    store.parent.mkdir()
    (demo_copy / "train").rename(store)
    (demo_copy / "train").symlink_to(store, target_is_directory=True)
    assert load_train(demo_copy).equals(want)

    (demo_copy / "train").unlink()  # DVC's layout: a real train/ of links into a cache
    cache = tmp_path / "dvc-cache"
    store.rename(cache)
    (demo_copy / "train").mkdir()
    for photo in cache.iterdir():
        (demo_copy / "train" / photo.name).symlink_to(photo)
    assert load_train(demo_copy).equals(want)
    assert len(load_test(demo_copy)) > 0

    first = want.image_path[0]
    (cache / first.split("/")[-1]).unlink()  # a dangling link is a missing photo
    with pytest.raises(UserError, match=rf"row 2: photo .*{want.image_id[0]}.jpg: file not found"):
        load_train(demo_copy)
    for bad in (f"../{first}", str(cache / first.split("/")[-1]), f"train/../../{first}"):
        _edit(demo_copy, lambda df, old=first, new=bad: df.assign(image_path=df["image_path"].where(
            df["image_path"] != old, new)))
        with pytest.raises(UserError, match=r"row 2: image_path .* must be a relative path inside .*no '\.\.', not "
                                            r"absolute"):  # fmt: skip
            load_train(demo_copy)
        first = bad
