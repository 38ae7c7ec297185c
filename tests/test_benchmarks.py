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
