"""Weight averaging (src/training/averaging.py): the EMA follows every update at --ema-decay (timm's
warm-up only with --ema-warmup), in the stages of --ema-stages, and is what is validated, saved and
predicted; --swa-top-k saves the mean of the last stage's last (or best) K epochs as the fold's
weights and OOF. Both checkpoints load in prediction without a flag."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from timm.utils.model_ema import ModelEmaV3

from src.core.config import TrainConfig
from src.core.errors import UserError
from src.training import averaging, fit
from src.training import run as run_module

guards = pytest.mark.guards
TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)


def _run(data, out, **kw):
    settings = dict(data_dir=str(data), fold_csv=str(data / "trainfold_group_location.csv"), output_dir=str(out),
                    folds=[0], two_stage=False, epochs=1, batch_size=8, num_workers=0, device="cpu", **TINY)
    run_module.run(TrainConfig(**{**settings, **kw}))
    return out / "fold0"


@guards("--ema", "--ema-decay")
def test_ema_follows_every_update_and_is_what_is_saved(demo_data, tmp_path, monkeypatch, predicts_its_oof):
    seen, real = [], ModelEmaV3.update

    def spy(self, model, step=None):
        seen.append((step, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        return real(self, model, step)

    first = {}
    real_init = ModelEmaV3.__init__

    def init_spy(self, model, **kw):
        first.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        real_init(self, model, **kw)

    monkeypatch.setattr(ModelEmaV3, "update", spy)
    monkeypatch.setattr(ModelEmaV3, "__init__", init_spy)
    fold = _run(demo_data, tmp_path / "ema", ema=True, ema_decay=0.5)
    assert [s for s, _ in seen] == list(range(1, len(seen) + 1)) and len(seen) >= 4  # every update, counted
    expected = dict(first)
    for step, weights in seen:  # no warm-up: a copy at the first update, then --ema-decay itself
        decay = 0.0 if step <= 1 else 0.5
        expected = {k: (decay * expected[k] + (1 - decay) * w) if w.is_floating_point() else w for k, w in weights.items()}
    best, last = load_file(str(fold / "best.safetensors")), load_file(str(fold / "last.safetensors"))
    worst = max(float((best[k].float() - expected[k].float()).abs().max()) for k in best)
    assert worst < 1e-5, worst  # the one epoch is the best one: its EMA is the saved model
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the raw weights went on without it
    predicts_its_oof(fold.parent, demo_data)


@guards("--no-ema")
def test_no_ema_saves_the_raw_weights(demo_data, tmp_path):
    """EMA is the default since #27 (benchmarks/defaults.py); --no-ema validates and saves the raw weights."""
    def differs(fold):
        best, last = load_file(str(fold / "best.safetensors")), load_file(str(fold / "last.safetensors"))
        return any(not torch.equal(best[k], last[k]) for k in best)  # one epoch: best is the EMA's, last the raw

    assert not differs(_run(demo_data, tmp_path / "raw", ema=False))
    assert differs(_run(demo_data, tmp_path / "default"))


@guards("--ema-decay", "--ema-warmup")
def test_the_ema_decay_acts_in_a_short_run_unless_a_cap_sets_it(demo_data, tmp_path):
    """10 updates: the stage's length caps the decay at 1 - 2/10 = 0.8, and timm's warm-up at
    1 - (1 + t)^(-2/3) at update t (0.52 at t = 2); under both caps the decay is the flag's."""
    def saved(name, **kw):
        fold = _run(demo_data, tmp_path / name, ema=True, epochs=2, **kw)
        return load_file(str(fold / "best.safetensors"))

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    fast, slow = saved("fast", ema_decay=0.3), saved("slow", ema_decay=0.6)
    assert max(float((fast[k].float() - slow[k].float()).abs().max()) for k in fast) > 1e-4
    capped, longer = saved("capped", ema_decay=0.9), saved("longer", ema_decay=0.999)
    assert same(capped, longer)  # both at the stage's cap
    assert not same(saved("warm_slow", ema_decay=0.6, ema_warmup=True), slow)  # the warm-up lowers its first decays


def test_the_ema_spans_at_most_half_its_stage():
    from src.training.averaging import ema_decay

    cfg = TrainConfig(ema_decay=0.99)
    assert ema_decay(cfg, 240) == 0.99  # the demo's Stage 2: 1 - 2/240 = 0.9917
    assert ema_decay(cfg, 32) == pytest.approx(0.9375)  # 8 epochs of 4 updates
    assert ema_decay(cfg, None) == 0.99


