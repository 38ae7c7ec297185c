"""Quality benchmark: does the trainer learn at least as well as a minimal loop at equal settings?

    python -m benchmarks.quality                  # 2 data sets x 3 seeds x 8 and 30 epochs (9-22 min, 2 cores)
    python -m benchmarks.quality --seeds 1 --epochs 8 --jobs 2   # a smoke run

OOF weighted R^2 over 5 grouped folds (the demo's fold recipe), mean over seeds, on the demo
data (``config/demo.yaml``: 120 photos of 1000x500, seed 0) and on a second demo set made with
another seed and photo size (seed 1, 1200x600). Same tiny DINOv3-shaped backbone in every method:
the demo's, pre-trained label-free (``--weights``, made as the pipeline makes it when absent;
``--weights none``: random, the same initial weights per seed and fold), 64 px halves, batch 8, epochs and LR within each pair:

(a) probe     one linear layer on the mean-pooled patch tokens of both halves, frozen backbone,
              MSE on standardised targets, AdamW at constant LR, no augmentation
(b) finetune  the same, backbone trained end to end at the same LR
(c) trainer   --no-two-stage --freeze-backbone (density head, SmoothL1, augmentation, schedule)
(d) trainer   --no-two-stage --backbone-lr = --lr
(e) trainer   its defaults (two stages: a third of the epochs frozen; depth) at the demo's LRs
(a_aug), (b_aug)  (a) and (b) trained on the trainer's augmented pixels: the same draws, from the
              trainer's own dataset, so the pair sees equal data and differs only in the machinery

Scores are unbiased: (a) and (b) are scored at their last epoch (nothing chosen), (c)-(e) at the
epoch chosen on the other folds' validation curves (``src.rounds.oof``), their optimistic score (each
fold's own best epoch, chosen on the images that score it) shown beside it as "sel".

Goal: (c) >= (a) and (d) >= (b) at both epoch counts, on the unbiased scores. (c) and (d) run without depth; (e) is the
trainer as `make demo` runs it. (a) and (b) see plain pixels and the trainer its default (strong)
augmentation, so c/a and d/b also carry what that augmentation costs or gains in so few epochs;
c/a_aug and d/b_aug are the machinery alone.
JSON in ``benchmarks/results/quality.json``.
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

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"
DATASETS = {"demo": dict(seed=0, width=1000, height=500), "demo_seed1_1200x600": dict(seed=1, width=1200, height=600)}
HELD_OUT = {"seed2_1000x500": dict(seed=2, width=1000, height=500)}  # benchmarks.defaults' check of what it chose
MINIMAL = ("a_probe", "b_finetune", "a_probe_aug", "b_finetune_aug")
METHODS = (*MINIMAL, "c_trainer_frozen", "d_trainer_finetune", "e_trainer_defaults")
# The goal's pairs, and the same pairs with the baseline trained on the trainer's augmented pixels.
PAIRS = (("c_trainer_frozen", "a_probe"), ("d_trainer_finetune", "b_finetune"),
         ("c_trainer_frozen", "a_probe_aug"), ("d_trainer_finetune", "b_finetune_aug"))
RATIOS = ("c/a", "d/b", "c/a_aug", "d/b_aug")
SIZE, BATCH, LR = 64, 8, 1e-3
DEMO_LR, DEMO_BACKBONE_LR = 3e-3, 1e-3  # config/demo.yaml


def prepare(root: Path, name: str) -> dict:
    """Data, folds, image cache and depth cache of one data set (the pipeline's recipe)."""
    from src.data import depth, image_cache
    from src.data.folds import make_folds
    from src.data.schema import load_train
    from src.data.synth import generate
    from src.models.depth_anything import make_tiny

    data = root / name
    generate(data, n_train=120, n_test=4, **{**DATASETS, **HELD_OUT}[name])
    fold_csv = data / "trainfold_group_location.csv"
    make_folds(load_train(data), n_folds=5, strategy="group_location", seed=42).to_csv(fold_csv, index=False)
    image_cache.build(data, "train", SIZE, image_cache.cache_path(root / "cache" / name, SIZE, "train"))
    tiny = make_tiny(root / "tiny-da2")
    depth.build_cache(data, "train", str(tiny), depth.cache_path(root / "depth" / name, "small", "train"))
    return {"data_dir": str(data), "fold_csv": str(fold_csv), "image_cache_dir": str(root / "cache" / name),
            "depth_cache_dir": str(root / "depth" / name), "depth_model": str(tiny)}  # fmt: skip


def _trainer(paths: dict, method: str, seed: int, epochs: int, out: Path, overrides: dict) -> dict:
    from src.core.config import from_dict
    from src.training.run import run

    common = dict(data_dir=paths["data_dir"], fold_csv=paths["fold_csv"], image_cache_dir=paths["image_cache_dir"],
                  output_dir=str(out), backbone_size="tiny", backbone_weights=paths.get("weights", "none"), image_size=SIZE, batch_size=BATCH,
                  num_workers=0, device="cpu", seed=seed)  # fmt: skip
    if method == "c_trainer_frozen":
        cfg = dict(two_stage=False, freeze_backbone=True, epochs=epochs, lr=LR, use_depth=False)
    elif method == "d_trainer_finetune":
        cfg = dict(two_stage=False, epochs=epochs, lr=LR, backbone_lr=LR, use_depth=False)
    else:
        frozen = max(1, round(epochs / 3))
        cfg = dict(freeze_epochs=frozen, stage2_epochs=epochs - frozen, lr=DEMO_LR, backbone_lr=DEMO_BACKBONE_LR,
                   depth_cache_dir=paths["depth_cache_dir"], depth_model=paths["depth_model"])  # fmt: skip
    scores = run(from_dict({**common, **cfg, **overrides}))
    return {"unbiased": scores["weighted_r2"], "selected": scores["selected"]["weighted_r2"],
            "last": scores.get("last", {}).get("weighted_r2"), "score": scores["score"]}  # fmt: skip


def _halves(paths: dict):
    """Every training photo's two halves as the trainer's validation sees them (uint8, unaugmented),
    and the image cache they come from."""
    import torch

    from src.data import image_cache
    from src.data.dataset import BiomassDataset
    from src.data.schema import load_train
    from src.data.transforms import HalfTransform

    images = load_train(paths["data_dir"])
    cache = image_cache.load(image_cache.cache_path(paths["image_cache_dir"], SIZE, "train"),
                             images["image_id"].tolist(), SIZE, False, "")  # fmt: skip
    ds = BiomassDataset(images, paths["data_dir"], HalfTransform(size=SIZE, train=False), halves=cache)
    return images, torch.stack([ds[i]["image"] for i in range(len(ds))]), cache


def _trainer_pixels(paths: dict, images, cache, tr, seed: int):
    """Fold ``tr``'s training images under the trainer's default augmentation, drawn as the trainer
    draws them (its dataset, seed + fold, epoch * n + row): the "same data" the issue asks for."""
    from src.data.dataset import BiomassDataset
    from src.data.transforms import HalfTransform

    return BiomassDataset(images.iloc[tr], paths["data_dir"], HalfTransform(size=SIZE, train=True), seed=seed,
                          halves=(cache[0], cache[1][tr]))  # fmt: skip


def _minimal(paths: dict, finetune: bool, seed: int, epochs: int, augment: bool = False) -> dict:
    """(a) / (b): the smallest loop that can learn the task, to measure the trainer against.
    ``augment``: train on the trainer's augmented pixels instead of the plain ones."""
    import pandas as pd
    import torch

    from src.core.metrics import weighted_r2
    from src.core.targets import TARGETS
    from src.data.folds import read_fold_csv
    from src.data.transforms import MEAN, STD
    from src.models.backbone import create_backbone

    images, x, cache = _halves(paths)
    folds = read_fold_csv(paths["fold_csv"], images, 5).to_numpy()
    y = torch.tensor(images[list(TARGETS)].to_numpy(), dtype=torch.float32)
    mean, std = torch.tensor(MEAN).view(3, 1, 1) * 255, torch.tensor(STD).view(3, 1, 1) * 255
    oof = np.zeros(tuple(y.shape))
    for fold in range(5):
        torch.manual_seed(seed + fold)  # the trainer's seed for this fold: the same initial backbone
        backbone = create_backbone("tiny", paths.get("weights", "none"), SIZE)
        head = torch.nn.Linear(2 * backbone.num_features, len(TARGETS))
        prefix = backbone.num_prefix_tokens

        def features(images_u8, backbone=backbone, prefix=prefix):
            t = backbone.forward_features(((images_u8.float() - mean) / std).flatten(0, 1))
            return t[:, prefix:].mean(1).view(len(images_u8), -1)  # both halves side by side

        tr, va = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        mu, sd = y[tr].mean(0), y[tr].std(0).clamp(min=1e-3)
        params = [*head.parameters(), *(backbone.parameters() if finetune else [])]
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
        backbone.train(finetune)
        with torch.no_grad():
            frozen = None if finetune or augment else features(x[tr])
        pixels = _trainer_pixels(paths, images, cache, tr, seed + fold) if augment else None
        g = torch.Generator().manual_seed(seed + fold)
        for epoch in range(epochs):
            order = torch.randperm(len(tr), generator=g)
            for i in range(0, len(tr) - BATCH + 1, BATCH):  # drop_last, like the trainer
                b = order[i:i + BATCH]
                if pixels is not None:
                    batch = torch.stack([pixels[epoch * len(tr) + int(k)]["image"] for k in b])
                    with torch.set_grad_enabled(finetune):
                        f = features(batch)
                else:
                    f = features(x[tr][b]) if finetune else frozen[b]
                loss = torch.nn.functional.mse_loss(head(f), (y[tr][b] - mu) / sd)
                opt.zero_grad()
                loss.backward()
                opt.step()
        backbone.eval()
        with torch.no_grad():
            oof[va] = (head(features(x[va])) * sd + mu).numpy()
    last = float(weighted_r2(images[list(TARGETS)].to_numpy(), pd.DataFrame(oof).to_numpy()))
    return {"unbiased": last, "selected": last, "last": last, "score": "last epoch"}  # nothing chosen


def _cell(args) -> tuple:
    """One (data set, seed, epochs, method) run in its own process, quiet."""
    paths, name, method, seed, epochs, threads, overrides = args
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the trainer caps its threads (--cpus 0) by it: no oversubscription
    import torch

    torch.set_num_threads(threads)
    quiet = contextlib.ExitStack()
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))  # per-epoch progress bars
    with tempfile.TemporaryDirectory() as tmp, quiet:
        if method in MINIMAL:
            score = _minimal(paths, method.startswith("b_"), seed, epochs, augment=method.endswith("_aug"))
        else:
            score = _trainer(paths, method, seed, epochs, Path(tmp), overrides)
    return name, method, seed, epochs, score


