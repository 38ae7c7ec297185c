"""Plots and the model table for a results folder (which phase of the guide won).

    python -m src.report --results-dir results --models M1 M2 --out-dir results/report

Reads ``<results>/models/<model>/{oof.parquet, oof_metrics.json, fold*/history.csv}`` and, when
the ensemble ran, ``<results>/ensemble/{oof.parquet, weights.json, holdout.json}`` and
``<results>/final/steps.json`` (the steps after round 1, with and without each); writes
``pred_vs_true.png``, ``r2_by_state.png``, ``learning_curves.png``, ``model_table.csv`` and
``model_table.md`` into the output folder. The table's scores are recomputed from the OOF
parquet files (the source of truth), so they always match the plots. Models are ranked by their
unbiased score (``oof.parquet``: each fold at an epoch chosen on the other folds, ``src.rounds.oof``);
the optimistic one (each fold's own best epoch, ``oof_selected.parquet``) and the last epoch's
(``oof_last.parquet``) stand beside it, labelled.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import UserError
from ..core.io_utils import atomic_path, write_csv, write_text
from ..core.metrics import per_group_r2, r2, summary, weighted_r2
from ..core.targets import SHORT, TARGETS
from ..rounds.oof import KINDS, LAST, PRED, SELECTED, TRUE

ENSEMBLE = "ensemble"
HOLDOUT = "holdout (ensemble)"
# weighted_r2 is the unbiased score; the other two come from each fold's own best and last epochs.
METRIC_COLUMNS = ["weighted_r2", "weighted_r2_selected", "weighted_r2_last", "weighted_r2_log",
                  *[f"r2_{SHORT[t]}" for t in TARGETS]]  # fmt: skip
HEADERS = {"weighted_r2": "weighted_r2 (unbiased)", "weighted_r2_selected": "selected (optimistic)",
           "weighted_r2_last": "last epoch", "holdout": "holdout (test truth)"}  # fmt: skip
# holdout: the model's test predictions (the mean of its folds) on the demo's hidden truth, which chose nothing.
TABLE_COLUMNS = ["model", *METRIC_COLUMNS, "holdout", "score", "folds", "best"]
SCORE_NOTE = ("weighted_r2 (unbiased): each fold scored at the epoch chosen on the OTHER folds' validation images "
              "(models ranked by it); selected (optimistic): each fold at its own best epoch, chosen on the images "
              "that score it; last epoch: each fold's last. Per-target and log columns are of the unbiased OOF.")
OUTPUTS = ("pred_vs_true.png", "r2_by_state.png", "learning_curves.png", "model_table.csv", "model_table.md",
           "model_table.html")
DPI = 110


# ----------------------------------------------------------------------------------- loading


def _how_to_make(results: Path, model: str) -> str:
    out = results / "models" / model
    return (f"train it first: snakemake {out}/oof.parquet (rules train + merge_oof), or "
            f"python -m src.dinov3_train --config config/models/{model}.yaml ... --output-dir {out} "
            f"then python -m src.ensemble merge-oof --model-dir {out} --n-folds K")  # fmt: skip


def read_oof(path: str | Path, hint: str = "") -> pd.DataFrame:
    """An OOF parquet with ``image_id, fold, State, true_<T>, pred_<T>``; extra columns are dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; {hint}" if hint else f"{path} not found")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a truncated/corrupt file
        raise UserError(f"{path}: not a readable parquet file ({type(exc).__name__}); rerun the step that wrote it")
    missing = [c for c in ("image_id", "fold", "State", *TRUE, *PRED) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; rerun the step that wrote it")
    if df.empty:
        raise UserError(f"{path}: no rows; rerun the step that wrote it")
    return df[["image_id", "fold", "State", *TRUE, *PRED]].reset_index(drop=True)


def read_json(path: str | Path) -> dict | None:
    """A JSON object, or None when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); rerun the step that wrote it")
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object; rerun the step that wrote it")
    return obj


def load_model_oofs(results: str | Path, models: list[str]) -> dict[str, pd.DataFrame]:
    """``{model: oof frame}`` in the order given; a missing folder or file is a UserError naming it."""
    results = Path(results)
    oofs = {}
    for m in dict.fromkeys(models):  # dedupe, keep order
        model_dir = results / "models" / m
        if not model_dir.is_dir():
            raise UserError(f"model folder {model_dir} not found; {_how_to_make(results, m)}")
        oofs[m] = read_oof(model_dir / "oof.parquet", _how_to_make(results, m))
    return oofs


def load_ensemble_oof(results: str | Path) -> pd.DataFrame | None:
    path = Path(results) / "ensemble" / "oof.parquet"
    return read_oof(path) if path.is_file() else None


def oof_scores(oof: pd.DataFrame) -> dict:
    """metrics.summary over one OOF frame (+ its folds), exactly what oof_metrics.json holds."""
    s = summary(oof[TRUE].to_numpy(), oof[PRED].to_numpy(), oof["State"].astype(str).to_numpy())
    s["folds"] = sorted(int(f) for f in oof["fold"].unique())
    return s


def state_r2(oof: pd.DataFrame) -> dict[str, float]:
    return per_group_r2(oof[TRUE].to_numpy(), oof[PRED].to_numpy(), oof["State"].astype(str).to_numpy())


# ------------------------------------------------------------------------------------- table


def _fmt_folds(folds, complete) -> str:
    text = ",".join(str(f) for f in folds)
    return f"{text} (incomplete)" if complete is False else text


def _other_oof(model_dir: Path, name: str) -> pd.DataFrame | None:
    path = model_dir / name
    return read_oof(path) if path.is_file() else None


def _side_scores(results: Path, oofs: dict[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """Per model, and for the ensemble its weights applied to them: the selected and last-epoch scores."""
    out = {}
    frames = {m: {k: _other_oof(results / "models" / m, f) for k, f in (("selected", SELECTED), ("last", LAST))}
              for m in oofs}  # fmt: skip
    for m, fr in frames.items():
        out[m] = {k: _wr2(f) for k, f in fr.items()}
    w = (read_json(results / "ensemble" / "weights.json") or {}).get("weights") or {}
    if w and set(w) <= set(frames):
        out[ENSEMBLE] = {}
        for k in ("selected", "last"):
            parts = [frames[m][k] for m in w]
            if all(p is not None for p in parts):
                parts = [p.sort_values("image_id", kind="stable").reset_index(drop=True) for p in parts]
                pred = sum(float(w[m]) * p[PRED].to_numpy(float) for m, p in zip(w, parts))
                out[ENSEMBLE][k] = weighted_r2(parts[0][TRUE].to_numpy(float), pred)
    return out


def _wr2(oof: pd.DataFrame | None) -> float:
    return math.nan if oof is None else weighted_r2(oof[TRUE].to_numpy(float), oof[PRED].to_numpy(float))


def model_table(
    results: str | Path, oofs: dict[str, pd.DataFrame], ensemble: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per model (+ ensemble, + holdout), sorted by the unbiased OOF weighted_r2, the best marked.

    Scores are recomputed from the OOF frames. A model without an unbiased score (``score`` is
    "selected": one fold, or --swa-select best) has none in weighted_r2 and is ranked last. The
    holdout row (the ensemble's score on the demo's hidden test truth) is not an OOF score, so it is
    listed last and never marked best.
    """
    results = Path(results)
    rows = []
    side = _side_scores(results, oofs)
    holdout = read_json(results / "ensemble" / "holdout.json")
    held = {**{m: _float(v.get("weighted_r2")) for m, v in ((holdout or {}).get("models") or {}).items()},
            **({ENSEMBLE: _float(holdout.get("weighted_r2"))} if holdout else {})}  # fmt: skip
    for name, oof in [*oofs.items(), *([(ENSEMBLE, ensemble)] if ensemble is not None else [])]:
        s = oof_scores(oof)
        meta = read_json(results / ("ensemble" if name == ENSEMBLE else f"models/{name}") / "oof_metrics.json") or {}
        kind = meta.get("score", "selected") if name != ENSEMBLE else _ensemble_kind(results, list(oofs))
        extra = side.get(name, {})
        s["weighted_r2_selected"] = s["weighted_r2"] if kind == "selected" else extra.get("selected", math.nan)
        s["weighted_r2_last"] = extra.get("last", math.nan)
        if kind == "selected":
            s["weighted_r2"] = math.nan  # no unbiased score: what the file holds is the optimistic one
        rows.append({"model": name, **{k: s[k] for k in METRIC_COLUMNS}, "holdout": held.get(name, math.nan), "score": kind,
                     "folds": _fmt_folds(s["folds"], meta.get("complete"))})  # fmt: skip
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS[:-1])
    score = table["weighted_r2"].astype(float).fillna(-math.inf)
    table = table.iloc[np.argsort(-score.to_numpy(), kind="stable")].reset_index(drop=True)
    table["best"] = False
    if len(table):
        table.loc[0, "best"] = True
    if holdout is not None:
        row = {"model": HOLDOUT, **{k: _float(holdout.get(k)) for k in METRIC_COLUMNS}, "holdout": math.nan,
               "score": "holdout", "folds": "", "best": False}  # fmt: skip
        table = pd.concat([table, pd.DataFrame([row], columns=TABLE_COLUMNS)], ignore_index=True)
    return table[TABLE_COLUMNS]