@guards("--ema-decay", "--refit-from")
def test_a_refit_caps_its_ema_decay_as_the_folds_do(demo_data, tmp_path, monkeypatch):
    """The full-data refit's Stage 2 (2 epochs of a few updates) gets the same cap as a fold's."""
    from test_refit_resume import _cv

    decays, real_init = [], ModelEmaV3.__init__

    def init_spy(self, model, **kw):
        decays.append(kw["decay"])
        real_init(self, model, **kw)

    monkeypatch.setattr(ModelEmaV3, "__init__", init_spy)
    settings = dict(data_dir=str(demo_data), fold_csv=str(demo_data / "trainfold_group_location.csv"),
                    output_dir=str(tmp_path / "refit"), refit_from=str(_cv(tmp_path / "cv")), freeze_epochs=2,
                    stage2_epochs=2, stage1_patience=5, batch_size=8, num_workers=0, device="cpu", ema=True,
                    ema_decay=0.999, **TINY)  # fmt: skip
    run_module.run(TrainConfig(**settings))
    assert len(decays) == 1  # --ema-stages last: Stage 2 only
    updates = 2 / (1 - decays[0])  # the cap is 1 - 2/updates
    assert decays[0] < 0.999 and updates == pytest.approx(round(updates)) and round(updates) % 2 == 0


@guards("--ema", "--resume")
def test_a_resumed_run_goes_on_with_its_ema(demo_data, tmp_path, monkeypatch, capsys):
    """Killed just before its 2nd epoch's commit and resumed, a run ends with the uninterrupted
    run's EMA (a resume that restarted the average at the raw weights would not)."""
    from src.training import checkpoint

    ema, real_make_ema = {}, fit.make_ema

    def keep(model, cfg, last_stage=True, updates=None):  # each run's EMA, by its fold folder
        ema[Path(cfg.output_dir) / "fold0"] = made = real_make_ema(model, cfg, last_stage, updates)
        return made

    monkeypatch.setattr(fit, "make_ema", keep)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every run alike, so the float sums agree
    try:
        kw = dict(ema=True, ema_decay=0.9, epochs=2)
        full = _run(demo_data, tmp_path / "full", **kw)
        real_save_state, calls = checkpoint.save_state, []

        def killed(path, state):
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt  # as a SIGKILL there: the 1st epoch is committed, the 2nd never is
            real_save_state(path, state)

        monkeypatch.setattr(checkpoint, "save_state", killed)
        with pytest.raises(KeyboardInterrupt):
            _run(demo_data, tmp_path / "resumed", **kw)
        monkeypatch.setattr(checkpoint, "save_state", real_save_state)
        capsys.readouterr()
        resumed = _run(demo_data, tmp_path / "resumed", resume=True, **kw)
    finally:
        torch.set_num_threads(threads)
    assert "resuming after epoch 1" in capsys.readouterr().out
    a, b = (ema[f].module.state_dict() for f in (full, resumed))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    # what was validated each epoch is the EMA: the resumed epochs' predictions are the uninterrupted ones
    preds = [pd.read_parquet(f / "epoch_preds.parquet").filter(like="pred_").to_numpy() for f in (full, resumed)]
    np.testing.assert_allclose(preds[1], preds[0], rtol=1e-5, atol=1e-5)


@guards("--ema-stages")
@pytest.mark.parametrize("stages, made", [("last", ["stage2"]), ("all", ["stage1", "stage2"])])
def test_the_ema_is_kept_in_the_stages_asked_for(demo_data, tmp_path, monkeypatch, stages, made):
    """Stage 2 starts from Stage 1's best raw weights, not from a lagging average of them (the default)."""
    frozen, real_init = [], ModelEmaV3.__init__

    def init_spy(self, model, **kw):
        frozen.append(all(not p.requires_grad for p in model.backbone.parameters()))
        real_init(self, model, **kw)

    monkeypatch.setattr(ModelEmaV3, "__init__", init_spy)
    _run(demo_data, tmp_path / stages, two_stage=True, freeze_epochs=1, stage1_patience=5, stage2_epochs=1, ema=True,
         ema_stages=stages)  # fmt: skip
    assert ["stage1" if f else "stage2" for f in frozen] == made