def table(results: list[tuple], epochs_list: list[int]) -> tuple[str, dict]:
    summary: dict = {}
    for name, method, _seed, epochs, score in results:
        summary.setdefault(name, {}).setdefault(str(epochs), {}).setdefault(method, []).append(score["unbiased"])
        summary[name][str(epochs)].setdefault(f"{method}_selected", []).append(score["selected"])
    lines = ["| data | epochs | " + " | ".join(METHODS + RATIOS) + " |", "|---" * (len(METHODS) + len(RATIOS) + 2) + "|"]
    verdict = {}
    for name, by_epochs in summary.items():
        for epochs in map(str, epochs_list):
            cells = by_epochs.get(epochs, {})
            means = {m: float(np.mean(cells[m])) for m in METHODS if m in cells}
            sel = {m: float(np.mean(cells[f"{m}_selected"])) for m in METHODS if f"{m}_selected" in cells}
            shown = [f"{means[m]:.3f} ± {np.std(cells[m]):.3f}" + (f" (sel {sel[m]:.3f})" if m not in MINIMAL else "")
                     if m in means else "" for m in METHODS]  # fmt: skip
            ratios = [means[a] / means[b] if a in means and b in means and means[b] > 0 else float("nan") for a, b in PAIRS]
            met = [means.get(a, -1) >= means.get(b, 1e9) for a, b in PAIRS]
            verdict[f"{name}/{epochs}"] = {"means": means, "selected_means": sel, "ratios": dict(zip(RATIOS, ratios)),
                                           "goal_met": all(met[:2]), "goal_met_same_pixels": all(met[2:])}
            lines.append(f"| {name} | {epochs} | " + " | ".join(shown) + " | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return "\n".join(lines), {"cells": summary, "verdict": verdict}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per cell (mean over them)")
    ap.add_argument("--epochs", type=int, nargs="+", default=[8, 30])
    ap.add_argument("--data", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="trainer settings for (c)-(e), YAML values (to find out why a pair differs)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (one thread each)")
    ap.add_argument("--weights", default=str(REPO / "results" / "demo" / "pretrained" / "tiny.safetensors"),
                    help="the tiny backbone's weights (made when absent), or none for random ones")
    args = ap.parse_args(argv)
    import yaml

    from benchmarks.defaults import ensure_weights

    weights = "none" if args.weights == "none" else str(ensure_weights(Path(args.weights)).resolve())
    from tqdm import tqdm

    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}

    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: {**prepare(Path(tmp), name), "weights": weights} for name in args.data}
        cells = [(paths[n], n, m, s, e, max(1, (os.cpu_count() or 1) // args.jobs), overrides)
                 for n in args.data for e in args.epochs for s in range(args.seeds) for m in args.methods]  # fmt: skip
        cells.sort(key=lambda c: -c[4])  # long runs first
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(_cell, cells), total=len(cells), desc="quality runs"))
    text, out = table(results, args.epochs)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quality.json").write_text(json.dumps({**out, "settings": {"image_size": SIZE, "batch": BATCH, "lr": LR,
                                      "seeds": args.seeds, "epochs": args.epochs, "trainer_set": overrides, "weights": args.weights}}, indent=2) + "\n")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
