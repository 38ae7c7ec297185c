"""Pseudo-labels for round 2, one CSV per fold, and the blend of round 1 with round 2.

    python -m src.pseudo_labels make --results-dir results --models M1 M2 --data-dir data --n-folds 5
    python -m src.pseudo_labels blend --results-dir results

``make``: fold k's test images are labelled by the round-1 ensemble of fold k's models only
(``models/<m>/test_pred_folds.parquet``), its method (mean or NNLS) and weights chosen as the ensemble
chooses them (``src.rounds.ensemble.choose_blend``) on the models' OOF rows of the other folds only
(``models/<m>/oof.parquet``). Neither those models nor that choice saw fold k's validation images, so
round 2's fold k learns nothing about them through the labels and its OOF score stays honest. Kept: the
``--keep-fraction`` of images whose models agree best (lowest relative spread of their Total; with one
model, every image). Writes ``round2/pseudo/fold<k>.csv`` (the trainer's --pseudo-labels),
``round2/pseudo/all.csv`` (for the full-data refits, which have no OOF: labelled by every fold's models
with the full-data choice of ``ensemble/weights.json``) and ``summary.json`` (per fold: the method and
weights used).

``blend``: (1 - a) * round 1 + a * round 2, ``a`` on a grid, fitted on the OOF predictions, its
OOF score by nested CV over the folds (``a`` fitted on the other folds). Round 2 is kept (``a`` > 0)
only when that nested score beats round 1's OOF score; otherwise ``a`` = 0 and the OOF is round 1's.
Writes ``round2/blend.json`` and ``round2/blend/oof.parquet``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.io_utils import read_result, write_csv, write_json, write_parquet
from ..core.metrics import weighted_r2
from ..core.targets import TARGETS
from ..data.schema import load_test
from .ensemble import _load, choose_blend
from .oof import PRED, TRUE

ALPHAS = np.round(np.linspace(0, 1, 11), 2)
TOTAL = TARGETS.index("Dry_Total_g")


def fold_choices(results: Path, models: list[str], n_folds: int) -> dict[str, dict]:
    """Per fold k: the round-1 ensemble's method and weights chosen on the models' OOF rows of the
    other folds only (rows aligned by image_id), as ``src.rounds.ensemble.blend`` chooses on all of them."""
    oofs = _load(results, models, "oof.parquet", "run the model's merge rule (python -m src.ensemble merge-oof --model-dir ...)")
    folds = oofs[0]["fold"].to_numpy()
    for m, f in zip(models, oofs):
        if not np.array_equal(f["fold"].to_numpy(), folds):
            raise UserError(f"{results}/models/{m}/oof.parquet: other folds than {models[0]}'s; retrain on the same folds")
    if sorted(set(folds.tolist())) != list(range(n_folds)):
        raise UserError(f"{results}/models/{models[0]}/oof.parquet: its folds {sorted(set(folds.tolist()))} are not "
                        f"0..{n_folds - 1}; merge every fold's OOF first (or pass the right --n-folds)")  # fmt: skip
    y = oofs[0][TRUE].to_numpy(np.float64)
    p_oof = np.stack([f[PRED].to_numpy(np.float64) for f in oofs])
    out = {}
    for k in range(n_folds):
        rows = folds != k
        method, w, scores, _ = choose_blend(p_oof[:, rows], y[rows], folds[rows])
        out[str(k)] = {"method": method, "weights": dict(zip(models, w.tolist())), "oof_weighted_r2": scores,
                       "chosen_on_folds": sorted(set(folds[rows].tolist()))}  # fmt: skip
    return out


def make(results: str | Path, models: list[str], data_dir: str | Path, n_folds: int, keep_fraction: float) -> dict:
    results = Path(results)
    full = read_result(results / "ensemble/weights.json", "run the ensemble rule first")
    # Fold k's labels: a method and weights chosen without fold k. The refits': the full-data choice.
    choices = fold_choices(results, models, n_folds)
    choices["all"] = {"method": full.get("method", "?"), "weights": {m: full["weights"][m] for m in models},
                      "chosen_on_folds": "all (ensemble/weights.json)"}  # fmt: skip
    paths = load_test(data_dir).set_index("image_id")["image_path"]
    per = {m: read_result(results / f"models/{m}/test_pred_folds.parquet",
                    f"run python -m src.predict --model-dir {results}/models/{m} --per-fold ...") for m in models}  # fmt: skip
    summary = {"keep_fraction": keep_fraction, "folds": {}}
    stacks = {}
    for k in range(n_folds):
        frames = []
        for m in models:
            f = per[m][per[m]["fold"] == k].set_index("image_id").loc[paths.index, list(TARGETS)]
            if f.isna().any().any():
                raise UserError(f"{results}/models/{m}/test_pred_folds.parquet: no fold {k} predictions for every "
                                "test image; predict it again with --per-fold")  # fmt: skip
            frames.append(f.to_numpy(np.float64))
        stacks[str(k)] = np.stack(frames)  # (models, images, 5)
    # The refits have no OOF to protect: theirs come from every fold's models, as the ensemble predicts.
    stacks["all"] = np.mean(list(stacks.values()), axis=0)
    for k, stack in stacks.items():
        w = np.array([choices[k]["weights"][m] for m in models])
        label = np.tensordot(w, stack, axes=1)
        spread = stack[:, :, TOTAL].std(0) / (stack[:, :, TOTAL].mean(0) + 1.0)  # +1 g: a near-empty quadrat
        keep = max(1, int(round(keep_fraction * len(label)))) if len(models) > 1 else len(label)
        chosen = np.sort(np.argsort(spread, kind="stable")[:keep])
        out = pd.DataFrame({"image_id": paths.index[chosen], "image_path": paths.to_numpy()[chosen]})
        out[list(TARGETS)] = label[chosen]
        write_csv(results / f"round2/pseudo/{'all' if k == 'all' else f'fold{k}'}.csv", out, float_format="%.6f")
        summary["folds"][k] = {"kept": int(keep), "of": len(label), "max_spread": float(spread[chosen].max()),
                               **choices[k]}  # fmt: skip
        mix = ", ".join(f"{m} {v:.3f}" for m, v in choices[k]["weights"].items())
        print(f"{'refits' if k == 'all' else f'fold {k}'}: {keep} of {len(label)} test images pseudo-labelled "
              f"(relative Total spread <= {spread[chosen].max():.3f}), by {choices[k]['method']} ({mix}) chosen on "
              f"folds {choices[k]['chosen_on_folds']}")
    write_json(results / "round2/pseudo/summary.json", summary)
    return summary


def blend(results: str | Path) -> dict:
    results = Path(results)
    one = read_result(results / "ensemble/oof.parquet", "run the ensemble rule first")
    two = read_result(results / "round2/ensemble/oof.parquet", "run the round-2 ensemble rule first")
    one, two = (f.sort_values("image_id", kind="stable").reset_index(drop=True) for f in (one, two))
    if one["image_id"].tolist() != two["image_id"].tolist() or not one["fold"].equals(two["fold"]):
        raise UserError(f"{results}/round2: its OOF images or folds differ from round 1's; retrain round 2 on the same folds")
    y, p1, p2, folds = one[TRUE].to_numpy(), one[PRED].to_numpy(), two[PRED].to_numpy(), one["fold"].to_numpy()
    mix = lambda a, rows=slice(None): (1 - a) * p1[rows] + a * p2[rows]  # noqa: E731
    best = lambda rows: max(ALPHAS, key=lambda a: weighted_r2(y[rows], mix(a, rows)))  # noqa: E731
    nested = np.zeros_like(y)
    for k in np.unique(folds):
        held = folds == k
        nested[held] = mix(best(~held), held)
    fitted = float(best(slice(None)))
    r1, r_nested = weighted_r2(y, p1), weighted_r2(y, nested)
    # The fitted a is chosen on every fold's OOF: only its nested score (a chosen without the fold it
    # is scored on) may decide whether round 2 is worth its training and its submission members.
    kept = bool(fitted > 0 and r_nested > r1)
    alpha = fitted if kept else 0.0
    if fitted == 0:
        why = "the blend weight fitted on all OOF is 0: round 2 adds nothing to round 1"
    else:
        why = (f"the blend's nested-CV OOF weighted_r2 {r_nested:.4f} {'beats' if kept else 'does not beat'} round 1's "
               f"{r1:.4f} (blend weight fitted on all OOF: {fitted:.2f})")
    oof = one[["image_id", "fold", "State", *TRUE]].copy()
    oof[PRED] = mix(alpha)
    out = {"alpha": alpha, "alpha_fitted": fitted, "kept": kept, "why": why,
           "weights": read_result(results / "round2/ensemble/weights.json", "run the round-2 ensemble")["weights"],
           "oof_weighted_r2": {"round1": r1, "round2": weighted_r2(y, p2), "blend": weighted_r2(y, mix(fitted)),
                               "blend_nested": r_nested, "used": weighted_r2(y, mix(alpha))}}  # fmt: skip
    write_parquet(results / "round2/blend/oof.parquet", oof)
    write_json(results / "round2/blend.json", out)
    s = out["oof_weighted_r2"]
    print(f"round blend: a = {alpha:.2f} on round 2 (fitted {fitted:.2f}) | OOF weighted_r2 round 1 {s['round1']:.4f}, "
          f"round 2 {s['round2']:.4f}, blend {s['blend']:.4f} (nested {s['blend_nested']:.4f})")
    print(f"round 2 {'kept' if kept else 'NOT kept'}: {why}")
    return out
