"""benchmarks/gpu_check.py (``make gpu-check``) on the CPU: without CUDA it says so and exits 0, and
its checks' logic runs here on a tiny model, so a lent GPU spends its minutes measuring, not
debugging. Nothing here is timed; the GPU-only parts (bf16, nccl, peak memory, compile) are not
exercised beyond what the CPU can run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks import gpu_check
from benchmarks.run import _synth

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_without_cuda_it_says_so_writes_cuda_false_and_exits_0(tmp_path):
    out = tmp_path / "results" / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "no CUDA device" in p.stdout
    assert json.loads(out.read_text()) == {"cuda": False, "skipped": "no CUDA device"}
    assert [f.name for f in out.parent.iterdir()] == ["gpu_check.json"]  # no temporary file left beside it


def test_a_cpu_run_leaves_a_gpu_runs_results_alone(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gpu_check.json"
    out.write_text(json.dumps({"cuda": True, "ok": True, "checks": {}}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert json.loads(out.read_text())["cuda"] is True


def test_each_check_on_its_own_an_error_is_recorded_and_the_budget_skips_the_rest(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(gpu_check.time, "perf_counter", lambda: clock[0])

    def boom(_ctx):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nsecond line")

    def slow(_ctx):
        clock[0] += 10.0
        return {"ok": True, "value": 1.5}

    checks = (("fails", boom), ("slow", slow), ("late", lambda _c: {"ok": True}))
    out = tmp_path / "r.json"
    result, code = gpu_check.check_device(CPU, out, quick=True, budget_s=5.0, checks=checks)
    assert code == 1 and json.loads(out.read_text()) == json.loads(json.dumps(gpu_check.jsonable(result)))
    got = result["checks"]
    assert got["fails"] == {"ok": False, "error": "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB",
                            "elapsed_s": 0.0}  # fmt: skip
    assert got["slow"] == {"ok": True, "value": 1.5, "elapsed_s": 10.0}  # ran after a failure
    assert got["late"] == {"ok": False, "skipped": "time budget", "elapsed_s": 0.0}  # started past the budget
    assert result["failed"] == ["fails", "late"] and result["ok"] is False
    _, code = gpu_check.check_device(CPU, out, quick=True, budget_s=5.0, checks=(("fine", lambda _c: {"ok": True}),))
    assert code == 0 and json.loads(out.read_text())["ok"] is True


def test_checkpointing_check_compares_losses_and_grads_with_a_tiny_model():
    rec = gpu_check.check_grad_checkpointing(CPU, "tiny", 32, batch=2)
    assert rec["ok"] and rec["checkpointing_on"]
    assert rec["params_with_grad"] > 30  # backbone and heads
    assert math.isfinite(rec["loss_plain"]) and rec["loss_rel_diff"] <= 1e-6 and rec["grad_rel_diff"] <= 1e-5
    assert rec["peak_gib_plain"] is None and rec["lower_peak_memory"] is None  # memory is measured on CUDA only


def test_throughput_row_counts_model_flops_that_match_the_measured_step(tmp_path):
    flops = gpu_check.model_flops("tiny", 32, 4)
    assert flops > 0 and gpu_check.model_flops("tiny", 64, 4) > 2.5 * flops  # 4x the patches
    data = _synth(tmp_path, 8, 256, 128)
    rec = gpu_check.check_throughput(CPU, data, tmp_path / "cache", configs=[("tiny", 32)], quick=True, peak=1.0,
                                     goal_row="vit_tiny_32")  # fmt: skip
    row = rec["vit_tiny_32"]
    assert rec["ok"] and row["model_flops_per_step"] == flops and row["images_per_s"] > 0
    assert math.isclose(row["model_mfu"], flops * row["images_per_s"] / 4 / 1e12)
    # FlopCounterMode over the real step (no checkpointing) sees about the 3 x forward FLOPs counted on meta
    assert 0.7 < row["counted_over_model_flops"] < 1.1
    assert 0 < row["gpu_busy"] <= 1 and rec["meets_goal"] is False  # a tiny model on a CPU is far from 45 % of 1 PFLOPS


def test_bf16_check_sees_the_dtype_inside_the_backbone():
    rec = gpu_check.check_bf16_autocast(CPU, "tiny", 32)
    assert rec["linear_out_dtypes"] == ["float32"]  # the project's autocast is bf16 on CUDA only
    assert rec["ok"] is False  # ... so on the CPU the check must not pass
    assert rec["outputs_finite"] and rec["grads_finite"] and rec["backbone_params_with_grad"] > 0


def test_sdpa_check_sees_fused_attention_and_the_flash_kernel():
    rec = gpu_check.check_sdpa(CPU, "tiny", 32)
    assert rec["ok"] and rec["use_fused_attn"] and rec["blocks_fused_attn"] == "2/2"
    flash = rec["backends"]["flash_attention"]
    assert flash["ok"] and any("flash" in op for op in flash["ops"])
    assert rec["backends"]["math"]["ok"] and not any("flash" in op for op in rec["backends"]["math"]["ops"])


def test_ddp_check_runs_one_trainer_step_on_one_rank():
    env = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    rec = gpu_check.check_ddp(CPU, "tiny", 32)
    assert rec["ok"] and rec["backend"] == "gloo" and rec["world_size"] == 1 and rec["updates"] == 1
    assert rec["all_reduce_of_one"] == 1.0 and int(rec["params_moved"].split("/")[0]) > 0
    assert not torch.distributed.is_initialized()  # destroyed afterwards
    assert {k: os.environ.get(k) for k in env} == env  # and the environment as it was


def test_memory_step_with_lora_trains_only_the_adapters_and_heads():
    cfg = gpu_check.config("tiny", 32, lora_rank=2, lora_blocks=1, gradient_checkpointing=True)
    rec = gpu_check.memory_step(cfg, CPU, batch=2)
    assert rec["ok"] and math.isfinite(rec["loss"]) and rec["peak_gib"] is None
    assert 0 < rec["trainable_params_m"] < rec["params_m"] / 5
