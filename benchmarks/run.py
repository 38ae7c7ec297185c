"""Speed benchmarks, side by side in one run; writes benchmarks/results/<name>.json and a table.

    python -m benchmarks.run                 # everything that this machine can run
    python -m benchmarks.run --only data infer --quick

(a) data: samples/s of the training data pipeline at 512 px with strong augmentation, decoding
    the 2000x1000 JPEGs versus reading the image cache.
(b) stage1: wall time of 10 Stage 1 epochs (frozen ViT-S, random weights, CPU) with and without
    the frozen-feature cache.
(c) gpu: train-step images/s and model FLOP utilisation (bf16) for ViT-B/L at 512 and 1024 px
    per half on an on-device batch, then the same steps fed by the real input pipeline (image
    cache, strong augmentation, pinned workers): gpu_busy = step time / fed step time. Only where
    CUDA is available.
(d) infer: inference images/s with and without flip TTA (ViT-S random weights).
(e) demo: wall time of the `make demo` pipeline (snakemake on config/demo.yaml, fresh results).
(f) quality: OOF weighted R^2 of the trainer against a linear probe and a minimal fine-tuning
    loop at equal settings (``benchmarks/quality.py``, also runnable alone).
(g) standalone: wall time of ``python -m src.dinov3_train`` without an image cache against a
    minimal loop on the same tiny 5-fold work (``benchmarks/standalone.py``, also runnable alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"


def _timeit(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _synth(root: Path, n: int, width: int = 2000, height: int = 1000) -> Path:
    from src.data.folds import make_folds
    from src.data.schema import load_train
    from src.data.synth import generate

    data = root / "data"
    generate(data, n_train=n, n_test=max(2, n // 8), seed=0, width=width, height=height)
    images = load_train(data)
    make_folds(images, min(3, images["State"].str.cat(images["Sampling_Date"]).nunique())).to_csv(
        data / "trainfold_group_location.csv", index=False)
    return data


def bench_data(root: Path, quick: bool) -> dict:
    from src.data.dataset import BiomassDataset
    from src.data.image_cache import build, cache_path, load
    from src.data.schema import load_train
    from src.data.transforms import HalfTransform

    data = _synth(root, 16 if quick else 48)
    images = load_train(data)
    build(data, "train", 512, cache_path(root / "cache", 512, "train"))
    halves = load(cache_path(root / "cache", 512, "train"), images["image_id"].tolist(), 512, False, "")
    tf = HalfTransform(size=512, train=True, strong_aug=True)
    jpeg, cached = BiomassDataset(images, data, tf), BiomassDataset(images, data, tf, halves=halves)
    n = len(images)
    t_jpeg = _timeit(lambda: [jpeg[i] for i in range(n)], 2)
    t_cache = _timeit(lambda: [cached[i] for i in range(n)], 2)
    return {"images": n, "photo": "2000x1000 JPEG", "size": 512, "jpeg_samples_per_s": n / t_jpeg,
            "cache_samples_per_s": n / t_cache, "ratio": t_jpeg / t_cache, "target_ratio": 3.0}  # fmt: skip


def bench_stage1(root: Path, quick: bool) -> dict:
    from src.core.config import TrainConfig
    from src.training.run import run

    data = _synth(root, 16 if quick else 40, 448, 224)
    out = {}
    for name, cache, views in (("live", False, 4), ("cache_4_views", True, 4), ("cache_2_views", True, 2),
                               ("cache_1_view", True, 1)):
        cfg = TrainConfig(data_dir=str(data), fold_csv=str(data / "trainfold_group_location.csv"),
                          output_dir=str(root / name), backbone_size="small", backbone_weights="none", image_size=224,
                          use_depth=False, folds=[0], freeze_epochs=10, stage1_patience=100, stage2_epochs=0,
                          batch_size=8, num_workers=0, device="cpu", feature_cache=cache, feature_cache_views=views,
                          n_folds=3)
        out[name] = _timeit(lambda cfg=cfg: run(cfg))
    return {"model": "ViT-S/16 random, 224 px per half, CPU, 10 Stage 1 epochs", "images": len(list((data / "train").iterdir())),
            "live_s": out["live"], "cache_4_views_s": out["cache_4_views"], "cache_2_views_s": out["cache_2_views"],
            "cache_1_view_s": out["cache_1_view"], "ratio_4_views": out["live"] / out["cache_4_views"],
            "ratio_2_views": out["live"] / out["cache_2_views"], "ratio_1_view": out["live"] / out["cache_1_view"],
            "target_ratio": 5.0}  # fmt: skip


def _fed_batches(data: Path, cache_root: Path, px: int, batch: int, workers: int):
    """The training input pipeline as the trainer builds it: image cache, strong augmentation,
    persistent pinned DataLoader workers; endless."""
    from torch.utils.data import DataLoader

    from src.data.dataset import BiomassDataset, EpochIndices
    from src.data.image_cache import build, cache_path, load
    from src.data.schema import load_train
    from src.data.transforms import HalfTransform

    images = load_train(data)
    path = cache_path(cache_root, px, "train")
    if not path.exists():
        build(data, "train", px, path)
    halves = load(path, images["image_id"].tolist(), px, False, "")
    ds = BiomassDataset(images, data, HalfTransform(size=px, train=True, strong_aug=True), halves=halves)
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(ds, batch_size=batch, sampler=EpochIndices(sampler, len(ds)), num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=True)  # fmt: skip
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _gpu_steps(size: str, px: int, quick: bool, peak: float, data: Path, cache_root: Path,
               dev: torch.device = torch.device("cuda")) -> dict:  # fmt: skip
    """One bf16 Stage 2 train step, timed on an on-device batch and fed by the input pipeline.
    ``dev`` is CUDA in the benchmark; tests run the same code on the CPU with a tiny model."""
    from torch.utils.flop_counter import FlopCounterMode

    from src.core.config import TrainConfig
    from src.losses import build_criterion
    from src.models.biomass import BiomassModel
    from src.training.engine import autocast
    from src.training.optim import build_optimizer

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    stats = {"mean": torch.ones(5), "log_mean": torch.ones(5), "std": torch.ones(5), "log_std": torch.ones(5),
             "max": torch.ones(5), "aux": torch.tensor([0.0, 1, 0, 1])}
    cfg = TrainConfig(backbone_size=size, backbone_weights="none", image_size=px, use_depth=False,
                      gradient_checkpointing=size == "large" and px == 1024)
    model = BiomassModel(cfg, stats).to(dev)
    opt, crit = build_optimizer(model, cfg, True), build_criterion(cfg, stats).to(dev)
    batch = {"image": torch.randint(0, 256, (4, 2, 3, px, px), device=dev, dtype=torch.uint8), "targets": torch.rand(4, 5, device=dev),
             "index": torch.arange(4)}  # fmt: skip

    def step():
        with autocast(dev):
            out = model(batch)
        loss, _ = crit({k: v.float() for k, v in out.items()}, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(2):
        step()
    sync()
    n = 3 if quick else 10
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    dt = (time.perf_counter() - t) / n
    # The same steps fed by the real input pipeline: the GPU is busy for n*dt of the wall time.
    workers = min(8, os.cpu_count() or 1)
    fed = _fed_batches(data, cache_root, px, 4, workers)
    for _ in range(2):  # worker start-up is not steady state
        next(fed)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        b = next(fed)
        batch = {"image": b["image"].to(dev, non_blocking=True), "targets": b["targets"].to(dev, non_blocking=True),
                 "index": b["index"]}  # fmt: skip
        step()
    sync()
    fed_dt = (time.perf_counter() - t) / n
    return {"images_per_s": 4 / dt, "mfu": counter.get_total_flops() / dt / (peak * 1e12),
            "fed_images_per_s": 4 / fed_dt, "gpu_busy": min(1.0, dt / fed_dt), "loader_workers": workers}  # fmt: skip


def bench_gpu(root: Path, quick: bool) -> dict:
    """Stage 2 train steps of real-size backbones (random weights) in bf16, and FLOP utilisation."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    peak = float(os.environ.get("GPU_BF16_PEAK_TFLOPS", "989"))  # H100 SXM dense bf16; H200 is the same
    data = _synth(root, 16 if quick else 48)
    rows = {f"vit_{size}_{px}": _gpu_steps(size, px, quick, peak, data, root / "cache")
            for size in ("base", "large") for px in (512, 1024)}  # fmt: skip
    return {"device": torch.cuda.get_device_name(), "peak_bf16_tflops": peak, "batch": 4, **rows}


