"""The final submission: the chosen models' test predictions blended, then post-processed.

    python -m src.final --results-dir results --data-dir data/raw [--round2] [--refit [--no-refit-evidence]]

What goes in is written down as ``<results>/final/recipe.json``: the members (a model folder
relative to the results dir, holding ``fold<k>/`` or a refit's ``full/``, and its weight), the
post-processing parameters (``ensemble/postprocess.json``) and the prediction settings. The
pipeline combines the members' ``test_pred.parquet`` files; the Kaggle package
(``src.kaggle_package``) runs the same recipe from the checkpoints, through the same
``combine``. Also written: ``final/test_pred.parquet``, ``<results>/submission.csv`` and
``final/steps.json``: OOF and holdout weighted R^2 with and without each step after round 1.

Refits on evidence (``--refit``, config ``refit: {use: true, evidence: true}``): a
model's test predictions come from its full-data refit only where its refit check
(``refit_check/<model>/oof.parquet``: the refit procedure run per fold, scored on the fold's
validation images) beats its fold models' honest OOF (``models/<model>/oof.parquet``), see
``refit_decision``; ``final/refit_evidence.json`` holds the scores and the decision per model. Round
2's refit of a model (``round2/refit/<model>``) follows the round-1 decision of the same model: no
refit check runs on round 2. With ``--no-refit-evidence`` the refits are used as configured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.io_utils import read_result, write_csv, write_json, write_parquet
from ..core.metrics import weighted_r2
from ..core.targets import TARGETS
from ..inference.predictor import submission
from .oof import PRED, TRUE


def combine(recipe: dict, preds: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """image_id + the five targets: the members' weighted sum (in the recipe's order), then the
    post-processing. ``preds``: each member's predictions by its model_dir, any row order."""
    from .postprocess import apply

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
    from ..inference.predictor import load_fold_models, predict_split

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


def _members(weights: dict[str, float], folder, scale: float = 1.0) -> list[dict]:
    """``folder``: the models' folder, or a function of the model name giving it."""
    where = folder if callable(folder) else lambda m: folder
    return [{"model_dir": f"{where(m)}/{m}", "weight": scale * w} for m, w in weights.items() if scale * w > 0]


REFIT_CHECK_RULES = "the refit_check and merge_oof_refit_check rules (config refit: {use: true, evidence: true})"
NO_EVIDENCE = "configuration (refit.evidence: false)"


def refit_decision(check: pd.DataFrame, folds: pd.DataFrame) -> dict:
    """Whether a model's full-data refit replaces its fold models for the test predictions, from two
    OOF frames of the same images: the refit check's (``check``: per fold, the refit procedure on
    the fold's training images, scored on its validation images) and the fold models' honest OOF
    (``folds``). Used only if the check's pooled weighted R^2 beats the fold models' AND the mean of
    the per-fold differences (check - fold models, by ``check``'s fold column) exceeds its standard
    error across folds (std with ddof=1 / sqrt(n)); with fewer than two folds there is no standard
    error and the refit is not used."""
    a = check.drop_duplicates("image_id").set_index("image_id").sort_index()
    b = folds.drop_duplicates("image_id").set_index("image_id")
    if len(a) != len(check) or len(b) != len(folds) or set(a.index) != set(b.index):
        raise UserError(f"the refit check ({len(check)} rows) and the fold models' OOF ({len(folds)} rows) score other "
                        "images; rerun both on the same fold CSV and folds")  # fmt: skip
    b = b.loc[a.index]
    if not np.allclose(a[TRUE].to_numpy(np.float64), b[TRUE].to_numpy(np.float64)):
        raise UserError("the refit check and the fold models' OOF hold other true masses; rerun both on the same data")
    r2 = lambda f: float(weighted_r2(f[TRUE].to_numpy(), f[PRED].to_numpy()))  # noqa: E731
    pooled_check, pooled_folds = r2(a), r2(b)
    diffs = {int(k): r2(rows) - r2(b.loc[rows.index]) for k, rows in a.groupby("fold")}
    d = np.array(list(diffs.values()), dtype=np.float64)
    mean = float(d.mean()) if len(d) else float("nan")
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) >= 2 else float("nan")
    beats = bool(pooled_check > pooled_folds)
    clear = bool(len(d) >= 2 and np.isfinite(se) and mean > se)
    gain = f"per-fold gain {mean:+.4f}, standard error {se:.4f} over {len(d)} folds"
    if not beats:
        why = f"refit check pooled {pooled_check:.4f} does not beat the fold models' {pooled_folds:.4f} ({gain})"
    elif not clear:
        why = (f"refit check pooled {pooled_check:.4f} beats the fold models' {pooled_folds:.4f}, but the {gain} is "
               + ("no evidence (fewer than 2 folds)" if len(d) < 2 else "within noise"))  # fmt: skip
    else:
        why = f"refit check pooled {pooled_check:.4f} beats the fold models' {pooled_folds:.4f}, {gain}"
    num = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731  (JSON has no NaN)
    return {"refit_check_weighted_r2": num(pooled_check), "folds_weighted_r2": num(pooled_folds),
            "fold_differences": {str(k): num(v) for k, v in diffs.items()}, "mean_difference": num(mean),
            "standard_error": num(se), "n_folds": len(d), "n_images": len(a), "used": beats and clear, "why": why}  # fmt: skip


