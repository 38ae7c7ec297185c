"""Standalone trainer overhead: ``python -m src.dinov3_train`` (the guide's commands, no image
cache) against a minimal loop that decodes each photo once, on the same tiny 5-fold work.

    python -m benchmarks.standalone                    # 3 paired rounds (about 2 minutes on 2 cores)
    python -m benchmarks.standalone --before /tmp/wt   # also the trainer of other checkouts, paired

Work: 40 synthetic photos of 1200x600 (``src.synth``), 5 grouped folds, 8 epochs per fold,
64 px halves, batch 8, --no-strong-aug, tiny random DINOv3-shaped backbone fine-tuned end to end
(--no-two-stage, --lr = --backbone-lr), no depth, CPU, the trainer's default DataLoader workers.

(a) trainer   ``python -m src.dinov3_train ...`` as a subprocess: wall time including its imports
(b) minimal   a subprocess too (``python -m benchmarks.standalone --minimal``): decode every photo
              once, split and resize its halves, then per fold the same tiny backbone + one linear
              layer on the mean patch token, AdamW at constant LR, MSE, validated once at the end

Each round runs (a), (b) (and the --before trainers) back to back, so a busy shared machine slows
them alike; the table shows median seconds and the median over rounds of each round's trainer /
minimal (the paired ratio; goal <= 2.0).
Every process runs with OMP_NUM_THREADS=1 (``--threads``): one compute thread each, the trainer's
DataLoader worker aside; two threads of a tiny model on a machine others load can take 5x longer
one run and not the next, which would swamp what is measured here.
JSON in ``benchmarks/results/standalone.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
N_PHOTOS, WIDTH, HEIGHT, FOLDS, EPOCHS, SIZE, BATCH, LR = 40, 1200, 600, 5, 8, 64, 8, 1e-3
GOAL = 2.0


def make_data(root: Path) -> Path:
    from src.data.folds import make_folds
    from src.data.schema import load_train
    from src.data.synth import generate

    data = Path(root) / "data"
    generate(data, n_train=N_PHOTOS, n_test=4, seed=0, width=WIDTH, height=HEIGHT)
    make_folds(load_train(data), n_folds=FOLDS, strategy="group_location", seed=42).to_csv(
        data / "trainfold_group_location.csv", index=False)
    return data


def trainer_argv(data: Path, out: Path) -> list[str]:
    """The guide's way: no --image-cache-dir, default workers."""
    return [sys.executable, "-m", "src.dinov3_train", "--data-dir", str(data), "--fold-csv",
            str(data / "trainfold_group_location.csv"), "--output-dir", str(out), "--backbone-size", "tiny",
            "--backbone-weights", "none", "--image-size", str(SIZE), "--no-strong-aug", "--no-use-depth",
            "--no-two-stage", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", str(LR),
            "--backbone-lr", str(LR), "--device", "cpu"]  # fmt: skip


def minimal_argv(data: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.standalone", "--minimal", str(data)]


def minimal(data: Path) -> float:
    """(b): the smallest loop that does the work; returns its OOF weighted R^2 (last epoch)."""
    import cv2
    import numpy as np
    import pandas as pd
    import torch

    from src.core.metrics import weighted_r2
    from src.core.targets import TARGETS
    from src.data.photos import read_rgb
    from src.models.backbone import create_backbone

    long = pd.read_csv(data / "train.csv")
    long["image_id"] = long["sample_id"].str.split("__").str[0]
    wide = long.pivot_table(index=["image_id", "image_path"], columns="target_name", values="target").reset_index()
    folds = pd.read_csv(data / "trainfold_group_location.csv").set_index("image_id")["fold"]
    wide = wide.assign(fold=wide["image_id"].map(folds).to_numpy())
    x = np.zeros((len(wide), 2, 3, SIZE, SIZE), np.uint8)
    for i, rel in enumerate(wide["image_path"]):  # decoded once
        rgb = read_rgb(data / rel)
        mid = rgb.shape[1] // 2
        for k, half in enumerate((rgb[:, :mid], rgb[:, mid:])):
            x[i, k] = cv2.resize(half, (SIZE, SIZE), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    x = torch.from_numpy(x)
    y = torch.tensor(wide[list(TARGETS)].to_numpy(), dtype=torch.float32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    fold = wide["fold"].to_numpy()
    oof = np.zeros(tuple(y.shape))
    for k in range(FOLDS):
        torch.manual_seed(k)
        backbone = create_backbone("tiny", "none", SIZE)
        head = torch.nn.Linear(2 * backbone.num_features, len(TARGETS))

        def predict(images, backbone=backbone, head=head):
            tokens = backbone.forward_features(((images.float() - mean) / std).flatten(0, 1))
            return head(tokens[:, backbone.num_prefix_tokens:].mean(1).view(len(images), -1))

        tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        mu, sd = y[tr].mean(0), y[tr].std(0).clamp(min=1e-3)
        opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=LR)
        g = torch.Generator().manual_seed(k)
        backbone.train()
        for _ in range(EPOCHS):
            order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)]
            for i in range(0, len(order) - BATCH + 1, BATCH):
                b = order[i:i + BATCH]
                loss = torch.nn.functional.mse_loss(predict(x[b]), (y[b] - mu) / sd)
                opt.zero_grad()
                loss.backward()
                opt.step()
        backbone.eval()
        with torch.no_grad():
            oof[va] = (predict(x[va]) * sd + mu).numpy()
    return weighted_r2(y.numpy(), oof)


