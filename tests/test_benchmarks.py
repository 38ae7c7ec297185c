"""The GPU benchmark's code runs here only on the CPU: a tiny model proves it works, so a lent GPU
spends its time measuring, not debugging. Nothing here is timed."""

import math

import torch

from benchmarks.run import _gpu_steps, _synth


def test_gpu_step_benchmark_code_runs_on_cpu_with_a_tiny_model(tmp_path):
    data = _synth(tmp_path, 8, 256, 128)
    row = _gpu_steps("tiny", 32, True, peak=1.0, data=data, cache_root=tmp_path / "cache", dev=torch.device("cpu"))
    assert row["images_per_s"] > 0 and row["fed_images_per_s"] > 0
    assert 0 < row["gpu_busy"] <= 1 and row["loader_workers"] >= 1
    assert row["mfu"] > 0 and math.isfinite(row["mfu"])  # the FLOP counter saw the train step


def test_quality_baselines_with_augmentation_see_the_trainers_pixels(tmp_path):
    """(a_aug)/(b_aug) claim equal data with the trainer: the same augmented pixels, per epoch and image."""
    import numpy as np

    from benchmarks import quality
    from src.core.config import from_dict
    from src.data import image_cache
    from src.data.fold_stats import fold_statistics, vocabularies
    from src.data.mixup import Mixup
    from src.data.photo_prep import PhotoPrep
    from src.training.fit import _train_dataset

    data = _synth(tmp_path, 10, 256, 128)
    image_cache.build(data, "train", quality.SIZE, image_cache.cache_path(tmp_path / "cache", quality.SIZE, "train"))
    paths = {"data_dir": str(data), "image_cache_dir": str(tmp_path / "cache")}
    images, _plain, cache = quality._halves(paths)
    tr, fold, seed = np.arange(2, 10), 1, 3
    cfg = from_dict(dict(data_dir=str(data), image_size=quality.SIZE, seed=seed, backbone_size="tiny",
                         backbone_weights="none", device="cpu"))  # fmt: skip
    train = images.iloc[tr].reset_index(drop=True)
    extras = vocabularies(train)
    trainer_ds, _ = _train_dataset(cfg, train, fold_statistics(train, extras), extras, fold, {}, None,
                                   (cache[0], cache[1][tr]), prep=PhotoPrep.of(cfg),
                                   mixup=Mixup.of(cfg, cfg.seed + fold))  # fmt: skip
    ours = quality._trainer_pixels(paths, images, cache, tr, seed + fold)
    for key in (0, 5, 2 * len(tr) + 3):  # epochs 0 and 2
        assert torch.equal(ours[key]["image"], trainer_ds[key]["image"])
    assert not torch.equal(ours[3]["image"], ours[len(tr) + 3]["image"])  # a new draw each epoch
    changed = [not torch.equal(ours[k]["image"], _plain[tr[k]]) for k in range(len(tr))]
    assert sum(changed) >= len(tr) // 2  # augmented, not the plain halves


def test_the_evidence_the_readme_cites_is_kept_by_git():
    """A clone has the benchmark results the README quotes; a run of a few flags' mutants is not one."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=repo).returncode == 0

    for evidence in ("flag_mutation.md", "standalone.json", "quality.json", "slurm_acceptance.md", "lora_memory.md"):
        assert not ignored(f"benchmarks/results/{evidence}"), evidence
    assert ignored("benchmarks/results/flag_mutation_subset.md")


def test_each_decision_of_the_defaults_benchmark_is_one_valid_change():
    """benchmarks/defaults.py: every variant is a config the trainer takes, and differs from its
    decision's current default (the first label) in that decision's settings only."""
    from benchmarks import defaults
    from src.core.config import from_dict, validate

    for decision, (_recipe, variants) in defaults.DECISIONS.items():
        base_label, *others = variants
        base = defaults.settings_of(decision, base_label)
        validate(from_dict(base), decision)
        for label in others:
            changed = defaults.settings_of(decision, label)
            validate(from_dict(changed), f"{decision}: {label}")
            diff = {k for k in {*base, *changed} if base.get(k) != changed.get(k)}
            assert diff and diff <= set(variants[label]), (decision, label, diff)
