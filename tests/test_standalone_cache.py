"""The trainer without --image-cache-dir (the guide's commands): its photo check decodes each photo
once into an in-memory image cache, which trains exactly as the on-disk cache does; over the memory
budget it decodes the JPEGs every epoch as before, with one note."""

import contextlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from src.core.config import from_dict
from src.data import image_cache, photos
from src.data.photo_prep import PhotoPrep
from src.data.schema import load_test, load_train
from src.training import run as run_module

SIZE = 32
# Cleaning that shortens the photos (non-square halves) and padding that then acts: the in-memory
# rows must be made exactly as the file's are.
PREP = dict(clean_date_stamp=True, crop_bottom=0.1, use_pad_to_square=True)


def _cfg(data: Path, out: Path, **kw):
    return from_dict(dict(data_dir=str(data), fold_csv=str(data / "trainfold_group_location.csv"), output_dir=str(out),
                          backbone_size="tiny", backbone_weights="none", image_size=SIZE, use_depth=False,
                          num_workers=0, device="cpu", two_stage=False, epochs=2, batch_size=8, folds=[0, 1], **kw))  # fmt: skip


def _pseudo_csvs(data: Path, folder: Path) -> str:
    """Pseudo-labelled test photos for folds 0 and 1: not in the training cache (rows -1)."""
    test = load_test(data).iloc[:4]
    g, d, c = (np.linspace(5, 30, len(test)) + k for k in range(3))
    df = pd.DataFrame({"image_id": test["image_id"], "image_path": test["image_path"], "Dry_Green_g": g,
                       "Dry_Dead_g": d, "Dry_Clover_g": c, "GDM_g": g + c, "Dry_Total_g": g + c + d})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for k in (0, 1):
        df.to_csv(folder / f"fold{k}.csv", index=False)
    return str(folder / "fold{fold}.csv")


def _train(cfg, budget: int | None = None) -> tuple[list[str], str]:
    """Runs ``cfg`` in this process; returns the names of the photos fully decoded (in order) and
    what it printed. ``budget``: bytes the in-memory cache may take (None: the real budget)."""
    decoded = []
    real = photos._open

    def counting(path, decode):
        if decode:
            decoded.append(Path(path).name)
        return real(path, decode)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setattr(photos, "_open", counting)
        if budget is not None:
            mp.setattr(image_cache, "memory_budget", lambda ranks=1: budget)
        run_module.run(cfg)
    return decoded, out.getvalue()


@pytest.fixture(scope="module")
def runs(demo_data, tmp_path_factory):
    """The same 2-fold x 2-epoch run (cleaning, padding, pseudo-labels) three ways: in memory (no
    cache folder), from the cache file, and over the memory budget (JPEGs every epoch)."""
    root = tmp_path_factory.mktemp("standalone")
    pseudo = _pseudo_csvs(demo_data, root / "pseudo")
    prep = PhotoPrep(PREP["clean_date_stamp"], PREP["crop_bottom"])
    image_cache.build(demo_data, "train", SIZE, image_cache.cache_path(root / "cache", SIZE, "train", True, prep), True, prep)
    out = {}
    for name, extra, budget in (("memory", {}, None), ("file", {"image_cache_dir": str(root / "cache")}, None),
                                ("jpeg", {}, 10 * image_cache.row_bytes(SIZE))):  # room for 10 photos of 60
        decoded, printed = _train(_cfg(demo_data, root / name, pseudo_labels=pseudo, **PREP, **extra), budget)
        out[name] = {"dir": root / name, "decoded": decoded, "stdout": printed}
    out["train_photos"] = [Path(p).name for p in load_train(demo_data)["image_path"]]
    out["pseudo_photos"] = [Path(p).name for p in load_test(demo_data)["image_path"].iloc[:4]]
    return out


def test_without_a_cache_folder_each_training_photo_is_decoded_once(runs):
    counts = Counter(runs["memory"]["decoded"])
    assert {n: counts[n] for n in runs["train_photos"]} == {n: 1 for n in runs["train_photos"]}  # by the photo check
    # The pseudo-labelled test photos are not in the cache: decoded from their JPEGs (and they train).
    assert all(counts[n] > 0 for n in runs["pseudo_photos"])
    assert "photos decoded once into memory" in runs["memory"]["stdout"]
    assert "note: the 60 photos" not in runs["memory"]["stdout"]


def _assert_same_fold(a: Path, b: Path) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{a / name} differs from {b / name}"
    for name in ("oof.parquet", "epoch_preds.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name), check_exact=True)


def test_in_memory_training_is_bit_identical_to_training_from_the_cache_file(runs):
    assert "photos image cache file" in runs["file"]["stdout"]
    for k in (0, 1):
        _assert_same_fold(runs["memory"]["dir"] / f"fold{k}", runs["file"]["dir"] / f"fold{k}")


def test_over_the_memory_budget_the_jpegs_are_decoded_every_epoch_with_one_note(runs):
    printed = runs["jpeg"]["stdout"]
    assert printed.count("note: the 60 photos' halves at 32px need") == 1
    assert "python -m src.image_cache" in printed and "--image-cache-dir" in printed
    assert "photos decoded every epoch" in printed
    counts = Counter(runs["jpeg"]["decoded"])
    assert max(counts[n] for n in runs["train_photos"]) > 1  # the photo check, then again per epoch
    for k in (0, 1):  # the same training either way
        _assert_same_fold(runs["jpeg"]["dir"] / f"fold{k}", runs["memory"]["dir"] / f"fold{k}")


def test_memory_budget_is_a_quarter_of_the_available_memory_shared_by_the_ranks(monkeypatch):
    monkeypatch.setattr(image_cache, "available_memory", lambda: 8000)
    assert image_cache.memory_budget() == 2000 and image_cache.memory_budget(4) == 500
    monkeypatch.setattr(image_cache, "available_memory", lambda: None)
    assert image_cache.memory_budget() == 0  # unknown: the JPEG path, never an out-of-memory kill


def test_in_memory_rows_are_the_rows_build_writes(demo_data, tmp_path):
    prep = PhotoPrep(True, 0.1)
    path = image_cache.cache_path(tmp_path, SIZE, "train", True, prep)
    image_cache.build(demo_data, "train", SIZE, path, True, prep)
    images = load_train(demo_data)
    memory = image_cache.InMemory(len(images), SIZE, True, prep)
    with pytest.raises(RuntimeError, match="never added"):
        memory.halves()
    photos.check_photos(demo_data, images, each=memory.add)
    array, rows = memory.halves()
    assert np.array_equal(array, np.load(path)) and np.array_equal(rows, np.arange(len(images)))
    assert not array.flags.writeable  # like the file's read-only memory map
