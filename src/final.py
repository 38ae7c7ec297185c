"""CLI: the final submission: the chosen models' test predictions blended, then post-processed.

    python -m src.final --results-dir results --data-dir data/raw [--round2] [--refit]

What goes in is written down as ``<results>/final/recipe.json``: the members (a model folder
relative to the results dir, holding ``fold<k>/`` or a refit's ``full/``, and its weight), the
post-processing parameters (``ensemble/postprocess.json``) and the prediction settings. The
pipeline combines the members' ``test_pred.parquet`` files; the Kaggle package
(``src.kaggle_package``) runs the same recipe from the checkpoints, through the same
``combine``. Also written: ``final/test_pred.parquet``, ``<results>/submission.csv`` and
``final/steps.json``: OOF and holdout weighted R^2 with and without each step after round 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import Parser, UserError, cli_main
from src.inference import submission
from src.io_utils import read_result, write_csv, write_json, write_parquet
from src.metrics import weighted_r2
from src.oof import PRED, TRUE
from src.targets import TARGETS


def combine(recipe: dict, preds: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """image_id + the five targets: the members' weighted sum (in the recipe's order), then the
    post-processing. ``preds``: each member's predictions by its model_dir, any row order."""
    from src.postprocess import apply

    members = recipe["members"]
    first = preds[members[0]["model_dir"]].sort_values("image_id", kind="stable").reset_index(drop=True)
    total = np.zeros((len(first), len(TARGETS)))
    for m in members:
        p = preds[m["model_dir"]].sort_values("image_id", kind="stable").reset_index(drop=True)
        if p["image_id"].tolist() != first["image_id"].tolist():
            raise UserError(f"{m['model_dir']}: predicts other images than {members[0]['model_dir']}; predict both "
                            "on the same test.csv")  # fmt: skip
        total += m["weight"] * p[list(TARGETS)].to_numpy(np.float64)
    out = first[["image_id"]].copy()
    out[list(TARGETS)] = total
    return apply(out, recipe["postprocess"]) if recipe.get("postprocess") else out


def predict_members(recipe: dict, root: str | Path, data_dir: str | Path, depth_cache_dir: str | None = None,
                    device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Each member's test predictions from its checkpoints under ``root`` (the results dir or a
    Kaggle package), as the pipeline's predict rules make them."""
    from src.inference import load_fold_models, predict_split

    kw = recipe.get("predict", {})
    out = {}
    for m in recipe["members"]:
        models = load_fold_models(Path(root) / m["model_dir"], device)
        out[m["model_dir"]] = predict_split(models, data_dir, "test", depth_cache_dir=depth_cache_dir, device=device,
                                            tta=kw.get("tta", True), tta_scales=kw.get("tta_scales", [1.0]))
    return out


def submission_of(recipe: dict, preds: dict[str, pd.DataFrame], data_dir: str | Path) -> pd.DataFrame:
    return submission(combine(recipe, preds), data_dir)


# --- the pipeline's side: which steps, their scores --------------------------------------------------------------


def _members(weights: dict[str, float], folder: str, scale: float = 1.0) -> list[dict]:
    return [{"model_dir": f"{folder}/{m}", "weight": scale * w} for m, w in weights.items() if scale * w > 0]


def _holdout(frame: pd.DataFrame, data_dir: Path) -> float | None:
    """Weighted R^2 on the demo's hidden test truth (None on real data, which has none)."""
    path = data_dir / "test_solution.csv"
    if not path.exists():
        return None
    from src.data.schema import read_csv
    from src.score import long_to_wide

    y = long_to_wide(read_csv(path, ("sample_id", "target"), "the solution file holds the true values"), path)
    p = frame.set_index("image_id").loc[y.index, list(TARGETS)]
    return weighted_r2(y.to_numpy(), p.to_numpy())