def _ensemble_kind(results: Path, models: list[str]) -> str:
    """The ensemble's OOF is a blend of the models' OOF files: unbiased when all of theirs are."""
    kinds = {(read_json(results / "models" / m / "oof_metrics.json") or {}).get("score", "selected") for m in models}
    return "blend" if "selected" not in kinds else "selected"


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def table_markdown(table: pd.DataFrame, notes: list[str] | None = None) -> str:
    """A GitHub-flavoured markdown table (no tabulate), numbers to 4 decimals, the best marked ★."""
    shown = [*METRIC_COLUMNS, "holdout"]
    header = ["best", "model", *[HEADERS.get(k, k) for k in shown], "score", "folds"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":-:", ":--", *["--:"] * len(shown), ":--", ":--"]) + "|",
    ]
    for _, row in table.iterrows():
        cells = ["★" if bool(row["best"]) else "", f"**{row['model']}**" if bool(row["best"]) else str(row["model"])]
        cells += ["–" if not np.isfinite(_float(row[k])) else f"{float(row[k]):.4f}" for k in shown]
        cells.append(str(row["score"]) if isinstance(row["score"], str) else "")
        cells.append(str(row["folds"]) if isinstance(row["folds"], str) else "")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return text


def table_html(table: pd.DataFrame, notes: list[str] | None = None) -> str:
    """The model table as a page of its own (the Snakemake report shows HTML, and offers CSV only
    as a download): ranked by OOF weighted R², the best row marked and bold."""
    rows = []
    for _, row in table.iterrows():
        best = bool(row["best"])
        cells = ["★" if best else "", html.escape(str(row["model"]))]
        cells += ["–" if not np.isfinite(_float(row[k])) else f"{float(row[k]):.4f}" for k in [*METRIC_COLUMNS, "holdout"]]
        cells.append(html.escape(str(row["score"])) if isinstance(row["score"], str) else "")
        cells.append(html.escape(str(row["folds"])) if isinstance(row["folds"], str) else "")
        style = ' style="font-weight:bold;background:#e8f5e9"' if best else ""
        rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ["best", "model", *[HEADERS.get(k, k) for k in METRIC_COLUMNS], "holdout",
                                                 "score", "folds"])  # fmt: skip
    items = "".join(f"<li>{html.escape(n.replace(chr(96), ''))}</li>" for n in notes or [])  # no markdown here
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Models</title><style>"
            "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}td:nth-child(2){text-align:left}"
            "</style></head><body><h1>Models, ranked by unbiased out-of-fold weighted R²</h1>"
            "<p>Raw grams, the competition metric; ★ = best. Scores are recomputed from the OOF predictions. "
            f"{html.escape(SCORE_NOTE)}</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table><ul>{items}</ul></body></html>\n")  # fmt: skip


