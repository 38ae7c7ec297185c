"""Re-deciding, on the pre-trained demo backbone, the defaults first chosen on random features (#27).

    python -m benchmarks.defaults                          # every decision, 2 data sets x 2 seeds
    python -m benchmarks.defaults --decisions lora_lr --seeds 1 --jobs 2     # one decision

Every run is the demo's trainer (``config/demo.yaml``'s trainer_overrides: the tiny DINOv3-shaped
backbone pre-trained label-free by ``src.pretrain`` on 1200 disjoint synthetic photos, 64 px halves,
batch 8, lr 3e-3, backbone_lr 1e-3, Stage 1 up to 10 epochs, Stage 2 20 epochs, tiny Depth
Anything depth), 5 grouped folds, on two data sets made by ``src.synth``: the demo's (seed 0,
120 photos of 1000x500) and a second one (seed 1, 1200x600; the same renderer as the demo and the
pre-training photos, other photos and another size). Each decision varies one flag of one
model recipe (``config/models/<recipe>.yaml`` on top of the demo settings); nothing else changes.

Scores are the unbiased OOF weighted R^2 (``oof_metrics.json``'s top level: each fold at the epoch
the other folds chose, or for SWA the averaged weights, chosen on nothing), mean over seeds.
"Sel" beside it is the optimistic score (each fold's own best epoch), shown only as a contrast.

Prediction shifts (the issue's check that LoRA and --feature-layers now act): the mean absolute
difference of the last-epoch OOF predictions (grams, over the five targets) between a recipe and
its variant at the same seed, against the same recipe at seeds 0 and 1 (seed noise).

JSON in ``benchmarks/results/defaults.json``, the table in ``benchmarks/results/defaults.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
WEIGHTS = REPO / "results" / "demo" / "pretrained" / "tiny.safetensors"
DATASETS = ("demo", "demo_seed1_1200x600")  # benchmarks.quality's two sets: they choose
CHECK = "seed2_1000x500"  # a third set that chose nothing: the chosen defaults against the old ones

# decision -> (recipe, {label: trainer settings}); the first label is the current default.
DECISIONS = {
    "density_tokens": ("baseline", {"patch": {}, "cls_patch": {"density_tokens": "cls_patch"}}),
    "aux_heads": ("aux_heads", {
        "cls_patch": {}, "cls_patch, no CLS grad": {"aux_cls_grad": False}, "patch": {"aux_tokens": "patch"},
        "no aux heads": {"use_height_head": False, "use_ndvi_head": False}}),
    "lora_lr": ("lora", {"1x backbone_lr": {}, "3x": {"lora_lr": 3e-3}, "10x": {"lora_lr": 1e-2},
                         "frozen (no LoRA)": {"lora_rank": 0, "freeze_backbone": True}}),
    "ema": ("baseline", {"off": {}, "0.99": {"ema": True, "ema_decay": 0.99},
                         "0.99 + warm-up": {"ema": True, "ema_decay": 0.99, "ema_warmup": True}}),
    "swa": ("baseline", {"off": {}, "last 3": {"swa_top_k": 3, "swa_select": "last"}}),
    "feature_layers": ("baseline", {"last": {}, "-2 -1": {"feature_layers": [-2, -1]}}),
    # After #27 (today's defaults spelt out): heads for Green, Clover, Total with GDM and Dead derived,
    # or all five by heads of their own (benchmarks/finetune_gap.py: +0.05 on 40 photos, random backbone)
    "direct_heads": ("baseline", {
        "derived GDM, Dead": {"density_tokens": "cls_patch", "ema": True},
        "heads for all five": {"density_tokens": "cls_patch", "ema": True, "use_compositional": True,
                               "compositional_weight": 0.0}}),
    # run on CHECK only (--decisions check --data seed2_1000x500): the old defaults spelt out
    "check": ("baseline", {
        "before #27 (patch, no EMA)": {"density_tokens": "patch", "ema": False},
        "cls_patch": {"density_tokens": "cls_patch", "ema": False},
        "EMA 0.99": {"density_tokens": "patch", "ema": True, "ema_decay": 0.99},
        "cls_patch + EMA 0.99": {"density_tokens": "cls_patch", "ema": True, "ema_decay": 0.99}}),
}
# Shifts: (decision, variant label) against its decision's first label at the same seed.
SHIFTS = (("lora_lr", "frozen (no LoRA)"), ("feature_layers", "-2 -1"), ("density_tokens", "cls_patch"))


def demo_settings() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["trainer_overrides"]
    return {k: v for k, v in cfg.items() if k not in ("backbone_weights", "device", "num_workers")}


def recipe(name: str) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "models" / f"{name}.yaml").read_text()) or {}
    return {k: v for k, v in cfg.items() if k not in ("freeze_epochs", "stage2_epochs")}  # the demo's schedule


def ensure_weights(path: Path) -> Path:
    """The pipeline's pre-trained demo backbone, made with its settings when absent."""
    if not path.is_file():
        from src.pretrain.train import PretrainConfig, run

        run(PretrainConfig(out=str(path), exclude=()))
    return path


# Each decision was measured from the defaults before #27, one change at a time; they are spelt out
# so that a rerun measures the same thing after the defaults changed (cls_patch, EMA on).
BEFORE_27 = {"density_tokens": "patch", "ema": False}


def settings_of(decision: str, label: str) -> dict:
    model, variants = DECISIONS[decision]
    return {**demo_settings(), **BEFORE_27, **recipe(model), **variants[label]}


