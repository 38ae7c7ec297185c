"""Which parts of the label-free pre-training objective help the demo's linear probe (issue #27)?

    python -m benchmarks.pretrain_ablation [--only NAME ...]   # ~40 s CPU per variant

Each variant pre-trains the tiny backbone (``src.pretrain``) on the same disjoint synthetic photos
and is scored by ``benchmarks.probe`` (pooled OOF ridge R^2 on the demo's 5 grouped folds).
JSON in ``benchmarks/results/pretrain_ablation.json`` (merged into an existing file by name).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.probe import REPO, demo_data, demo_settings, score

OUT = REPO / "benchmarks" / "results" / "pretrain_ablation.json"
# The first round's settings; each variant changes some of them (``PretrainConfig``'s defaults
# are the winner, "dense_sub4+cls_nojitter_1200photos_60ep").
BASE = {"photos": 400, "sub": 2, "cls_weight": 1.0, "brightness": 0.15, "epochs": 60}
# name -> overrides of BASE
VARIANTS = {
    "dense_sub1_only": {"sub": 1, "cls_weight": 0.0},
    "dense_sub2_only": {"sub": 2, "cls_weight": 0.0},
    "dense_sub1+cls": {"sub": 1},
    "dense_sub2+cls": {},
    "dense_sub4+cls": {"sub": 4},
    "dense_sub2+cls_x0.3": {"cls_weight": 0.3},
    "dense_sub2+cls_x3": {"cls_weight": 3.0},
    "dense_sub2+cls_nojitter": {"brightness": 0.0},
    "dense_sub2+cls_120ep": {"epochs": 120},
    "dense_sub4+cls_x0.3": {"sub": 4, "cls_weight": 0.3},
    "dense_sub2+cls_1200photos_20ep": {"photos": 1200, "epochs": 20},
    "dense_sub2+cls_nojitter_1200photos_60ep": {"photos": 1200, "brightness": 0.0, "epochs": 60},
    "dense_sub4+cls_nojitter_1200photos_60ep": {"photos": 1200, "sub": 4, "brightness": 0.0, "epochs": 60},
    "dense_sub4+cls_x0.3_nojitter_1200photos_60ep": {
        "photos": 1200,
        "sub": 4,
        "cls_weight": 0.3,
        "brightness": 0.0,
        "epochs": 60,
    },
    "dense_sub4_only_nojitter_1200photos_60ep": {
        "photos": 1200,
        "sub": 4,
        "cls_weight": 0.0,
        "brightness": 0.0,
        "epochs": 60,
    },
}


def main(argv: list[str] | None = None) -> None:
    from src.pretrain.data import ensure_photos, load_halves, photo_dir
    from src.pretrain.train import PretrainConfig, train

    p = argparse.ArgumentParser(prog="python -m benchmarks.pretrain_ablation")
    p.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    s = demo_settings()
    images, folds, _, demo = demo_data(REPO / s["data_dir"], s)
    results = json.loads(a.out.read_text()) if a.out.is_file() else {}
    cache: dict = {}
    for name in a.only:
        cfg = PretrainConfig(out="", **{**BASE, **VARIANTS[name]})
        key = (cfg.photos, cfg.sub)
        if key not in cache:
            paths = ensure_photos(photo_dir(REPO / cfg.photo_root, cfg.photos, cfg.seed, cfg.width, cfg.height),
                                  cfg.photos, cfg.seed, cfg.width, cfg.height)  # fmt: skip
            cache[key] = load_halves(paths, cfg.image_size, cfg.sub)
        t0, c0 = time.monotonic(), time.process_time()
        model, history = train(cfg, cache[key])
        r = score(model.backbone, demo, images, folds)
        r.update(settings={**BASE, **VARIANTS[name]}, last_epoch=history[-1], train_wall_s=round(time.monotonic() - t0, 1),
                 train_cpu_s=round(time.process_time() - c0, 1))  # fmt: skip
        results[name] = r
        f = r["features"]
        print(f"{name:34s} Total R2 [patch+cls] {f['mean_patch+cls']['r2']['Dry_Total_g']:.3f}  cls "
              f"{f['cls']['r2']['Dry_Total_g']:.3f}  patch {f['mean_patch']['r2']['Dry_Total_g']:.3f}  "
              f"wR2 {f['mean_patch+cls']['weighted_r2']:.3f}  ({r['train_wall_s']} s)", flush=True)  # fmt: skip
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