def ensemble_note(results: str | Path) -> str | None:
    w = read_json(Path(results) / "ensemble" / "weights.json")
    if not w:
        return None
    weights = ", ".join(f"{m} {_float(v):.3f}" for m, v in (w.get("weights") or {}).items())
    scores = ", ".join(f"{k} {_float(v):.4f}" for k, v in (w.get("oof_weighted_r2") or {}).items())
    return f"ensemble method: {w.get('method', '?')} (weights: {weights}; OOF weighted_r2 by method: {scores})"


def steps_rows(results: str | Path) -> list[list[str]] | None:
    """The steps after round 1 (``final/steps.json``): OOF and holdout weighted R² without -> with."""
    steps = read_json(Path(results) / "final" / "steps.json")
    if not steps:
        return None
    f = lambda v: "–" if v is None or not np.isfinite(_float(v)) else f"{float(v):.4f}"  # noqa: E731
    rows = []
    for st in steps["steps"]:
        if "oof_weighted_r2" in st:  # the starting point
            rows.append([st["step"], "", f(st["oof_weighted_r2"]), "", f(st.get("holdout_weighted_r2")), ""])
            continue
        oof = f"{f(st['oof_without'])} → {f(st['oof_with'])}"
        if st.get("oof_honest_with") is not None:  # post-processing: data that chose no step scores it
            oof += f" (honest, outer CV: {f(st['oof_nested_without'])} → {f(st['oof_honest_with'])}; " \
                   f"the selection's own score {f(st['oof_nested_with'])})"
        elif "oof_nested_with" in st:
            oof += f" (nested CV {f(st['oof_nested_without'])} → {f(st['oof_nested_with'])})"
        rows.append([st["step"], "yes" if st["used"] else "no", oof, "",
                     f"{f(st['holdout_without'])} → {f(st['holdout_with'])}", ""])  # fmt: skip
    return [r[:3] + r[4:5] for r in rows]