def refit_evidence(results: str | Path, models: list[str]) -> dict[str, dict]:
    """``refit_decision`` of each model from the files under ``results``; a missing file: a
    UserError naming it and the rule that makes it."""
    results, out = Path(results), {}
    for m in models:
        check = read_result(results / "refit_check" / m / "oof.parquet",
                            f"it is made by {REFIT_CHECK_RULES}; run them, or set refit.evidence: false to use the "
                            "refits without evidence")  # fmt: skip
        folds = read_result(results / "models" / m / "oof.parquet", "it is made by the merge_oof rule")
        out[m] = refit_decision(check, folds)
    return out


def _holdout(frame: pd.DataFrame, data_dir: Path) -> float | None:
    """Weighted R^2 on the demo's hidden test truth (None on real data, which has none)."""
    from .score import holdout_scores

    path = data_dir / "test_solution.csv"
    return holdout_scores(frame, path)["weighted_r2"] if path.exists() else None


def build(results: str | Path, data_dir: str | Path, round2: bool = False, refit: bool = False,
          predict: dict | None = None, refit_evidence_required: bool = True) -> dict:
    """Write the recipe, the final predictions and submission, and the with/without table.
    ``refit``: test predictions from the full-data refits; with ``refit_evidence_required`` only
    the models whose refit check says so (``refit_decision``; ``final/refit_evidence.json``), and
    round 2's refit of a model follows that model's round-1 decision."""
    from .postprocess import apply_oof

    results, data_dir = Path(results), Path(data_dir)
    ens = read_result(results / "ensemble/weights.json", "run the ensemble rule first")["weights"]
    post = read_result(results / "ensemble/postprocess.json", "run python -m src.postprocess first")
    oof1 = read_result(results / "ensemble/oof.parquet", "run the ensemble rule first")
    score = lambda oof: weighted_r2(oof[TRUE].to_numpy(), oof[PRED].to_numpy())  # noqa: E731
    alpha, oof, r2 = 0.0, oof1, {}
    if round2:
        blend = read_result(results / "round2/blend.json", "run the round-2 blend rule first")
        alpha, oof, r2 = blend["alpha"], read_result(results / "round2/blend/oof.parquet", "run the round-2 blend rule first"), blend["weights"]
    models = list(dict.fromkeys([*ens, *r2]))
    evidence = refit_evidence(results, models) if refit and refit_evidence_required else None
    use = {m: refit and (evidence is None or evidence[m]["used"]) for m in models}  # per model: its refit

    def recipe_of(refits: bool, with_round2: bool, postprocess: dict | None) -> dict:
        a = alpha if with_round2 else 0.0
        members = _members(ens, lambda m: "refit" if refits and use[m] else "models", 1 - a)
        members += _members(r2, lambda m: "round2/refit" if refits and use[m] else "round2/models", a) if a > 0 else []
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
        refits = [m for m in models if use[m]]
        on = "evidence" if evidence is not None else NO_EVIDENCE
        steps.append({"step": f"+ full-data refits for the test predictions ({', '.join(refits) or 'no model'}; "
                              f"on {on}; round 2 as round 1)", "used": bool(refits),
                      "refit_models": refits, "evidence": on,
                      "oof_without": None, "oof_with": None,  # a refit has no held-out images: no OOF
                      "holdout_without": holdout_of(folds_r2), "holdout_with": holdout_of(raw)})  # fmt: skip
    kept = [s["name"] for s in post["steps"] if s["kept"]]
    steps.append({"step": f"+ post-processing ({', '.join(kept) or 'no step kept'})", "used": bool(kept),
                  "oof_without": score(oof), "oof_with": score(apply_oof(oof, post)),
                  # oof_nested_with: the selection score (it chose the steps: optimistic); oof_honest_with: the
                  # outer CV of the whole fit, selection included (None from a postprocess.json that predates it)
                  "oof_nested_without": post["oof_weighted_r2_before"], "oof_nested_with": post["oof_weighted_r2_after"],
                  "oof_honest_with": post.get("oof_weighted_r2_honest"),
                  "holdout_without": holdout_of(raw), "holdout_with": holdout_of(recipe)})  # fmt: skip

    final = combine(recipe, preds)
    sub = submission(final, data_dir)  # checked against sample_submission.csv before anything is written
    write_json(results / "final/recipe.json", recipe)
    write_json(results / "final/refit_evidence.json", {
        "refit": refit, "evidence": "evidence" if evidence is not None else (NO_EVIDENCE if refit else None),
        "rule": "refit used only if the refit check's pooled OOF weighted R^2 beats the fold models' and the mean "
                "per-fold difference exceeds its standard error (std ddof=1 / sqrt(n folds)); round 2 follows round 1",
        "models": evidence if evidence is not None else {m: {"used": use[m], "why": NO_EVIDENCE if refit else "refit off"}
                                                         for m in models}})  # fmt: skip
    write_parquet(results / "final/test_pred.parquet", final)
    write_json(results / "final/steps.json", {"steps": steps, "holdout_weighted_r2": _holdout(final, data_dir)})
    write_csv(results / "submission.csv", sub)
    for s in steps:
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()))
    print(f"wrote {results / 'submission.csv'} ({len(recipe['members'])} members)")
    return recipe
