"""Where the fine-tuning trainer loses to a minimal loop on little data (#27 part 4).

    python -m benchmarks.finetune_gap                  # 3 data seeds x 9 variants (about 2 minutes, 2 cores)

The work of ``benchmarks.standalone``: 40 synthetic photos (1200x600), 5 grouped folds, 8 epochs,
64 px halves, batch 8, lr = backbone_lr = 1e-3, --no-strong-aug, no depth, the tiny random
DINOv3-shaped backbone fine-tuned end to end; here with three data seeds (0, 1, 2), since 40
photos make a noisy score. The minimal loop (``standalone.minimal``: one linear layer on both
halves' mean patch tokens, AdamW at constant LR, MSE, no warm-up, no clipping) is scored at its last
epoch. The trainer runs in steps towards it, each adding one change to the previous one, and is
scored twice: at its last epoch (as the minimal loop) and unbiased (each fold at the epoch the
other folds chose), so the table separates what the scoring costs from what training costs.

JSON in ``benchmarks/results/finetune_gap.json``, the table in ``finetune_gap.md``.
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

from benchmarks.standalone import BATCH, EPOCHS, FOLDS, HEIGHT, LR, N_PHOTOS, SIZE, WIDTH

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# Each step keeps the previous ones' settings.
STEPS = (
    ("trainer (d), today's defaults", {}),
    ("+ --no-ema", {"ema": False}),
    ("+ --density-tokens patch", {"density_tokens": "patch"}),
    ("+ MSE (--no-smoothl1)", {"smoothl1": False}),
    ("+ no warm-up (--warmup-epochs 0)", {"warmup_epochs": 0.0}),
    ("+ no clipping (--grad-clip 0)", {"grad_clip": 0.0}),
    ("+ AdamW's default decay (--weight-decay 0.01)", {"weight_decay": 0.01}),
    ("+ heads for all five (--use-compositional --compositional-weight 0)",
     {"use_compositional": True, "compositional_weight": 0.0}),
)


def make_data(root: Path, seed: int) -> Path:
    from src.data.folds import make_folds
    from src.data.schema import load_train
    from src.data.synth import generate

    data = root / f"data{seed}"
    generate(data, n_train=N_PHOTOS, n_test=4, seed=seed, width=WIDTH, height=HEIGHT)
    make_folds(load_train(data), n_folds=FOLDS, strategy="group_location", seed=42).to_csv(
        data / "trainfold_group_location.csv", index=False)
    return data


def _cell(args) -> tuple:
    data, seed, step = args
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"  # the trainer caps its threads (--cpus 0) by it: no oversubscription
    import torch

    torch.set_num_threads(1)
    if step is None:
        from benchmarks.standalone import minimal

        r2 = float(minimal(Path(data)))
        return seed, "minimal loop", {"last": r2, "unbiased": r2}
    from src.core.config import from_dict
    from src.training.run import run

    settings = dict(data_dir=str(data), fold_csv=str(Path(data) / "trainfold_group_location.csv"),
                    backbone_size="tiny", backbone_weights="none", image_size=SIZE, strong_aug=False, use_depth=False,
                    two_stage=False, epochs=EPOCHS, batch_size=BATCH, lr=LR, backbone_lr=LR, num_workers=0,
                    device="cpu", seed=0)  # fmt: skip
    for _, extra in STEPS[:step + 1]:
        settings.update(extra)
    quiet = contextlib.ExitStack()
    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
    with tempfile.TemporaryDirectory() as tmp, quiet:
        scores = run(from_dict({**settings, "output_dir": tmp}))
    return seed, STEPS[step][0], {"last": scores["last"]["weighted_r2"], "unbiased": scores["weighted_r2"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.finetune_gap", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data seeds")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        data = {s: make_data(Path(tmp), s) for s in args.seeds}
        cells = [(data[s], s, step) for s in args.seeds for step in [None, *range(len(STEPS))]]
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(tqdm(pool.map(_cell, cells), total=len(cells), desc="gap runs"))
    rows: dict = {}
    for seed, name, r in results:
        rows.setdefault(name, {}).setdefault("last", {})[seed] = r["last"]
        rows[name].setdefault("unbiased", {})[seed] = r["unbiased"]
    seeds = args.seeds
    lines = ["| run | " + " | ".join(f"data seed {s}: last (unbiased)" for s in seeds) + " | mean last | mean unbiased |",
             "|---|" + "--:|" * (len(seeds) + 2)]  # fmt: skip
    for name, r in rows.items():
        cells = [f"{r['last'][s]:.3f} ({r['unbiased'][s]:.3f})" for s in seeds]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(list(r['last'].values())):.3f} | "
                     f"{np.mean(list(r['unbiased'].values())):.3f} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "finetune_gap.json").write_text(json.dumps({"rows": rows, "seeds": seeds, "epochs": EPOCHS}, indent=2) + "\n")
    (OUT / "finetune_gap.md").write_text(f"# {__doc__.splitlines()[0]}\n\n{text}\n")
    return rows


if __name__ == "__main__":
    main()