def _timed(argv: list[str], cwd: Path, log: Path, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(cwd), **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}); log: {log.read_text()[-2000:]}")
    return wall


def _oof_r2(log: Path) -> float | None:
    for line in log.read_text().splitlines():
        if line.startswith("OOF over folds"):
            return float(line.split("weighted_r2 ")[1].split()[0])
    return None


def run(rounds: int = 3, before: list[Path] | None = None, threads: int = 1) -> dict:
    """``before``: other checkouts whose trainer runs in the same rounds (named ``before:<folder>``)."""
    trees = {"trainer": REPO, **{f"before:{Path(b).name}": Path(b) for b in before or []}}
    names = ["trainer", "minimal", *list(trees)[1:]]
    times: dict[str, list[float]] = {n: [] for n in names}
    scores: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp)
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]  # neither always first on a machine others share
            for i, name in enumerate(order):
                log = tmp / f"run{r}_{i}.log"
                if name == "minimal":
                    times[name].append(_timed(minimal_argv(data), REPO, log, threads))
                    scores[name] = float(log.read_text().split("weighted_r2 ")[-1].split()[0])
                else:
                    times[name].append(_timed(trainer_argv(data, tmp / f"out{r}_{i}"), trees[name], log, threads))
                    scores[name] = _oof_r2(log)
                print(f"round {r + 1}/{rounds} {name}: {times[name][-1]:.1f} s", flush=True)
    med = {n: statistics.median(v) for n, v in times.items()}
    # Paired: each round's trainer over the same round's minimal loop, then the median of those.
    paired = {n: statistics.median(t / m for t, m in zip(times[n], times["minimal"])) for n in trees}
    return {
        "work": f"{N_PHOTOS} photos {WIDTH}x{HEIGHT}, {FOLDS} folds x {EPOCHS} epochs, {SIZE} px, batch {BATCH}, "
                "--no-strong-aug, tiny random backbone fine-tuned, CPU",
        "rounds": rounds, "times_s": times, "median_s": med, "ratio": paired["trainer"], "ratios": paired,
        "goal_ratio": GOAL, "oof_weighted_r2": scores, "cpus": os.cpu_count(),
        "omp_num_threads": threads or os.environ.get("OMP_NUM_THREADS"),
        "trees": {n: str(t) for n, t in trees.items()},
    }  # fmt: skip


def table(result: dict) -> str:
    """Median seconds per process, and the median over rounds of trainer / minimal (paired)."""
    med = result["median_s"]
    lines = ["| trainer | trainer s | minimal s | trainer / minimal (paired) |", "|---|---|---|---|"]
    for name, ratio in sorted(result["ratios"].items(), key=lambda kv: kv[0] == "trainer"):
        shown = "this checkout" if name == "trainer" else name
        lines.append(f"| {shown} | {med[name]:.1f} | {med['minimal']:.1f} | {ratio:.2f} |")
    return "\n".join(lines)


def write_result(result: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "standalone.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.standalone", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds (median over them)")
    ap.add_argument("--before", type=Path, nargs="+", default=[],
                    help="also time the trainer of these checkouts (e.g. git worktrees), in the same rounds")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (0: as inherited)")
    ap.add_argument("--minimal", type=Path, metavar="DATA", help=argparse.SUPPRESS)  # (b)'s own process
    args = ap.parse_args(argv)
    if args.minimal:
        print(f"minimal loop: OOF weighted_r2 {minimal(args.minimal):.4f}", flush=True)
        return None
    result = run(args.rounds, [b.resolve() for b in args.before], args.threads)
    path = write_result(result)
    print(table(result))
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