def _cell(args) -> tuple:
    """One run in its own process, quiet: its unbiased and optimistic scores and last-epoch OOF."""
    paths, name, decision, label, seed, threads, weights = args
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the trainer caps its threads (--cpus 0) by it: no oversubscription
    import pandas as pd
    import torch

    from src.core.config import from_dict
    from src.core.targets import TARGETS
    from src.training.run import run

    torch.set_num_threads(threads)
    settings = settings_of(decision, label)
    settings.update(data_dir=paths["data_dir"], fold_csv=paths["fold_csv"], image_cache_dir=paths["image_cache_dir"],
                    depth_cache_dir=paths["depth_cache_dir"], depth_model=paths["depth_model"], backbone_weights=weights,
                    num_workers=0, device="cpu", seed=seed)  # fmt: skip
    quiet = contextlib.ExitStack()
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    with tempfile.TemporaryDirectory() as tmp, quiet:
        settings["output_dir"] = tmp
        scores = run(from_dict(settings))
        last = pd.read_parquet(Path(tmp) / "oof_last.parquet").sort_values("image_id")
        preds = last[[f"pred_{t}" for t in TARGETS]].to_numpy()
    return name, decision, label, seed, {"unbiased": scores["weighted_r2"], "score": scores["score"],
                                         "selected": scores["selected"]["weighted_r2"], "last_preds": preds.tolist()}


def summarise(results: list[tuple]) -> dict:
    out: dict = {}
    for name, decision, label, _seed, r in results:
        cell = out.setdefault(decision, {}).setdefault(label, {}).setdefault(name, {"unbiased": [], "selected": []})
        cell["unbiased"].append(r["unbiased"])
        cell["selected"].append(r["selected"])
        cell["score"] = r["score"]
    return out


def shifts(results: list[tuple]) -> dict:
    preds = {(n, d, lab, s): np.asarray(r["last_preds"]) for n, d, lab, s, r in results}
    out = {}
    for decision, variant in SHIFTS:
        base = next(iter(DECISIONS[decision][1]))
        for name in {n for n, *_ in preds}:
            pairs = [(preds[(name, decision, base, s)], preds[(name, decision, variant, s)])
                     for (n, d, lab, s) in preds if (n, d, lab) == (name, decision, base)
                     and (name, decision, variant, s) in preds]  # fmt: skip
            noise = [preds.get((name, decision, base, 0)), preds.get((name, decision, base, 1))]
            if not pairs or noise[0] is None or noise[1] is None:
                continue
            out[f"{decision}: {variant} vs {base} / {name}"] = {
                "effect_g": float(np.mean([np.abs(a - b).mean() for a, b in pairs])),
                "seed_noise_g": float(np.abs(noise[0] - noise[1]).mean())}  # fmt: skip
    return out


def table(summary: dict, shift: dict, sets: list[str]) -> str:
    lines = ["| decision | value | " + " | ".join(f"{n} unbiased (sel)" for n in sets) + " | mean |",
             "|---|---|" + "--:|" * (len(sets) + 1)]  # fmt: skip
    for decision, labels in summary.items():
        for label, by_set in labels.items():
            cells, means = [], []
            for n in sets:
                if n in by_set:
                    u, s = np.mean(by_set[n]["unbiased"]), np.mean(by_set[n]["selected"])
                    cells.append(f"{u:.4f} ± {np.std(by_set[n]['unbiased']):.4f} ({s:.4f})")
                    means.append(u)
                else:
                    cells.append("")
            lines.append(f"| {decision} | {label} | " + " | ".join(cells) + f" | {np.mean(means):.4f} |")
    if shift:
        lines += ["", "| prediction shift (last epoch, mean abs g) | effect | seed noise |", "|---|--:|--:|"]
        lines += [f"| {k} | {v['effect_g']:.3f} | {v['seed_noise_g']:.3f} |" for k, v in shift.items()]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.defaults", description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", nargs="+", choices=list(DECISIONS), default=[d for d in DECISIONS if d not in ("check", "direct_heads")])
    ap.add_argument("--data", nargs="+", choices=(*DATASETS, CHECK), default=list(DATASETS))
    ap.add_argument("--seeds", type=int, default=2, help="seeds per cell (mean over them; 2+ for the seed noise)")
    ap.add_argument("--weights", default=str(WEIGHTS), help="pre-trained tiny backbone (made here when absent)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (one thread each)")
    ap.add_argument("--out", default=str(OUT / "defaults"), help="writes <out>.json and <out>.md")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    from benchmarks.quality import prepare

    weights = str(ensure_weights(Path(args.weights)).resolve())
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: prepare(Path(tmp), name) for name in args.data}
        wanted = [(n, d, lab, s) for d in args.decisions for lab in DECISIONS[d][1] for n in args.data
                  for s in range(args.seeds)]  # fmt: skip
        # One run per distinct (data, settings, seed): "off" of several decisions is the same run.
        key = {w: (w[0], json.dumps(settings_of(w[1], w[2]), sort_keys=True), w[3]) for w in wanted}
        first = {}
        for w in wanted:
            first.setdefault(key[w], w)
        cells = [(paths[n], n, d, lab, s, threads, weights) for (n, d, lab, s) in first.values()]
        # spawn: a forked child of a parent that ran torch (the depth cache) can hang in its thread pool
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = {key[r[:4]]: r for r in tqdm(pool.map(_cell, cells), total=len(cells), desc="default runs")}
        results = [(*w, done[key[w]][4]) for w in wanted]
    summary, shift = summarise(results), shifts(results)
    text = table(summary, shift, args.data)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"demo": demo_settings(), "seeds": args.seeds, "weights": args.weights}
    out.with_suffix(".json").write_text(json.dumps({"cells": summary, "shifts": shift, "settings": settings}, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"# {__doc__.splitlines()[0]}\n\n{text}\n")
    return {"cells": summary, "shifts": shift}


if __name__ == "__main__":
    main()
