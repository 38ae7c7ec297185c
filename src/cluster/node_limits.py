"""What one machine or one SLURM node can give a job, and which jobs ask for more.

The Snakemake workflow uses it (workflow/rules/resources.smk) so that a local run never starts
more GPU jobs than there are GPUs, and a SLURM run stops before submitting a job that no node
could ever run (SLURM would leave it pending without a word).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

SINFO = ["sinfo", "--noheader", "--Node", "--format=%n %c %m %G"]


def visible_gpus(env=None) -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, else 0.

    No torch import: this runs while Snakemake parses the workflow."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",")]
        return len([d for d in ids if d and not d.startswith("-")])  # "-1" or "" hide every GPU
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


def _gres_gpus(gres: str) -> int:
    """GPUs in a sinfo %G field: "gpu:4", "gpu:a100:4(S:0-1)", "gpu:2,shard:8", "(null)"."""
    total = 0
    for part in gres.split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", part.strip())
        if m:
            total += int(m.group(1))
    return total


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from `sinfo --noheader --Node --format="%n %c %m %G"` (one line per node and partition)."""
    nodes = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        name, cpus, mem = fields[:3]
        gres = fields[3] if len(fields) > 3 else "(null)"
        try:
            nodes[name] = Node(name, int(cpus.rstrip("+")), int(mem.rstrip("+")), _gres_gpus(gres))
        except ValueError:
            continue
    return list(nodes.values())


def slurm_nodes() -> list[Node]:
    """The cluster's nodes; empty when sinfo is missing or fails (the SLURM plugin then says why)."""
    try:
        out = subprocess.run(SINFO, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_sinfo(out.stdout) if out.returncode == 0 else []


@dataclass(frozen=True)
class Request:
    rule: str
    threads: int
    mem_mb: int
    gpus: int


def _fits(r: Request, n: Node) -> bool:
    return r.threads <= n.cpus and r.mem_mb <= n.mem_mb and r.gpus <= n.gpus


def too_big(requests, nodes: list[Node]) -> list[str]:
    """One line per rule whose job no node can hold, naming what it asks, the largest node and the fix."""
    if not nodes:
        return []
    cpus, mem, gpus = (max(getattr(n, k) for n in nodes) for k in ("cpus", "mem_mb", "gpus"))
    lines = {}
    for r in requests:
        if r.rule in lines or any(_fits(r, n) for n in nodes):
            continue
        fixes = []
        if r.threads > cpus:
            fixes.append(f"fewer threads (--set-threads {r.rule}={cpus}, or the config's train.threads)")
        if r.mem_mb > mem:
            fixes.append(f"less memory (--set-resources {r.rule}:mem_mb={mem}, or the profile's set-resources)")
        if r.gpus > gpus:
            fixes.append(f"at most {gpus} GPUs (the config's train.gpus or depth.gpus)")
        fix = "; ".join(fixes) or "no single node has all three at once: ask for less of one"
        lines[r.rule] = (f"rule {r.rule} asks for {r.threads} CPUs, {r.mem_mb} MB and {r.gpus} GPUs per job, but the "
                         f"largest SLURM node has {cpus} CPUs, {mem} MB and {gpus} GPUs (sinfo): {fix}")  # fmt: skip
    return list(lines.values())
