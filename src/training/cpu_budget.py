"""How one training job's CPUs are shared: loader workers, compute threads and OpenCV threads of
every rank add up to the job's CPUs (``--cpus``), so a SLURM job given 8 CPUs runs on 8.

Per rank: B = cpus // ranks on this node; W = min(--num-workers, B - 1) loader workers (one CPU
stays with the step); the rank's torch and OpenCV threads take the other B - W (no more than
OMP_NUM_THREADS when it is set); each worker runs with one torch and one OpenCV thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Budget:
    cpus: int  # of the whole job
    ranks: int  # on this node
    workers: int  # loader workers per rank
    threads: int  # torch / OpenCV threads of each rank's main process
    asked_workers: int

    def note(self) -> str:
        """One line for the log when --num-workers had to shrink ('' when it did not)."""
        if self.workers >= self.asked_workers:
            return ""
        per_rank = max(1, self.cpus // self.ranks)
        return (f"--num-workers {self.asked_workers} lowered to {self.workers}: {self.cpus} CPUs over {self.ranks} "
                f"rank(s) leave {per_rank} per rank ({self.workers} loader workers + {self.threads} for the step); "
                "give the job more CPUs (--cpus, the pipeline's train.threads) for more workers")


def available_cpus() -> int:
    """The CPUs this process may run on (a SLURM job's allocation, a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def plan(cpus: int, ranks: int, num_workers: int, omp: str | None = None) -> Budget:
    """``cpus`` 0: all this process may run on; ``omp``: OMP_NUM_THREADS, a cap on the threads."""
    cpus = cpus or available_cpus()
    per_rank = max(1, cpus // max(1, ranks))
    workers = max(0, min(num_workers, per_rank - 1))
    threads = max(1, per_rank - workers)
    if omp and omp.strip().isdigit() and int(omp) > 0:
        threads = min(threads, int(omp))
    return Budget(cpus, max(1, ranks), workers, threads, num_workers)


def for_run(cfg, info) -> Budget:
    """The budget of this process under ``cfg`` (--cpus, --num-workers), applied: its own threads set.
    The job's CPUs are one node's: shared by the ranks torchrun started on it."""
    budget = plan(cfg.cpus, info.local_world_size, cfg.num_workers, os.environ.get("OMP_NUM_THREADS"))
    apply(budget.threads)
    return budget


def apply(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # albumentations brings OpenCV; without it nothing else spawns threads
        pass


def worker_init(_worker_id: int) -> None:
    """DataLoader workers: one thread each (their share of the budget is the process itself)."""
    apply(1)


def loader_kwargs(budget: Budget, device: torch.device) -> dict:
    """The DataLoader settings every training and validation loader of a run uses."""
    return {"num_workers": budget.workers, "persistent_workers": budget.workers > 0,
            "worker_init_fn": worker_init if budget.workers else None, "pin_memory": device.type == "cuda"}  # fmt: skip