def bench_infer(root: Path, quick: bool) -> dict:
    from src.core.config import TrainConfig
    from src.inference.predictor import predict_images
    from src.models.biomass import BiomassModel

    data = _synth(root, 16, 448, 224)
    photos = sorted((data / "train").glob("*.jpg"))[: 4 if quick else 8]
    cfg = TrainConfig(backbone_size="small", backbone_weights="none", image_size=224, use_depth=False)
    model = BiomassModel(cfg).eval()
    models = [(0, cfg, model)]
    out = {}
    for tta in (False, True):
        predict_images(models, photos[:2], tta=tta, device="cpu")  # warm-up
        t = _timeit(lambda tta=tta: predict_images(models, photos, tta=tta, device="cpu"))
        out["tta" if tta else "no_tta"] = len(photos) / t
    return {"model": "ViT-S/16 random, 224 px per half, CPU", "images_per_s_no_tta": out["no_tta"],
            "images_per_s_tta": out["tta"], "tta_cost": out["no_tta"] / out["tta"]}  # fmt: skip


def bench_demo(root: Path, quick: bool) -> dict:
    from tests.project_copy import copy_project

    repo = copy_project(root / "repo")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    config = "config/test.yaml" if quick else "config/demo.yaml"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--configfile", config], cwd=repo, env=env, check=True,
                   capture_output=True)  # fmt: skip
    return {"config": config, "pipeline_wall_s": time.perf_counter() - t, "target_s": 300, "cores": os.cpu_count()}


def bench_quality(root: Path, quick: bool) -> dict:
    """(f) OOF weighted R^2 of the trainer against a linear probe and a minimal fine-tuning loop."""
    from benchmarks import quality

    return quality.main(["--seeds", "1", "--epochs", "8", "--data", "demo"] if quick else [])["verdict"]


def bench_standalone(root: Path, quick: bool) -> dict:
    """(g) the standalone trainer (subprocess, imports included) against a minimal loop, paired."""
    from benchmarks import standalone

    return standalone.run(rounds=1 if quick else 3)


BENCHES = {"data": bench_data, "stage1": bench_stage1, "gpu": bench_gpu, "infer": bench_infer, "demo": bench_demo,
           "quality": bench_quality, "standalone": bench_standalone}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    ap.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run, not numbers to quote)")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in args.only:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"running {name} ...", flush=True)
            result = {**BENCHES[name](Path(tmp), args.quick), "quick": args.quick, "torch_threads": torch.get_num_threads()}
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        rows[name] = result
    print("\n| benchmark | result |\n|---|---|")
    for name, r in rows.items():
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
        print(f"| {name} | {shown} |")


if __name__ == "__main__":
    main()
