"""Shared fixtures: offline environment, a small synthetic dataset in the Kaggle layout."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--guards", metavar="FLAG", help="run only the tests marked @pytest.mark.guards(FLAG) "
                     "('any': every guard test); tests/mutation/check.py uses it")


def guarded(item) -> set[str]:
    return {flag for mark in item.iter_markers("guards") for flag in mark.args}


def pytest_collection_modifyitems(config, items):
    want = config.getoption("--guards")
    if want:
        keep = [item for item in items if (guarded(item) if want == "any" else want in guarded(item))]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
    # pytest-xdist hands tests out in collection order: a long test collected last would run alone.
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """60 train / 10 test images at 256x128 with a 5-fold CSV; shared, treat as read-only."""
    from src.data.folds import make_folds
    from src.data.schema import load_train
    from src.data.synth import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, n_train=60, n_test=10, seed=0, width=256, height=128)
    folds = make_folds(load_train(out), n_folds=5, strategy="group_location", seed=42)
    folds.to_csv(out / "trainfold_group_location.csv", index=False)
    return out


@pytest.fixture
def demo_copy(demo_data, tmp_path) -> Path:
    """A private, writable copy of the demo data (for tests that corrupt it)."""
    dst = tmp_path / "data"
    shutil.copytree(demo_data, dst)
    return dst


@pytest.fixture(scope="session")
def fold(demo_data) -> dict:
    """A training fold of 40 demo images: its statistics and vocabularies, and a batch of 16 with
    random 32 px halves, true targets and the auxiliary targets (for model and loss unit tests)."""
    import torch

    from src.core.targets import TARGETS
    from src.data.fold_stats import aux_targets, fold_statistics, vocabularies
    from src.data.schema import load_train

    train = load_train(demo_data).iloc[:40].reset_index(drop=True)
    extras = vocabularies(train)
    stats = fold_statistics(train, extras)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(16, 2, 3, 32, 32, generator=g) * 255,
             "targets": torch.tensor(train[list(TARGETS)].to_numpy()[:16], dtype=torch.float32)}  # fmt: skip
    batch["aos_view"] = batch["image"] * 0.8 + 0.1
    batch.update({k: torch.tensor(v[:16]) for k, v in aux_targets(train, stats, extras).items()})
    return {"extras": extras, "stats": stats, "batch": batch, "train": train}


@pytest.fixture(scope="session")
def predicts_its_oof():
    """``check(model_dir, data)``: every fold checkpoint under ``model_dir``, loaded the way
    prediction loads it (no flags), reproduces its ``oof.parquet``: what was scored is what was saved."""
    import numpy as np
    import pandas as pd

    from src.core.targets import TARGETS
    from src.data.schema import load_train
    from src.inference.predictor import load_fold_models, predict_images

    def check(model_dir, data):
        for fold_model in load_fold_models(model_dir, "cpu"):
            oof = pd.read_parquet(Path(model_dir) / f"fold{fold_model[0]}/oof.parquet")
            images = load_train(data).set_index("image_id").loc[oof["image_id"]].reset_index()
            pred = predict_images([fold_model], images, data, tta=False, batch_size=4)
            want = oof[[f"pred_{t}" for t in TARGETS]].to_numpy(np.float64, copy=True)
            want[:, TARGETS.index("Dry_Total_g")] = want[:, :3].sum(1)  # Total as prediction reports it
            np.testing.assert_allclose(pred, want, rtol=1e-5, atol=1e-4)

    return check