STEPS_HEADER = ["step", "kept", "OOF weighted R² (without → with)", "holdout weighted R² (without → with)"]
STEPS_NOTE = ("After round 1, each step in order, scored without and with it. A step is kept when OOF says so: "
              "the pseudo-label round when its nested OOF beats round 1's; post-processing steps by nested CV, their "
              "honest score from an outer CV around the whole selection; refits on the per-fold refit checks "
              "(final/refit_evidence.json) when the config asks for evidence. The holdout is the demo's hidden test "
              "truth, which chose nothing. A refit has no held-out images, so no OOF score.")


def steps_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(STEPS_HEADER) + " |", "|:--|:-:|--:|--:|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n## From the ensemble to the submission\n\n" + STEPS_NOTE + "\n\n" + "\n".join(lines) + "\n"


def steps_html(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in STEPS_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<h2>From the ensemble to the submission</h2><p>{html.escape(STEPS_NOTE)}</p><table><tr>{head}</tr>{body}</table>"


# ------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo"):
        matplotlib.use("Agg")  # the report never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save a figure atomically as PNG and close it (also when saving fails)."""
    plt = _plt()
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return Path(path)


def _state_colours(states) -> dict[str, tuple]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i % 10) for i, s in enumerate(sorted(set(map(str, states))))}


