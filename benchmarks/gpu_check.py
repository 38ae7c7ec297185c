"""One prepared check of this code base's CUDA paths on one GPU (``make gpu-check``).

    python -m benchmarks.gpu_check [--out FILE] [--quick] [--budget-s 450]

On a machine with one H100/H200, from the repository root with the venv set up: ``make gpu-check``
(or the command above with .venv/bin/python). It runs the eight checks below cheap-first, each on
its own (a failure is recorded as {"ok": false, "error": "<first line>"} and the next one runs);
checks not started within --budget-s (7.5 minutes) are recorded as skipped, so the whole run should
fit in 8 minutes (estimated; not yet timed on a GPU). It writes one JSON file atomically (default
benchmarks/results/gpu_check.json) and prints it: the device, torch/CUDA/timm versions, "ok"
(every check ran ok), and under "checks" one record per check with "ok", "elapsed_s" and its
measurements. Performance goals (gpu_busy >= 0.90, model FLOP utilisation >= 0.45 for ViT-L at
1024) are reported as "meets_goal" and do not fail a check. Exit code 0 when every check ran ok,
else 1; without CUDA it says so on stdout, writes {"cuda": false, "skipped": "no CUDA device"} (not
over a GPU run's file) and exits 0. Peak bf16 TFLOPS for MFU: env GPU_BF16_PEAK_TFLOPS (default
989, H100/H200 SXM dense). --quick shrinks the iterations.

Checks (the project's own model, optimiser, loss, autocast, DDP wrapping and input pipeline;
random weights; a "step" is one Stage 2 train step, batch of photos = two halves each):
 1. bf16_autocast       ViT-S: forward/backward under src.training.engine.autocast; outputs and
                        parameter grads finite, every Linear inside the backbone computes in bf16.
 2. sdpa_flash          ViT-B 512: timm's attention is fused (use_fused_attn, each block's
                        fused_attn) and a bf16 forward under sdpa_kernel(<backend>) runs, for flash,
                        efficient, cuDNN and math; which aten SDPA op ran is recorded.
 3. ddp_nccl            nccl process group of one rank, the model wrapped in DDP as
                        src.training.fit does, one step through src.training.engine.train_one_epoch.
 4. grad_checkpointing  ViT-B 512: same loss and grads as without, lower peak memory.
 5. image_cache_loader  ViT-L 512 fed by the trainer's loader (image cache of synthetic photos,
                        strong augmentation, pinned workers): gpu_busy = on-device step time /
                        fed step time (benchmarks.run._gpu_steps).
 6. compile             --compile (src.models.biomass.compile_backbone) on ViT-S: first (compile)
                        and later step times, loss finite and equal to eager.
 7. throughput          ViT-B/L at 512 and 1024 px: images/s, MFU as counted over the step and
                        model MFU (3 x forward FLOPs, no recompute).
 8. peak_memory         ViT-H+ 1024 with gradient checkpointing, and 7B with LoRA at 512 (fp32
                        frozen weights as the trainer keeps them): one step each, batch 2,
                        torch.cuda.max_memory_allocated in GiB; an OOM is a recorded failure. The
                        7B is then stepped with its frozen weights cast to bf16 (no trainer option:
                        "frozen_bf16", informational, it does not fail the check).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

# The project's modules are imported where they are used: without CUDA the script answers at once.
if TYPE_CHECKING:
    from src.core.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_check.json"
BUDGET_S = 450.0  # 7.5 minutes: checks not started by then are skipped
BUSY_GOAL, MFU_GOAL = 0.90, 0.45
GIB = 2**30
BENCH_BATCH = 4  # photos per step in benchmarks.run._gpu_steps
THROUGHPUT_CONFIGS = (("base", 512), ("base", 1024), ("large", 512), ("large", 1024))
MFU_GOAL_ROW = "vit_large_1024"


# --- helpers ---------------------------------------------------------------------------------------
def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None


def stats(device) -> dict[str, torch.Tensor]:
    """Training-fold statistics of the shape the model and losses take (as benchmarks.run uses)."""
    s = {"mean": torch.ones(5), "log_mean": torch.ones(5), "std": torch.ones(5), "log_std": torch.ones(5),
         "max": torch.ones(5), "aux": torch.tensor([0.0, 1, 0, 1])}  # fmt: skip
    return {k: v.to(device) for k, v in s.items()}


def config(size: str, px: int, **kw) -> TrainConfig:
    from src.core.config import TrainConfig

    return TrainConfig(backbone_size=size, backbone_weights="none", image_size=px, use_depth=False,
                       depth_attention=False, **kw)  # fmt: skip


def build(cfg: TrainConfig, device: torch.device):
    """The model as Stage 2 trains it (backbone trainable; with LoRA only its adapters), built on
    ``device`` directly (no CPU initialisation of a 7B model), its optimiser and criterion."""
    from src.losses import build_criterion
    from src.models.biomass import BiomassModel
    from src.training.optim import build_optimizer

    st = stats(device)
    with torch.device(device):
        model = BiomassModel(cfg, st)
    model.freeze_backbone(False)
    return model, build_optimizer(model, cfg, True), build_criterion(cfg, st).to(device)


def batch_of(n: int, px: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 2, 3, px, px), generator=g, dtype=torch.uint8).to(device),
            "targets": torch.rand(n, 5, generator=g).to(device), "index": torch.arange(n)}  # fmt: skip


def train_step(model, opt, crit, batch: dict, device: torch.device) -> torch.Tensor:
    """Forward under the project's autocast, loss on float outputs, backward, and (with ``opt``)
    the update: what src.training.engine.train_one_epoch does per micro-batch."""
    from src.training.engine import autocast

    with autocast(device):
        out = model(batch)
    loss, _ = crit({k: v.float() for k, v in out.items()}, batch)
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach()


def grad_report(model: nn.Module) -> dict:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = [(n, p.grad) for n, p in trainable if p.grad is not None]
    return {"params_trainable": len(trainable), "params_with_grad": len(grads),
            "backbone_params_with_grad": sum(n.startswith("backbone.") for n, _ in grads),
            "grads_finite": all(bool(torch.isfinite(g).all()) for _, g in grads)}  # fmt: skip


def model_flops(size: str, px: int, batch: int, **cfg_kw) -> int:
    """FLOPs of one train step by the MFU convention: 3 x the forward's (backward = 2 forwards; no
    recompute), counted by FlopCounterMode on the meta device (shapes only: instant, no memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    from src.models.biomass import BiomassModel

    with torch.device("meta"):
        model = BiomassModel(config(size, px, **cfg_kw), stats("meta"))
        x = {"image": torch.zeros(batch, 2, 3, px, px, dtype=torch.uint8)}
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    return 3 * counter.get_total_flops()


class SdpaOps(TorchDispatchMode):
    """Names of the aten scaled-dot-product ops that ran (which SDPA kernel the backbone used)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if "scaled_dot_product" in name:
            self.names.add(name)
        return func(*args, **(kwargs or {}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the checks ------------------------------------------------------------------------------------
def check_bf16_autocast(device: torch.device, size: str = "small", px: int = 224, batch: int = 2) -> dict:
    """Forward/backward under the project's autocast: outputs and grads finite, and the dtype every
    Linear inside the backbone computes in (bf16 on CUDA; the project's autocast is off on CPU)."""
    from src.training.engine import autocast

    model, _, crit = build(config(size, px), device)
    b = batch_of(batch, px, device)
    dtypes: set[str] = set()
    record = lambda _m, _i, out: dtypes.add(str(out.dtype).removeprefix("torch."))
    hooks = [m.register_forward_hook(record) for m in model.backbone.modules() if isinstance(m, nn.Linear)]
    try:
        with autocast(device):
            out = model(b)
    finally:
        for h in hooks:
            h.remove()
    outputs_finite = all(
        bool(torch.isfinite(v).all()) for v in out.values() if torch.is_tensor(v) and v.is_floating_point()
    )
    loss, _ = crit({k: v.float() for k, v in out.items()}, b)
    loss.backward()
    grads = grad_report(model)
    ok = (dtypes == {"bfloat16"} and outputs_finite and math.isfinite(float(loss.detach())) and grads["grads_finite"]
          and grads["backbone_params_with_grad"] > 0)  # fmt: skip
    return {"ok": ok, "model": f"{size} {px}px batch {batch}", "linear_out_dtypes": sorted(dtypes),
            "param_dtype": str(next(model.backbone.parameters()).dtype).removeprefix("torch."),
            "outputs_finite": outputs_finite, "loss": float(loss.detach()), **grads}  # fmt: skip


def check_sdpa(device: torch.device, size: str = "base", px: int = 512, batch: int = 2) -> dict:
    """timm's fused attention in every block, and a bf16 forward under each SDPA backend alone."""
    import timm.layers
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from src.training.engine import autocast

    model, _, _ = build(config(size, px), device)
    model.eval()
    b = batch_of(batch, px, device)
    blocks = [bool(getattr(blk.attn, "fused_attn", False)) for blk in model.backbone.blocks]
    backends = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        try:
            with sdpa_kernel(getattr(SDPBackend, name)), torch.no_grad(), autocast(device):
                with SdpaOps() as ops:  # also the warm-up
                    model(b)
                sync(device)
                t = time.perf_counter()
                out = model(b)
                sync(device)
            backends[name.lower()] = {"ok": bool(torch.isfinite(out["pred"]).all()), "ops": sorted(ops.names),
                                      "forward_ms": 1e3 * (time.perf_counter() - t)}  # fmt: skip
        except Exception as exc:  # a backend this GPU, dtype or head size cannot use
            backends[name.lower()] = {"ok": False, "error": first_line(exc)}
    flash = backends["flash_attention"]
    ok = (timm.layers.use_fused_attn() and all(blocks) and flash["ok"]
          and any("flash" in op for op in flash["ops"]))  # fmt: skip
    return {"ok": ok, "model": f"{size} {px}px batch {batch}", "use_fused_attn": timm.layers.use_fused_attn(),
            "blocks_fused_attn": f"{sum(blocks)}/{len(blocks)}", "backends": backends,
            "working_backends": [k for k, v in backends.items() if v["ok"]]}  # fmt: skip


def check_ddp(device: torch.device, size: str = "small", px: int = 224, batch: int = 2) -> dict:
    """One rank of DDP (nccl on CUDA, gloo on CPU), wrapped as src.training.fit wraps it, one
    optimiser update through the trainer's own epoch loop, then the group destroyed."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from src.training.distributed import DistInfo, cleanup
    from src.training.engine import train_one_epoch
    from src.training.optim import build_scheduler

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        dist.init_process_group(backend, rank=0, world_size=1)
        cfg = config(size, px)
        model, opt, crit = build(cfg, device)
        info = DistInfo(0, 1, device.index or 0, device)
        wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        losses, updates = train_one_epoch(wrapped, model, [batch_of(batch, px, "cpu")], crit, opt,
                                          build_scheduler(opt, cfg, 1, 1), info, grad_accum=1, grad_clip=cfg.grad_clip,
                                          updates_done=0, desc="ddp step")  # fmt: skip
        sync(device)
        moved = sum(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
        t = torch.ones(1, device=device)
        dist.all_reduce(t)
        got = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "loss": losses["loss"],
               "updates": updates, "params_moved": f"{moved}/{len(before)}", "all_reduce_of_one": float(t)}  # fmt: skip
    finally:
        cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ok = (got["backend"] == backend and math.isfinite(got["loss"]) and updates == 1 and moved > 0
          and got["all_reduce_of_one"] == 1.0)  # fmt: skip
    return {"ok": ok, "model": f"{size} {px}px batch {batch}", **got}


def check_grad_checkpointing(device: torch.device, size: str = "base", px: int = 512, batch: int = 2) -> dict:
    """The same weights and batch with and without --gradient-checkpointing: loss and grads agree
    (bf16 tolerance on CUDA), and the checkpointed step's peak memory is lower (CUDA only)."""
    b = batch_of(batch, px, device)
    runs, state = {}, None
    for ckpt in (False, True):
        free(device)
        model, _, crit = build(config(size, px, gradient_checkpointing=ckpt), device)
        if state is None:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            model.load_state_dict(state)
        sync(device)
        reset_peak(device)
        before = allocated_gib(device)
        loss = float(train_step(model, None, crit, b, device))
        sync(device)
        peak = peak_gib(device)
        runs[ckpt] = {"loss": loss, "peak": peak, "activations": None if peak is None else peak - before,
                      "on": bool(getattr(model.backbone, "grad_checkpointing", False)), **grad_report(model),
                      "grads": {n: p.grad.float().cpu() for n, p in model.named_parameters()
                                if p.grad is not None}}  # fmt: skip
        del model, crit
    plain, ckpt = runs[False], runs[True]
    names = sorted(plain["grads"])
    diff = math.sqrt(sum(float((plain["grads"][n] - ckpt["grads"][n]).square().sum()) for n in names))
    norm = math.sqrt(sum(float(plain["grads"][n].square().sum()) for n in names))
    grad_rel = diff / max(norm, 1e-30)
    loss_rel = abs(plain["loss"] - ckpt["loss"]) / max(abs(plain["loss"]), 1e-30)
    tol = (1e-2, 2e-2) if device.type == "cuda" else (1e-5, 1e-4)  # bf16 kernels may differ in the last bits
    less_memory = None if plain["peak"] is None else ckpt["activations"] < plain["activations"]
    ok = (ckpt["on"] and not plain["on"] and sorted(ckpt["grads"]) == names and len(names) > 0
          and loss_rel <= tol[0] and grad_rel <= tol[1] and less_memory is not False)  # fmt: skip
    return {"ok": ok, "model": f"{size} {px}px batch {batch}", "checkpointing_on": ckpt["on"],
            "loss_plain": plain["loss"], "loss_checkpointed": ckpt["loss"], "loss_rel_diff": loss_rel,
            "grad_rel_diff": grad_rel, "params_with_grad": len(names), "tolerance": {"loss": tol[0], "grad": tol[1]},
            "peak_gib_plain": plain["peak"], "peak_gib_checkpointed": ckpt["peak"],
            "activation_gib_plain": plain["activations"], "activation_gib_checkpointed": ckpt["activations"],
            "lower_peak_memory": less_memory}  # fmt: skip


def check_loader(device: torch.device, data: Path, cache_root: Path, size: str = "large", px: int = 512,
                 quick: bool = False, peak: float = 989.0) -> dict:  # fmt: skip
    """The trainer's input pipeline (image cache, strong augmentation, pinned workers) feeding the
    GPU: benchmarks.run._gpu_steps' on-device and fed step times."""
    from benchmarks.run import _gpu_steps

    row = _gpu_steps(size, px, quick, peak, data, cache_root, device)
    return {"ok": 0 < row["gpu_busy"] <= 1 and row["fed_images_per_s"] > 0,
            "model": f"{size} {px}px batch {BENCH_BATCH}",
            **row, "goal": BUSY_GOAL, "meets_goal": row["gpu_busy"] >= BUSY_GOAL}  # fmt: skip


def check_compile(device: torch.device, size: str = "small", px: int = 224, batch: int = 4, steps: int = 8) -> dict:
    """The trainer's --compile path (BiomassModel compiles the backbone's forward_features): step
    times from the first (compile) on, and the first loss against eager on the same weights."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, opt, crit = build(config(size, px, compile=True), device)
    eager, eager_opt, eager_crit = build(config(size, px), device)
    eager.load_state_dict(model.state_dict())  # compile_backbone keeps the state_dict keys
    b = batch_of(batch, px, device)

    def timed(m, o, c, n):
        times, losses = [], []
        for _ in range(n):
            sync(device)
            t = time.perf_counter()
            losses.append(float(train_step(m, o, c, b, device)))
            sync(device)
            times.append(time.perf_counter() - t)
        return times, losses

    times, losses = timed(model, opt, crit, steps)
    eager_times, eager_losses = timed(eager, eager_opt, eager_crit, 3)
    later = sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else None
    eager_step = sorted(eager_times[1:])[len(eager_times[1:]) // 2]
    rel = abs(losses[0] - eager_losses[0]) / max(abs(eager_losses[0]), 1e-30)
    compiled = hasattr(model.backbone.forward_features, "_torchdynamo_orig_callable") or hasattr(
        model.backbone.forward_features, "__wrapped__"
    )
    ok = compiled and all(math.isfinite(v) for v in losses) and rel <= 2e-2
    return {"ok": ok, "model": f"{size} {px}px batch {batch}", "forward_features_compiled": compiled,
            "first_step_s": times[0], "later_step_s": later, "eager_step_s": eager_step,
            "speedup_vs_eager": None if later is None else eager_step / later, "losses": losses,
            "first_loss_rel_diff_vs_eager": rel, "unique_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_breaks": sum(counters["graph_break"].values())}  # fmt: skip


def throughput_row(
    device: torch.device, data: Path, cache_root: Path, size: str, px: int, quick: bool, peak: float
) -> dict:
    """benchmarks.run._gpu_steps (images/s, MFU over the step as FlopCounterMode counts it, recompute
    included) plus model MFU: ``model_flops`` (3 x forward) per measured step time."""
    from benchmarks.run import _gpu_steps

    row = _gpu_steps(size, px, quick, peak, data, cache_root, device)
    flops = model_flops(size, px, BENCH_BATCH)
    model_mfu = flops * row["images_per_s"] / BENCH_BATCH / (peak * 1e12)
    return {"ok": row["images_per_s"] > 0 and model_mfu > 0, **row, "model_flops_per_step": flops,
            "model_mfu": model_mfu, "counted_over_model_flops": row["mfu"] / model_mfu}  # fmt: skip


def check_throughput(device: torch.device, data: Path, cache_root: Path, configs=THROUGHPUT_CONFIGS,
                     quick: bool = False, peak: float = 989.0, deadline: float | None = None,
                     goal_row: str = MFU_GOAL_ROW) -> dict:  # fmt: skip
    rows = {}
    for size, px in configs:
        key = f"vit_{size}_{px}"
        if deadline is not None and time.perf_counter() > deadline:
            rows[key] = {"ok": False, "skipped": "time budget"}
            continue
        print(f"    throughput {key} ...", flush=True)
        try:
            rows[key] = throughput_row(device, data, cache_root, size, px, quick, peak)
        except Exception as exc:
            rows[key] = {"ok": False, "error": first_line(exc)}
        free(device)
    goal = rows.get(goal_row, {}).get("model_mfu")
    return {
        "ok": all(r["ok"] for r in rows.values()),
        "batch": BENCH_BATCH,
        "peak_bf16_tflops": peak,
        **rows,
        "goal": f"model_mfu >= {MFU_GOAL} for {goal_row}",
        "meets_goal": None if goal is None else goal >= MFU_GOAL,
    }


def memory_step(cfg: TrainConfig, device: torch.device, batch: int, frozen_bf16: bool = False) -> dict:
    """Build (on the device), one train step; peak allocated memory. ``frozen_bf16``: then cast the
    backbone's frozen weights to bf16 (the trainer keeps them fp32) and step again."""
    from src.training.engine import autocast
    from src.training.optim import build_optimizer

    free(device)
    reset_peak(device)
    t = time.perf_counter()
    model, opt, crit = build(cfg, device)
    sync(device)
    built_s = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = allocated_gib(device)
    b = batch_of(batch, cfg.image_size, device)
    t = time.perf_counter()
    loss = float(train_step(model, opt, crit, b, device))
    sync(device)
    rec = {"ok": math.isfinite(loss), "batch": batch, "params_m": params / 1e6, "trainable_params_m": trainable / 1e6,
           "build_s": built_s, "step_s": time.perf_counter() - t, "weights_gib": weights, "peak_gib": peak_gib(device),
           "loss": loss}  # fmt: skip
    if frozen_bf16:
        try:
            with torch.no_grad(), autocast(device):
                ref = float(crit({k: v.float() for k, v in model(b).items()}, b)[0])  # fp32 frozen weights, as now
            del opt
            for p in model.backbone.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
            free(device)
            reset_peak(device)
            weights16 = allocated_gib(device)
            opt = build_optimizer(model, cfg, True)
            loss16 = float(train_step(model, opt, crit, b, device))
            sync(device)
            rec["frozen_bf16"] = {"ok": math.isfinite(loss16), "weights_gib": weights16, "peak_gib": peak_gib(device),
                                  "loss": loss16, "loss_rel_diff_vs_fp32": abs(loss16 - ref) / max(abs(ref), 1e-30),
                                  "how": "built fp32 on the GPU, frozen backbone weights cast to bf16 afterwards "
                                         "(BiomassModel has no bf16 build option)"}  # fmt: skip
        except Exception as exc:
            rec["frozen_bf16"] = {"ok": False, "error": first_line(exc)}
    return rec


def check_peak_memory(device: torch.device, deadline: float | None = None, batch: int = 2) -> dict:
    """ViT-H+ at 1024 with gradient checkpointing (full finetuning), and the 7B with LoRA at 512."""
    from benchmarks.lora_memory import estimate

    runs = {
        "vit_huge_plus_1024_checkpointed": (config("huge", 1024, gradient_checkpointing=True), False),
        "vit_7b_lora_512": (config("7b", 512, lora_rank=8, lora_blocks=4, gradient_checkpointing=True), True),
    }
    out = {}
    for key, (cfg, bf16) in runs.items():
        if deadline is not None and time.perf_counter() > deadline:
            out[key] = {"ok": False, "skipped": "time budget"}
            continue
        print(f"    peak memory {key} ...", flush=True)
        try:
            out[key] = memory_step(cfg, device, batch, frozen_bf16=bf16)
        except Exception as exc:  # torch.cuda.OutOfMemoryError included: recorded, the next one runs
            out[key] = {"ok": False, "error": first_line(exc), "oom": isinstance(exc, torch.cuda.OutOfMemoryError),
                        "peak_gib": peak_gib(device)}  # fmt: skip
        free(device)
        if cfg.lora_rank:  # what benchmarks/lora_memory.py computes for it (GB = 1e9 bytes)
            try:
                est = estimate(cfg.lora_rank, cfg.lora_blocks, batch, cfg.image_size)
                out[key]["estimate_gb"] = {"fp32_frozen": est["total today, fp32 frozen weights (GB)"],
                                           "bf16_frozen": est["total with bf16 frozen weights (GB)"]}  # fmt: skip
            except Exception as exc:
                out[key]["estimate_gb"] = {"error": first_line(exc)}
    return {"ok": all(r["ok"] for r in out.values()), "lora": "rank 8 on the last 4 blocks", **out}


# --- the run ---------------------------------------------------------------------------------------
@dataclass
class Context:
    device: torch.device
    root: Path
    quick: bool = False
    peak: float = 989.0
    budget_s: float = BUDGET_S
    start: float = 0.0
    _data: Path | None = None

    @property
    def deadline(self) -> float:
        return self.start + self.budget_s

    @property
    def data(self) -> Path:
        """Synthetic 2000x1000 photos in the Kaggle layout, made once for the checks that need them."""
        from benchmarks.run import _synth

        if self._data is None:
            self._data = _synth(self.root, 16 if self.quick else 48)
        return self._data

    @property
    def cache_root(self) -> Path:
        return self.root / "cache"


Check = tuple[str, Callable[[Context], dict]]
CHECKS: tuple[Check, ...] = (  # cheap first
    ("bf16_autocast", lambda c: check_bf16_autocast(c.device)),
    ("sdpa_flash", lambda c: check_sdpa(c.device)),
    ("ddp_nccl", lambda c: check_ddp(c.device)),
    ("grad_checkpointing", lambda c: check_grad_checkpointing(c.device)),
    ("image_cache_loader", lambda c: check_loader(c.device, c.data, c.cache_root, quick=c.quick, peak=c.peak)),
    ("compile", lambda c: check_compile(c.device, steps=4 if c.quick else 8)),
    (
        "throughput",
        lambda c: check_throughput(c.device, c.data, c.cache_root, quick=c.quick, peak=c.peak, deadline=c.deadline),
    ),
    ("peak_memory", lambda c: check_peak_memory(c.device, c.deadline)),
)


def run_checks(ctx: Context, checks=CHECKS) -> dict:
    """Each check on its own: an exception is its record's error; past the budget, skipped."""
    results = {}
    for i, (name, fn) in enumerate(checks, 1):
        tag = f"[{i}/{len(checks)}] {name}"
        if time.perf_counter() >= ctx.deadline:
            results[name] = {"ok": False, "skipped": "time budget", "elapsed_s": 0.0}
            print(f"{tag}: skipped (time budget of {ctx.budget_s:.0f} s spent)", flush=True)
            continue
        print(f"{tag} ...", flush=True)
        t = time.perf_counter()
        try:
            rec = dict(fn(ctx))
            rec["ok"] = bool(rec.get("ok", False))
        except Exception as exc:
            rec = {"ok": False, "error": first_line(exc)}
        rec["elapsed_s"] = time.perf_counter() - t
        results[name] = rec
        free(ctx.device)
        why = f": {rec['error']}" if "error" in rec else ""
        print(f"{tag}: {'ok' if rec['ok'] else 'FAILED'} ({rec['elapsed_s']:.1f} s){why}", flush=True)
    return results


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else str(obj)
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    return str(obj)


def write(out: Path, result: dict) -> str:
    from src.core.io_utils import write_text

    text = json.dumps(jsonable(result), indent=2)
    write_text(out, text + "\n")  # a temporary file beside it, renamed onto it
    return text


def check_device(device: torch.device, out: Path, quick: bool, budget_s: float, checks=CHECKS) -> tuple[dict, int]:
    """All checks on ``device``; the JSON written to ``out``. Returns it and the exit code."""
    import timm

    peak = float(os.environ.get("GPU_BF16_PEAK_TFLOPS", "989"))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Context(device, Path(tmp), quick, peak, budget_s, start)
        results = run_checks(ctx, checks)
    info = {"device": str(device)}
    if device.type == "cuda":
        info = {"device": torch.cuda.get_device_name(device),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
                "memory_gib": torch.cuda.get_device_properties(device).total_memory / GIB}  # fmt: skip
    ok = all(r["ok"] for r in results.values())
    result = {"cuda": device.type == "cuda", **info, "torch": torch.__version__, "cuda_version": torch.version.cuda,
              "timm": timm.__version__, "quick": quick, "budget_s": budget_s, "peak_bf16_tflops": peak, "ok": ok,
              "failed": [k for k, r in results.items() if not r["ok"]], "elapsed_s": time.perf_counter() - start,
              "checks": results}  # fmt: skip
    print(write(out, result))
    print(f"written to {out}; {'every check ran ok' if ok else 'failed or skipped: ' + ', '.join(result['failed'])}")
    return result, 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON file (default: {DEFAULT_OUT.relative_to(REPO)})"
    )
    ap.add_argument("--quick", action="store_true", help="fewer steps and photos (a smoke run, not numbers to quote)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S, help="start no check after this many seconds (450)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device (torch.cuda.is_available() is False): nothing checked; run it on a machine with an "
              "NVIDIA GPU", flush=True)  # fmt: skip
        result = {"cuda": False, "skipped": "no CUDA device"}
        try:
            kept = json.loads(args.out.read_text()).get("cuda") is True
        except (OSError, ValueError, AttributeError):
            kept = False
        if kept:  # a CPU run must not overwrite a GPU run's results
            print(f"{args.out} holds a GPU run's results: left as it is")
            print(json.dumps(result, indent=2))
        else:
            print(write(args.out, result))
            print(f"written to {args.out}")
        return 0
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    return check_device(device, args.out, args.quick, args.budget_s)[1]


if __name__ == "__main__":
    sys.exit(main())