def build(results: str | Path, data_dir: str | Path, round2: bool = False, refit: bool = False,
          predict: dict | None = None) -> dict:
    """Write the recipe, the final predictions and submission, and the with/without table."""
    from src.postprocess import apply_oof

    results, data_dir = Path(results), Path(data_dir)
    ens = read_result(results / "ensemble/weights.json", "run the ensemble rule first")["weights"]
    post = read_result(results / "ensemble/postprocess.json", "run python -m src.postprocess first")
    oof1 = read_result(results / "ensemble/oof.parquet", "run the ensemble rule first")
    score = lambda oof: weighted_r2(oof[TRUE].to_numpy(), oof[PRED].to_numpy())  # noqa: E731
    alpha, oof, r2 = 0.0, oof1, {}
    if round2:
        blend = read_result(results / "round2/blend.json", "run the round-2 blend rule first")
        alpha, oof, r2 = blend["alpha"], read_result(results / "round2/blend/oof.parquet", "run the round-2 blend rule first"), blend["weights"]

    def recipe_of(refits: bool, with_round2: bool, postprocess: dict | None) -> dict:
        a = alpha if with_round2 else 0.0
        members = _members(ens, "refit" if refits else "models", 1 - a)
        members += _members(r2, "round2/refit" if refits else "round2/models", a) if a > 0 else []
        return {"members": members, "postprocess": postprocess, "predict": predict or {"tta": True, "tta_scales": [1.0]}}

    preds: dict[str, pd.DataFrame] = {}

    def holdout_of(rec: dict) -> float | None:
        for m in rec["members"]:
            if m["model_dir"] not in preds:
                preds[m["model_dir"]] = read_result(results / m["model_dir"] / "test_pred.parquet",
                                                    "predict it first (python -m src.predict --model-dir ...)")
        return _holdout(combine(rec, preds), data_dir)

    folds_r1, folds_r2 = recipe_of(False, False, None), recipe_of(False, True, None)
    raw = recipe_of(refit, True, None)
    recipe = {**raw, "postprocess": post}
    steps = [{"step": "round 1 ensemble (the folds' mean per model)", "used": True, "oof_weighted_r2": score(oof1),
              "holdout_weighted_r2": holdout_of(folds_r1)}]  # fmt: skip
    if round2:
        steps.append({"step": f"+ pseudo-label round (blend weight {alpha:.2f} on round 2)", "used": alpha > 0,
                      "oof_without": score(oof1), "oof_with": score(oof),
                      "holdout_without": holdout_of(folds_r1), "holdout_with": holdout_of(folds_r2)})  # fmt: skip
    if refit:
        steps.append({"step": "+ full-data refits for the test predictions (each round's models)", "used": True,
                      "oof_without": None, "oof_with": None,  # a refit has no held-out images: no OOF
                      "holdout_without": holdout_of(folds_r2), "holdout_with": holdout_of(raw)})  # fmt: skip
    kept = [s["name"] for s in post["steps"] if s["kept"]]
    steps.append({"step": f"+ post-processing ({', '.join(kept) or 'no step kept'})", "used": bool(kept),
                  "oof_without": score(oof), "oof_with": score(apply_oof(oof, post)),
                  "oof_nested_without": post["oof_weighted_r2_before"], "oof_nested_with": post["oof_weighted_r2_after"],
                  "holdout_without": holdout_of(raw), "holdout_with": holdout_of(recipe)})  # fmt: skip

    final = combine(recipe, preds)
    sub = submission(final, data_dir)  # checked against sample_submission.csv before anything is written
    write_json(results / "final/recipe.json", recipe)
    write_parquet(results / "final/test_pred.parquet", final)
    write_json(results / "final/steps.json", {"steps": steps, "holdout_weighted_r2": _holdout(final, data_dir)})
    write_csv(results / "submission.csv", sub)
    for s in steps:
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()))
    print(f"wrote {results / 'submission.csv'} ({len(recipe['members'])} members)")
    return recipe


@cli_main
def main(argv=None) -> None:
    ap = Parser(prog="python -m src.final", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results-dir", required=True)
    ap.add_argument("--data-dir", required=True, help="Kaggle-layout folder with test.csv")
    ap.add_argument("--round2", action="store_true", help="blend in the pseudo-label round (round2/blend.json)")
    ap.add_argument("--refit", action="store_true", help="test predictions from the full-data refits (refit/<model>, "
                    "round2/refit/<model>) instead of the folds' mean")
    ap.add_argument("--no-tta", dest="tta", action="store_false", help="the recipe's prediction settings (as the predict rule)")
    ap.add_argument("--tta-scales", nargs="+", type=float, default=[1.0])
    args = ap.parse_args(argv)
    build(args.results_dir, args.data_dir, args.round2, args.refit, {"tta": args.tta, "tta_scales": args.tta_scales})


if __name__ == "__main__":
    main()