def plot_pred_vs_true(oof: pd.DataFrame, path: str | Path, source: str) -> Path:
    """Five panels (one per target) of OOF predicted vs true grams, coloured by State, with y = x."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.5))
    axes = axes.ravel()
    states = oof["State"].astype(str).to_numpy()
    colours = _state_colours(states)
    for ax, t, tc, pc in zip(axes, TARGETS, TRUE, PRED):
        y, p = oof[tc].to_numpy(float), oof[pc].to_numpy(float)
        for s, c in colours.items():
            m = states == s
            ax.scatter(y[m], p[m], s=14, alpha=0.7, color=c, edgecolors="none", label=f"{s} (n={int(m.sum())})")
        finite = np.concatenate([y, p])[np.isfinite(np.concatenate([y, p]))]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pad = 0.04 * (hi - lo or 1.0)
        lim = (min(lo, 0.0) - pad, hi + pad)
        ax.plot(lim, lim, "k--", lw=1, label="y = x")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{t}  R² = {r2(y, p):.3f}")
        ax.set_xlabel("true (g)")
        ax.set_ylabel("predicted (g)")
        ax.grid(alpha=0.3)
    legend_ax = axes[-1]
    legend_ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    legend_ax.legend(handles, labels, title="State", loc="center", frameon=False, fontsize=10)
    wr2 = weighted_r2(oof[TRUE].to_numpy(), oof[PRED].to_numpy())
    fig.suptitle(f"Out-of-fold predicted vs true: {source} (n={len(oof)} images, weighted R² = {wr2:.4f})")
    return save_figure(fig, path)


def plot_r2_by_state(frames: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Grouped bars: weighted R² within each State (metrics.per_group_r2) for every model."""
    plt = _plt()
    scores = {name: state_r2(df) for name, df in frames.items()}
    states = sorted(set().union(*[s.keys() for s in scores.values()])) if scores else []
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 + len(states) * (0.5 + 0.35 * len(frames))), 4.8))
    width = 0.8 / max(len(frames), 1)
    x = np.arange(len(states))
    values = [v for s in scores.values() for v in s.values() if np.isfinite(v)]
    floor = max(min([0.0, *values]) - 0.05, -1.0)
    cmap = plt.get_cmap("tab10")
    for i, (name, s) in enumerate(scores.items()):
        v = np.array([s.get(st, np.nan) for st in states], dtype=float)
        xs = x - 0.4 + width * (i + 0.5)
        ax.bar(xs, np.maximum(v, floor), width, label=name, color=cmap(i % 10),
               hatch="//" if name == ENSEMBLE else None, edgecolor="black", linewidth=0.5)  # fmt: skip
        for xi, vi in zip(xs, v):
            if np.isfinite(vi) and vi < floor:  # clipped bar: say how low it really went
                ax.text(xi, floor, f"{vi:.2f}", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(states)
    ax.set_xlabel("State")
    ax.set_ylabel("weighted R² (within State)")
    ax.set_ylim(floor, 1.0)
    ax.set_title("Out-of-fold weighted R² by State")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="model", fontsize=9, loc="best")
    return save_figure(fig, path)


def _fold_number(path: Path) -> int:
    m = re.fullmatch(r"fold(\d+)", path.name)
    return int(m.group(1)) if m else -1


def read_histories(model_dir: str | Path) -> dict[int, pd.DataFrame]:
    """``{fold: history frame}`` from ``<model_dir>/fold<k>/history.csv``, sorted by fold and epoch."""
    out = {}
    for d in sorted(Path(model_dir).glob("fold*"), key=_fold_number):
        path = d / "history.csv"
        if _fold_number(d) < 0 or not path.is_file():
            continue
        try:
            h = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not a readable CSV ({type(exc).__name__}); rerun the fold with --resume")
        if "epoch" not in h.columns:
            raise UserError(f"{path}: no 'epoch' column; rerun the fold with --resume")
        out[_fold_number(d)] = h.sort_values("epoch", kind="stable").reset_index(drop=True)
    return out


def stage2_start(history: pd.DataFrame) -> int | None:
    """The epoch at which Stage 2 (backbone finetuning) began: the first row whose stage is "stage2".

    None for single-stage runs, a fold stopped during Stage 1, or a history without a stage column.
    """
    if "stage" not in history.columns or "epoch" not in history.columns:
        return None
    h = history.sort_values("epoch", kind="stable")
    hit = h.loc[h["stage"].astype(str).str.strip() == "stage2", "epoch"]
    return int(hit.iloc[0]) if len(hit) else None


