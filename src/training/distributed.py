"""torchrun / DDP plumbing: one process per device, nccl on CUDA, gloo on CPU.

Only rank 0 prints or writes; validation runs on the full set on every rank (no
DistributedSampler) so early-stopping decisions are identical everywhere without a broadcast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def local_world_size(self) -> int:
        """The ranks on this node, which share its CPUs and memory (torchrun sets LOCAL_WORLD_SIZE)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if pref == "cuda":
        raise UserError("--device cuda but no CUDA device is visible; use --device auto or cpu")
    if pref in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    if pref == "mps":
        raise UserError("--device mps but MPS is not available; use --device auto or cpu")
    return torch.device("cpu")


def setup(device_pref: str = "auto") -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); otherwise single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "mps":
            raise UserError("DDP is not supported on MPS; run one process (python -m src.dinov3_train)")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def per_rank_batch(batch_size: int, info: DistInfo, grad_accum: int = 1) -> int:
    """``--batch-size`` is the effective batch of one forward pass; each rank takes an equal share
    of it. One update sees ``grad_accum`` of them."""
    if batch_size < info.world_size:
        raise UserError(f"--batch-size {batch_size} is smaller than the {info.world_size} DDP ranks; use at least {info.world_size}")
    if batch_size % info.world_size:
        raise UserError(
            f"--batch-size {batch_size} does not split evenly over {info.world_size} ranks; "
            f"use a multiple of {info.world_size} so DDP matches one process"
        )
    per = batch_size // info.world_size
    if info.distributed and info.is_main:
        effective = f"{batch_size}" if grad_accum == 1 else f"{batch_size * grad_accum} = {batch_size} x --grad-accum {grad_accum}"
        print(f"DDP batch adjustment: {batch_size} → {per}/GPU (effective: {effective})", flush=True)
    return per


def all_equal_check(info: DistInfo, value: float) -> None:
    """Defensive: the ranks must agree on stage decisions (they see identical validation)."""
    if not info.distributed:
        return
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    lo, hi = t.clone(), t.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if abs(float(hi - lo)) > 1e-6:
        raise RuntimeError(f"DDP ranks disagree on validation score ({float(lo)} vs {float(hi)})")


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank when it is True on any: a decision that all ranks must take together."""
    if not info.distributed:
        return flag
    t = torch.tensor([float(flag)], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_across_ranks(t: torch.Tensor, info: DistInfo, chunk_mib: int = 256) -> None:
    """In-place sum of a contiguous CPU tensor over all ranks. It goes through the device in chunks
    because nccl only reduces CUDA tensors; bool travels as uint8, which every backend sums."""
    if not info.distributed:
        return
    flat = t.view(-1)
    step = max(1, (chunk_mib << 20) // t.element_size())
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step]
        buf = part.to(info.device, dtype=torch.uint8 if t.dtype == torch.bool else t.dtype, copy=True)
        dist.all_reduce(buf)
        part.copy_(buf)
