"""Linear probe of frozen tiny-backbone features on the demo: random init vs pre-trained (issue #27).

    python -m benchmarks.probe --weights results/demo/pretrained/tiny.safetensors

The demo's photos (config/demo.yaml: 120 train photos, seed 0, 1000x500; made here if missing)
are cut into their two square halves at the demo's image size, as the trainer does; the frozen
backbone gives per half the CLS token and the mean of the patch tokens, averaged over the two
halves. A ridge regression (standardised features, RidgeCV over alphas) predicts each of the five
masses; R^2 is pooled over the out-of-fold predictions of the demo's 5 folds (group_location:
no site visit on both sides). Feature sets: [mean patch, CLS], CLS alone, mean patch alone.
Also the LayerScale gammas (mean |gamma| per block; timm's init is 1e-5) and a check that the
pre-training photos (named in the weights' metadata) share no id or file with the demo's.
JSON in ``benchmarks/results/probe.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "probe.json"
FEATURES = ("mean_patch+cls", "cls", "mean_patch")


def demo_settings() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    return {**cfg["demo_data"], "image_size": cfg["trainer_overrides"]["image_size"], "data_dir": cfg["data_dir"],
            "folds": cfg["folds"]}  # fmt: skip


def demo_data(data_dir: Path, s: dict):
    """The demo's training images (one row each, five masses), their folds and halves."""
    from src.data.folds import make_folds
    from src.data.schema import load_train
    from src.data.synth import generate
    from src.pretrain.data import load_halves

    if not (data_dir / "train.csv").is_file():
        generate(data_dir, s["n_train"], s["n_test"], seed=s["seed"], width=s["width"], height=s["height"])
    images = load_train(data_dir)
    f = s["folds"]
    folds = make_folds(images, f["n_folds"], f["strategy"], f["seed"])["fold"].to_numpy()
    paths = [data_dir / p for p in images["image_path"]]
    return images, folds, paths, load_halves(paths, s["image_size"], targets=False, desc="demo photos")


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """(2N, 3, S, S) uint8 halves -> per photo: CLS and mean patch token, averaged over its halves."""
    from src.data.transforms import MEAN, STD

    backbone.eval()
    x = (images.float() - torch.tensor(MEAN).view(3, 1, 1) * 255) / (torch.tensor(STD).view(3, 1, 1) * 255)
    t = torch.cat([backbone.forward_features(x[i : i + 64]) for i in range(0, len(x), 64)])
    cls, patch = t[:, 0], t[:, backbone.num_prefix_tokens :].mean(1)
    per_photo = lambda a: a.view(-1, 2, a.shape[-1]).mean(1).numpy()  # noqa: E731
    c, p = per_photo(cls), per_photo(patch)
    return {"mean_patch+cls": np.concatenate([p, c], 1), "cls": c, "mean_patch": p}


def probe(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold ridge predictions (N, targets)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    oof = np.zeros_like(y)
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
        oof[va] = model.fit(x[tr], y[tr]).predict(x[va])
    return oof


def gammas(backbone: torch.nn.Module) -> list[dict]:
    return [{"block": i, "gamma_1": float(b.gamma_1.detach().abs().mean()), "gamma_2": float(b.gamma_2.detach().abs().mean())}
            for i, b in enumerate(backbone.blocks)]  # fmt: skip


def score(backbone, halves, images, folds) -> dict:
    from src.core.metrics import per_target_r2, weighted_r2
    from src.core.targets import TARGETS

    y = images[list(TARGETS)].to_numpy(np.float64)
    out = {}
    for name, x in features(backbone, halves.images).items():
        oof = probe(x.astype(np.float64), y, folds)
        out[name] = {"r2": {t: round(v, 4) for t, v in per_target_r2(y, oof).items()},
                     "weighted_r2": round(float(weighted_r2(y, oof)), 4)}  # fmt: skip
    return {"features": out, "gammas": gammas(backbone)}


def pretrain_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["pretrain"]) if "pretrain" in meta else {}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, nargs="+", required=True, help="pre-trained tiny backbone(s), .safetensors")
    p.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2], help="torch seeds of the random inits")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)

    from src.models.backbone import create_backbone
    from src.pretrain.data import check_disjoint, ensure_photos

    s = demo_settings()
    data_dir = REPO / s["data_dir"]
    images, folds, paths, halves = demo_data(data_dir, s)
    runs = {}
    for seed in a.random_seeds:
        torch.manual_seed(seed)
        runs[f"random_seed{seed}"] = score(create_backbone("tiny", "none", s["image_size"]), halves, images, folds)
    for w in a.weights:
        meta = pretrain_meta(w)
        run = score(create_backbone("tiny", str(w), s["image_size"]), halves, images, folds)
        c = meta.get("config", {})
        if c:  # the photos it was trained on, remade if gone: none may be a demo photo
            pre = ensure_photos(meta["photo_dir"], c["photos"], c["seed"], c["width"], c["height"])
            run["disjoint"] = check_disjoint(pre, sorted(data_dir.glob("*/*.jpg")))
        run["pretrain"] = {k: meta[k] for k in ("config", "history", "wall_s", "cpu_s") if k in meta}
        runs[f"pretrained:{w.name}"] = run
    result = {
        "demo": {k: v for k, v in s.items() if k != "data_dir"},
        "images": len(images),
        "runs": runs,
        "r2": "pooled out-of-fold R^2 of a ridge probe (RidgeCV, standardised features), 5 grouped folds",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(runs))
    print(f"wrote {a.out}")


def table(runs: dict) -> str:
    from src.core.targets import TARGETS

    short = [t.replace("Dry_", "").replace("_g", "") for t in TARGETS]
    lines = [
        f"{'run':34s} {'features':15s} " + " ".join(f"{s:>7s}" for s in short) + "  wR2   gammas(b0 g1,g2 | b1 ...)"
    ]
    for name, r in runs.items():
        g = " | ".join(f"{x['gamma_1']:.2g},{x['gamma_2']:.2g}" for x in r["gammas"])
        for f in FEATURES:
            v = r["features"][f]
            lines.append(f"{name[:34]:34s} {f:15s} " + " ".join(f"{v['r2'][t]:7.3f}" for t in TARGETS)
                         + f" {v['weighted_r2']:6.3f}  {g if f == FEATURES[0] else ''}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