@guards("--swa-top-k")
def test_swa_top_k_saves_the_mean_of_the_last_stages_last_epochs(demo_data, tmp_path, monkeypatch, predicts_its_oof):
    averaged, real = [], averaging.average_state

    def spy(paths):
        averaged.append([int(p.stem.removeprefix("epoch")) for p in paths])
        return real(paths)

    monkeypatch.setattr(averaging, "average_state", spy)
    fold = _run(demo_data, tmp_path / "swa", two_stage=True, freeze_epochs=2, stage1_patience=5, stage2_epochs=4,
                swa_top_k=3)  # fmt: skip
    assert averaged == [[3, 4, 5]]  # Stage 2's last three: chosen without the validation images
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["swa_epochs"] == [3, 4, 5] and metrics["selection"] == "swa_last"
    predicts_its_oof(fold.parent, demo_data)


@guards("--swa-top-k", "--swa-select")
def test_swa_top_k_best_saves_the_mean_of_the_last_stages_best_epochs(demo_data, tmp_path, monkeypatch, predicts_its_oof):
    averaged, real = [], averaging.average_state

    def spy(paths):
        averaged.append(([int(p.stem.removeprefix("epoch")) for p in paths], [load_file(str(p)) for p in paths]))
        return real(paths)

    monkeypatch.setattr(averaging, "average_state", spy)
    calls, real_summary = [], fit.summary

    def falling(*args, **kw):  # every epoch scores lower than the one before: the best are the first
        calls.append(None)
        return {**real_summary(*args, **kw), "weighted_r2": 1.0 - 0.01 * len(calls)}

    monkeypatch.setattr(fit, "summary", falling)
    fold = _run(demo_data, tmp_path / "swa", two_stage=True, freeze_epochs=2, stage1_patience=5, stage2_epochs=5,
                swa_top_k=3, swa_select="best")  # fmt: skip
    hist = pd.read_csv(fold / "history.csv")
    stage2 = hist[hist["stage"] == "stage2"].sort_values("weighted_r2", ascending=False, kind="stable")
    [(epochs, states)] = averaged
    assert epochs == sorted(stage2["epoch"].head(3).tolist())  # the last stage's 3 best, Stage 1 never
    assert epochs != [4, 5, 6]  # not the last three: the test can tell the two choices apart
    best = load_file(str(fold / "best.safetensors"))
    for k, v in best.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, torch.stack([s[k] for s in states]).mean(0), rtol=1e-6, atol=1e-6)
    metrics = json.loads((fold / "metrics.json").read_text())
    assert metrics["swa_epochs"] == epochs and metrics["selection"] == "swa_best" and not (fold / "top").exists()
    oof = pd.read_parquet(fold / "oof.parquet")
    assert len(oof) and metrics["weighted_r2"] not in hist["weighted_r2"].tolist()  # scored as averaged
    assert epochs == [2, 3, 4]
    predicts_its_oof(fold.parent, demo_data)


def test_top_k_keeps_the_best_and_deletes_only_after_the_commit(tmp_path):
    model = torch.nn.Linear(2, 1)
    top = averaging.TopK(tmp_path, 2, [])
    for epoch, score in enumerate([0.1, 0.5, 0.3, 0.2]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        top.offer(score, epoch, model, is_main=True)
    assert top.kept == [[0.5, 1], [0.3, 2]]
    assert len(list(top.folder.glob("*.safetensors"))) == 3  # epoch 0 still on disk until prune
    top.prune(is_main=True)
    assert sorted(p.name for p in top.folder.iterdir()) == ["epoch0001.safetensors", "epoch0002.safetensors"]
    assert top.average()["weight"].tolist() == [[1.5, 1.5]]


@pytest.mark.parametrize("kw, words", [(dict(ema_decay=1.0), "--ema-decay"), (dict(swa_top_k=-1), "--swa-top-k")])
def test_bad_averaging_values_are_refused(kw, words):
    from src.core.config import validate

    with pytest.raises(UserError, match=words):
        validate(TrainConfig(**kw), "cli")


def test_the_ema_of_a_compiled_model_runs_its_own_backbone():
    """A deep copy keeps the compiled forward of the original backbone (it is a plain function
    attribute): the EMA would validate the raw weights. make_ema recompiles the copy's own."""
    from src.models.biomass import BiomassModel

    cfg = TrainConfig(**TINY, compile=True, ema=True)
    model = BiomassModel(cfg)
    ema = averaging.make_ema(model, cfg)

    def bound_to(backbone):
        fn = backbone.forward_features
        return getattr(getattr(fn, "_torchdynamo_orig_callable", None) or fn.__wrapped__, "__self__", None)

    assert bound_to(ema.module.backbone) is ema.module.backbone and bound_to(model.backbone) is model.backbone
