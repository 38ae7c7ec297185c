"""src.report on a small fake results folder (2 models + ensemble + holdout), no training."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src import report as report_cli
from src.core import metrics
from src.core.targets import SHORT, TARGETS
from src.reporting import report
from src.rounds.oof import PRED, SELECTED, TRUE

ROOT = Path(__file__).resolve().parents[1]
STATES = ["NSW", "Tas", "Vic", "WA"]
MODELS = ["good", "bad"]
# Stage 2 start epoch per (model, fold); None = single-stage or stopped in Stage 1.
STAGE2 = {("good", 0): 3, ("good", 1): 5, ("good", 2): 4, ("bad", 0): None, ("bad", 1): 2, ("bad", 2): None}
HOLDOUT = {"weighted_r2": 0.7123, "weighted_r2_log": 0.65, "r2_green": 0.6, "r2_dead": 0.2, "r2_clover": 0.3,
           "r2_gdm": 0.61, "r2_total": 0.8}  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _truth(n: int, rng) -> np.ndarray:
    g, d, c = rng.gamma(2.0, 15.0, n), rng.gamma(1.5, 8.0, n), rng.gamma(0.8, 5.0, n)
    return np.stack([g, d, c, g + c, g + d + c], axis=1)


def _oof(base: pd.DataFrame, y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    df = base.copy()
    df[TRUE] = y
    df[PRED] = p
    return df


def _history(stage2: int | None, n_epochs: int, single: bool, rng) -> pd.DataFrame:
    epochs = np.arange(n_epochs)
    stage = (
        ["single"] * n_epochs
        if single
        else ["stage2" if stage2 is not None and e >= stage2 else "stage1" for e in epochs]
    )
    r2 = 1 - np.exp(-0.3 * (epochs + 1)) + rng.normal(0, 0.02, n_epochs)
    df = pd.DataFrame({"epoch": epochs, "stage": stage, "train_loss": 5 * np.exp(-0.2 * epochs) + 0.1,
                       "val_loss": 6 * np.exp(-0.15 * epochs) + 0.3, "weighted_r2": r2, "lr_head": 1e-3})  # fmt: skip
    for t in TARGETS:
        df[f"r2_{SHORT[t]}"] = r2 - 0.1
    return df


def build_results(root: Path, seed: int = 0) -> Path:
    """A results folder as the pipeline leaves it: good (small noise) beats the ensemble beats bad."""
    rng = np.random.default_rng(seed)
    n = 80
    base = pd.DataFrame({"image_id": [f"ID{i:04d}" for i in range(n)], "fold": np.arange(n) % 3,
                         "State": rng.choice(STATES, n)})  # fmt: skip
    y = _truth(n, rng)
    preds = {
        "good": np.clip(y + rng.normal(0, 3, y.shape), 0, None),
        "bad": np.clip(y + rng.normal(0, 25, y.shape), 0, None),
    }
    for m, p in preds.items():
        d = root / "models" / m
        d.mkdir(parents=True)
        oof = _oof(base, y, p)
        oof["pred_height_cm"] = 1.0  # extra columns are ignored
        oof[[f"std_{t}" for t in TARGETS]] = 0.5
        oof.to_parquet(d / "oof.parquet", index=False)
        # The optimistic OOF (each fold's own best epoch): bad's looks best of all, so a table ranked by it would
        # put bad first.
        _oof(base, y, np.clip(y + rng.normal(0, 1 if m == "bad" else 2, y.shape), 0, None)).to_parquet(d / SELECTED)
        s = metrics.summary(y, p, base["State"].to_numpy())
        (d / "oof_metrics.json").write_text(json.dumps({**s, "folds": [0, 1, 2], "complete": True, "n_images": n,
                                                        "score": "crossfold_epoch"}))  # fmt: skip
        for k in range(3):
            (d / f"fold{k}").mkdir()
            single = STAGE2[(m, k)] is None and k == 0
            _history(STAGE2[(m, k)], 8 + k, single, rng).to_csv(d / f"fold{k}" / "history.csv", index=False)
    e = root / "ensemble"
    e.mkdir()
    mean = (preds["good"] + preds["bad"]) / 2
    _oof(base, y, mean).to_parquet(e / "oof.parquet", index=False)
    (e / "oof_metrics.json").write_text(
        json.dumps({**metrics.summary(y, mean, base["State"].to_numpy()), "folds": [0, 1, 2]})
    )
    (e / "weights.json").write_text(json.dumps({"method": "mean", "weights": {"good": 0.5, "bad": 0.5},
                                                "oof_weighted_r2": {"mean": 0.8, "nnls": 0.79}}))  # fmt: skip
    (e / "holdout.json").write_text(json.dumps({**HOLDOUT, "models": {"good": {"weighted_r2": 0.70}, "bad": {"weighted_r2": 0.2}}}))
    return root


def expected_scores(root: Path, name: str) -> dict:
    path = root / ("ensemble" if name == "ensemble" else f"models/{name}") / "oof.parquet"
    df = pd.read_parquet(path)
    return metrics.summary(df[TRUE].to_numpy(), df[PRED].to_numpy(), df["State"].to_numpy())


def _env() -> dict:
    return {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.report", *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return build_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def cli_run(results):
    out = results / "report"
    proc = run_cli("--results-dir", results, "--models", *MODELS, "--out-dir", out)
    assert proc.returncode == 0, proc.stderr
    return proc, out


@pytest.fixture
def figures(monkeypatch):
    """Capture the figures the library saves (still written and closed as usual)."""
    captured = []
    real = report.save_figure

    def spy(fig, path):
        captured.append(fig)
        return real(fig, path)

    monkeypatch.setattr(report, "save_figure", spy)
    return captured


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cli_writes_valid_pngs_and_tables(cli_run):
    proc, out = cli_run
    for name in report.OUTPUTS:
        assert (out / name).is_file(), name
        assert str(out / name) in proc.stdout  # every path written is printed
    for name in ("pred_vs_true.png", "r2_by_state.png", "learning_curves.png"):
        w, h = png_size(out / name)
        assert w >= 500 and h >= 350, (name, w, h)
        assert (out / name).stat().st_size > 15_000, name  # real content, not an empty canvas
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    assert "| ★ | **good** |" in proc.stdout  # the table is printed, winner marked


def test_table_sorted_with_right_winner_and_values_from_oof(cli_run, results):
    _, out = cli_run
    table = pd.read_csv(out / "model_table.csv")
    assert list(table.columns) == ["model", "weighted_r2", "weighted_r2_selected", "weighted_r2_last", "weighted_r2_log",
                                   "r2_green", "r2_dead", "r2_clover", "r2_gdm", "r2_total", "holdout", "score",
                                   "folds", "best"]  # fmt: skip
    oof_rows = table[table["model"] != "holdout (ensemble)"]
    expected = {m: expected_scores(results, m) for m in [*MODELS, "ensemble"]}
    assert list(oof_rows["model"]) == sorted(expected, key=lambda m: -expected[m]["weighted_r2"])
    assert list(oof_rows["model"]) == ["good", "ensemble", "bad"]  # by construction of the noise levels
    assert oof_rows["weighted_r2"].is_monotonic_decreasing
    assert table["best"].tolist() == [True, False, False, False]
    for _, row in oof_rows.iterrows():
        for k in report.METRIC_COLUMNS:
            if k not in ("weighted_r2_selected", "weighted_r2_last"):
                assert row[k] == pytest.approx(expected[row["model"]][k], rel=1e-9), (row["model"], k)
        assert row["folds"] == "0,1,2"
    # Ranked by the unbiased score; the optimistic one, which would rank bad first, stands beside it.
    rows = oof_rows.set_index("model")
    for m in MODELS:
        sel = pd.read_parquet(results / "models" / m / SELECTED)
        assert rows.loc[m, "weighted_r2_selected"] == pytest.approx(metrics.weighted_r2(sel[TRUE].to_numpy(), sel[PRED].to_numpy()))
    assert rows.loc["bad", "weighted_r2_selected"] > rows.loc["good", "weighted_r2_selected"] > rows.loc["good", "weighted_r2"]
    assert rows["score"].tolist() == ["crossfold_epoch", "blend", "crossfold_epoch"]
    assert rows["holdout"].tolist() == [0.70, HOLDOUT["weighted_r2"], 0.2]  # each model's test predictions
    hold = table.iloc[-1]
    assert hold["model"] == "holdout (ensemble)"
    for k, v in HOLDOUT.items():
        assert hold[k] == pytest.approx(v)


def test_markdown_table_is_readable(cli_run):
    _, out = cli_run
    md = (out / "model_table.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 4  # header, separator, good, ensemble, bad, holdout
    assert len({r.count("|") for r in rows}) == 1  # same number of cells everywhere
    assert rows[2].startswith("| ★ | **good** |") and "★" not in "".join(rows[3:])
    assert "holdout (ensemble)" in rows[-1]
    assert "ensemble method: mean" in md


def test_html_table_is_a_ranked_page_with_the_best_marked(cli_run):
    import re

    _, out = cli_run
    page = (out / "model_table.html").read_text()
    rows = re.findall(r"<tr( style=[^>]*)?>(.*?)</tr>", page)
    cells = [re.findall(r"<td>(.*?)</td>", r[1]) for r in rows[1:]]
    assert [c[1] for c in cells] == ["good", "ensemble", "bad", "holdout (ensemble)"]  # ranked, holdout last
    assert cells[0][0] == "★" and rows[1][0] and not any(r[0] for r in rows[2:])  # only the best is marked
    md_rows = [line for line in (out / "model_table.md").read_text().splitlines() if line.startswith("|")][2:]
    md = [line.split("|")[3].strip() for line in md_rows]
    assert [c[2] for c in cells] == md  # the same numbers as the markdown table
    assert "ensemble method: mean" in page


def test_stage2_start_detection():
    h = pd.DataFrame({"epoch": [0, 1, 2, 3, 4], "stage": ["stage1", "stage1", "stage1", "stage2", "stage2"]})
    assert report.stage2_start(h) == 3
    assert report.stage2_start(h.iloc[::-1]) == 3  # row order does not matter
    assert report.stage2_start(h.assign(epoch=h["epoch"] + 10)) == 13  # resumed runs keep absolute epochs
    assert report.stage2_start(h.assign(stage="single")) is None
    assert report.stage2_start(h.assign(stage="stage1")) is None
    assert report.stage2_start(h.drop(columns="stage")) is None


def test_stage2_lines_in_learning_curves(results, tmp_path, figures):
    for (m, k), s2 in STAGE2.items():
        assert report.stage2_start(pd.read_csv(results / "models" / m / f"fold{k}" / "history.csv")) == s2
    report.plot_learning_curves(results, MODELS, tmp_path / "lc.png")
    (fig,) = figures
    axes = np.array(fig.axes).reshape(len(MODELS), 2)
    for i, m in enumerate(MODELS):
        want = sorted(s for (mm, _), s in STAGE2.items() if mm == m and s is not None)
        for ax in axes[i]:
            vlines = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"
                            and len(set(line.get_xdata())) == 1)  # fmt: skip
            assert vlines == want, (m, ax.get_title())
        n_folds_plotted = sum(1 for line in axes[i][0].get_lines() if line.get_marker() == "o")
        assert n_folds_plotted == 3
        assert m in axes[i][0].get_title()
    png_size(tmp_path / "lc.png")


def test_r2_by_state_bars_match_per_group_r2(results, tmp_path, figures):
    frames = {m: pd.read_parquet(results / "models" / m / "oof.parquet") for m in MODELS}
    report.plot_r2_by_state(frames, tmp_path / "s.png")
    (fig,) = figures
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == STATES
    bars = [p for p in ax.patches if p.get_width() > 0]
    assert len(bars) == len(MODELS) * len(STATES)
    floor = ax.get_ylim()[0]
    for i, m in enumerate(MODELS):
        df = frames[m]
        want = metrics.per_group_r2(df[TRUE].to_numpy(), df[PRED].to_numpy(), df["State"].to_numpy())
        got = [b.get_height() for b in bars[i * len(STATES) : (i + 1) * len(STATES)]]
        assert got == pytest.approx([max(want[s], floor) for s in STATES])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == MODELS


def test_scatter_is_the_ensemble_when_present(results, tmp_path, figures):
    report.make_report(results, MODELS, tmp_path / "out")
    scatter = figures[0]
    assert "ensemble" in scatter._suptitle.get_text()
    df = pd.read_parquet(results / "ensemble" / "oof.parquet")
    for ax, t in zip(scatter.axes[:5], TARGETS):
        assert ax.get_title() == f"{t}  R² = {metrics.r2(df['true_' + t], df['pred_' + t]):.3f}"
        assert ax.get_xlabel() == "true (g)" and ax.get_ylabel() == "predicted (g)"
    assert [t.get_text() for t in scatter.axes[5].get_legend().get_texts()][: len(STATES)] == [
        f"{s} (n={(df['State'] == s).sum()})" for s in STATES
    ]


def test_without_ensemble_scatter_shows_best_model(results, tmp_path, figures, capsys):
    root = tmp_path / "res"
    shutil.copytree(results, root, ignore=shutil.ignore_patterns("report"))
    shutil.rmtree(root / "ensemble")
    paths = report.make_report(root, ["bad", "good"], tmp_path / "out")
    table = pd.read_csv(paths["model_table.csv"])
    assert table["model"].tolist() == ["good", "bad"] and table["best"].tolist() == [True, False]
    scatter = figures[0]
    assert "good (best model" in scatter._suptitle.get_text()
    titles = [ax.get_title() for ax in scatter.axes[:5]]
    df = pd.read_parquet(root / "models" / "good" / "oof.parquet")
    for title, t in zip(titles, TARGETS):
        assert title == f"{t}  R² = {metrics.r2(df['true_' + t], df['pred_' + t]):.3f}"
    assert "wrote" in capsys.readouterr().out


def test_missing_model_is_one_line_exit_2(results):
    proc = run_cli("--results-dir", results, "--models", "good", "nope", "--out-dir", results / "report_missing")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(results / "models" / "nope") in lines[0]
    assert "snakemake" in lines[0] and "python -m src.dinov3_train" in lines[0]
    assert "--output-dir " + str(results / "models" / "nope") in lines[0]
    assert not (results / "report_missing").exists()  # checked before anything is written


def test_missing_oof_parquet_names_the_file(results, tmp_path, capsys):
    root = tmp_path / "res"
    (root / "models" / "m1" / "fold0").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        report_cli.main(["--results-dir", str(root), "--models", "m1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(root / "models" / "m1" / "oof.parquet") in err and "merge-oof" in err