def plot_learning_curves(results: str | Path, models: list[str], path: str | Path) -> Path:
    """One row per model: val weighted R² (left) and train/val loss (right) per epoch for every fold,
    a dashed vertical line (fold colour) where that fold's Stage 2 began."""
    plt = _plt()
    from matplotlib.lines import Line2D

    results = Path(results)
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 3.6 * len(models)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for row, m in zip(axes, models):
        ax_r2, ax_loss = row
        histories = read_histories(results / "models" / m)
        for fold, h in histories.items():
            c = cmap(fold % 10)
            if "weighted_r2" in h.columns:
                ax_r2.plot(h["epoch"], h["weighted_r2"], "-o", ms=3, color=c, label=f"fold {fold}")
            if "val_loss" in h.columns:
                ax_loss.plot(h["epoch"], h["val_loss"], "-", color=c, label=f"fold {fold} val")
            if "train_loss" in h.columns:
                ax_loss.plot(h["epoch"], h["train_loss"], ":", color=c, label=f"fold {fold} train")
            s2 = stage2_start(h)
            if s2 is not None:
                for ax in (ax_r2, ax_loss):
                    ax.axvline(s2, color=c, ls="--", lw=1, alpha=0.8)
        if not histories:
            for ax in (ax_r2, ax_loss):
                ax.text(0.5, 0.5, f"no fold*/history.csv under {results / 'models' / m}", ha="center", va="center",
                        transform=ax.transAxes, fontsize=9)  # fmt: skip
        losses = pd.concat([h[c] for h in histories.values() for c in ("train_loss", "val_loss") if c in h.columns]) \
            if histories else pd.Series(dtype=float)  # fmt: skip
        if len(losses) and (losses.dropna() > 0).all() and losses.max() / max(losses.min(), 1e-12) > 20:
            ax_loss.set_yscale("log")
        ax_r2.set_title(f"{m}: validation weighted R²")
        ax_r2.set_xlabel("epoch")
        ax_r2.set_ylabel("weighted R²")
        ax_loss.set_title(f"{m}: loss (solid val, dotted train)")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        for ax in (ax_r2, ax_loss):
            ax.grid(alpha=0.3)
        if histories:
            handles, labels = ax_r2.get_legend_handles_labels()
            handles.append(Line2D([], [], color="grey", ls="--", lw=1))
            labels.append("Stage 2 starts")
            ax_r2.legend(handles, labels, fontsize=8, loc="lower right")
            style = [Line2D([], [], color="grey", ls="-"), Line2D([], [], color="grey", ls=":"),
                     Line2D([], [], color="grey", ls="--", lw=1)]  # fmt: skip
            ax_loss.legend(style, ["val loss", "train loss", "Stage 2 starts"], fontsize=8, loc="upper right")
    return save_figure(fig, path)


# -------------------------------------------------------------------------------------- main


def make_report(results: str | Path, models: list[str], out_dir: str | Path) -> dict[str, Path]:
    """Write the three figures and the model table; returns ``{file name: path}``."""
    results, out_dir = Path(results), Path(out_dir)
    models = list(dict.fromkeys(models))
    oofs = load_model_oofs(results, models)  # every check before anything is written
    ensemble = load_ensemble_oof(results)
    table = model_table(results, oofs, ensemble)
    if ensemble is not None:
        scatter, source = ensemble, "ensemble"
    else:
        best = table.loc[table["best"], "model"].iloc[0]
        scatter, source = oofs[best], f"{best} (best model; no ensemble)"
    frames = {**oofs, **({ENSEMBLE: ensemble} if ensemble is not None else {})}
    notes = [SCORE_NOTE, *[f"score `{k}`: {v}" for k, v in KINDS.items() if (table["score"] == k).any()]]
    if (table["score"] == "blend").any():
        notes.append("score `blend`: the ensemble of the models' unbiased OOF predictions (NNLS weights by nested CV; "
                     "mean or NNLS chosen on these OOF)")
    notes += [n for n in [ensemble_note(results)] if n]
    if (table["model"] == HOLDOUT).any():
        notes.append(f"`{HOLDOUT}`: the ensemble submission scored on the demo's hidden test truth, not an OOF score.")
    md = "# Models\n\nOut-of-fold scores (raw grams; ★ = best unbiased weighted_r2).\n\n" + table_markdown(table, notes)
    paths = {name: out_dir / name for name in OUTPUTS}
    plot_pred_vs_true(scatter, paths["pred_vs_true.png"], source)
    plot_r2_by_state(frames, paths["r2_by_state.png"])
    plot_learning_curves(results, models, paths["learning_curves.png"])
    steps = steps_rows(results)
    page = table_html(table, notes)
    if steps:
        md += steps_markdown(steps)
        page = page.replace("</body>", steps_html(steps) + "</body>")
    write_csv(paths["model_table.csv"], table)
    write_text(paths["model_table.md"], md)
    write_text(paths["model_table.html"], page)
    print(md, end="")
    for p in paths.values():
        print(f"wrote {p}")
    return paths
