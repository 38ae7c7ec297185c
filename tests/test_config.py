"""Flags: declared once, every guide flag present, YAML + CLI precedence, clear errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from src.core.config import build_parser, parse_config
from src.core.errors import UserError
from src.training.distributed import DistInfo, per_rank_batch

SEED_FLAGS = Path(__file__).resolve().parents[2] / "shared" / "seed" / "flags.txt"


def test_every_guide_flag_exists_with_the_guide_default():
    help_text = build_parser().format_help()
    if SEED_FLAGS.exists():
        for flag in SEED_FLAGS.read_text().split():
            assert f"{flag} " in help_text or f"{flag}\n" in help_text, flag
    cfg = parse_config([])
    guide = {"lr": 2e-4, "backbone_lr": 1e-5, "stage1_patience": 10, "freeze_epochs": 30, "stage2_epochs": 20,
             "epochs": 50, "batch_size": 16, "grad_accum": 1, "backbone_size": "base", "lr_mult": 1.0,
             "huber_delta": 5.0, "cosine_weight": 0.4, "compositional_weight": 0.1, "mass_balance_weight": 0.2,
             "height_weight": 0.3, "ndvi_weight": 0.3, "aos_weight": 0.3, "cross_view_weight": 0.1,
             "depth_model_size": "small", "n_folds": 5, "cv_strategy": "group_location",
             "fold_csv": "data/trainfold_group_location.csv", "two_stage": True, "smoothl1": True,
             "train_dead": False, "train_clover": True, "strong_aug": True, "use_depth": True,
             "depth_attention": True, "use_predefined_folds": True, "seed": 42, "output_dir": "outputs",
             "data_dir": "data", "image_size": 512, "aux_species_weight": 0.1, "qc_weight": 0.1}
    for k, v in guide.items():
        assert getattr(cfg, k) == v, k


def test_bool_pairs_and_guide_spellings():
    assert parse_config(["--no-two-stage"]).two_stage is False
    assert parse_config(["--no-predefined-folds"]).use_predefined_folds is False
    assert parse_config(["--train-dead", "--no-train-clover"]).train_dead is True
    assert parse_config(["--folds", "0", "2"]).folds == [0, 2]


def test_yaml_then_cli_precedence_and_strictness(tmp_path):
    y = tmp_path / "m.yaml"
    y.write_text("lr: 0.001\nseed: 7\nuse_height_head: true\n")
    cfg = parse_config(["--config", str(y), "--seed", "9"])
    assert cfg.lr == 0.001 and cfg.seed == 9 and cfg.use_height_head is True
    y.write_text("learning_rate: 0.1\n")
    with pytest.raises(UserError, match="unknown key.*learning_rate"):
        parse_config(["--config", str(y)])


@pytest.mark.parametrize("argv, words", [
    (["--image-size", "100"], "multiple of 16"),
    (["--folds", "7"], "outside"),
    (["--use-aos-hallucination"], "needs --use-ndvi-head"),
    (["--batch-size", "0"], "--batch-size"),
])  # fmt: skip
def test_bad_values(argv, words):
    with pytest.raises(UserError, match=words):
        parse_config(argv)


def test_batch_is_split_over_ranks_and_checked(capsys):
    assert per_rank_batch(16, DistInfo(rank=0, world_size=2)) == 8
    assert "DDP batch adjustment: 16 → 8/GPU (effective: 16)" in capsys.readouterr().out
    with pytest.raises(UserError, match="smaller than the 4 DDP ranks"):
        per_rank_batch(2, DistInfo(world_size=4))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "src.dinov3_train", *args], capture_output=True, text=True)


def test_cli_errors_are_one_line_exit_2(demo_data, tmp_path):
    proc = _cli("--data-dir", str(demo_data), "--fold-csv", str(tmp_path / "nope.csv"), "--backbone-size", "tiny",
                "--no-use-depth", "--no-depth-attention", "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "nope.csv: file not found" in proc.stderr and "make_folds" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _cli("--backbone-size", "gigantic")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "--help" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # not argparse's 80-line usage


@pytest.mark.parametrize("yaml_text, argv, said", [
    ("lr: fast\n", [], "lr = 'fast' (str) must be a number"),
    ("batch_size: eight\n", [], "batch_size = 'eight' (str) must be an integer"),
    ("batch_size: 1e3\n", [], "batch_size = '1e3' (str) must be an integer"),
    ("batch_size: 8.0\n", [], "batch_size = 8.0 (float) must be an integer"),
    ("lr: 1e-3x\n", [], "lr = '1e-3x' (str) must be a number"),
    ("lr: '0x10'\n", [], "lr = '0x10' (str) must be a number"),
    ("lr: 1_0e-3\n", [], "lr = '1_0e-3' (str) must be a number"),
    ("folds: 1\n", [], "folds = 1 (int) must be a list of integers"),
    ("use_depth: 'no'\n", [], "use_depth = 'no' (str) must be true or false"),
    ("", ["--lr", "nan"], "--lr nan must be a finite number > 0"),
    ("", ["--backbone-lr", "inf"], "--backbone-lr inf must be a finite number > 0"),
    ("", ["--num-workers", "-1"], "--num-workers -1 must be >= 0"),
    ("", ["--no-two-stage", "--epochs", "-3"], "--epochs -3 must be >= 0"),
    ("", ["--freeze-epochs", "0", "--stage2-epochs", "0"], "nothing to train"),
    ("", ["--grad-clip", "-1"], "--grad-clip -1.0 must be >= 0"),
    ("", ["--stage1-patience", "0"], "--stage1-patience 0 must be >= 1"),
])  # fmt: skip
def test_values_are_checked_against_the_field_types_and_ranges(tmp_path, yaml_text, argv, said):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text or "{}\n")
    with pytest.raises(UserError, match=re.escape(said)) as exc:
        parse_config(["--config", str(path), *argv])
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("yaml_text, name, want", [
    ("lr: 1e-3\n", "lr", 1e-3),  # PyYAML reads these as strings: YAML 1.1 wants a dot in a float
    ("lr: 1E-3\n", "lr", 1e-3),
    ("backbone_lr: +1e3\n", "backbone_lr", 1e3),
    ("lr: .5\n", "lr", 0.5),
    ("lr: 5.\n", "lr", 5.0),
    ("weight_decay: -0e-0\n", "weight_decay", 0.0),
    ("lr: ' 2e-4 '\n", "lr", 2e-4),
    ("huber_delta: 1e1\n", "huber_delta", 10.0),
    ("batch_size: '8'\n", "batch_size", 8),  # an integer in any spelling: a Snakemake override "8" too
    ("seed: +7\n", "seed", 7),
])  # fmt: skip
def test_yaml_numbers_in_any_spelling_are_numbers(tmp_path, yaml_text, name, want):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    got = getattr(parse_config(["--config", str(path)]), name)
    assert got == want and type(got) is type(want)


def test_number_strings_reach_the_fields_through_from_dict():
    """Snakemake's trainer_overrides and a fold's config.yaml arrive through from_dict untyped."""
    from src.core.config import from_dict

    cfg = from_dict({"lr": "1e-3", "backbone_lr": "1E-5", "batch_size": "4", "folds": [0, 1]})
    assert (cfg.lr, cfg.backbone_lr, cfg.batch_size) == (1e-3, 1e-5, 4) and isinstance(cfg.batch_size, int)
    for bad in ({"lr": "abc"}, {"lr": "nan"}, {"lr": "inf"}, {"batch_size": "4.0"}, {"batch_size": "abc"},
                {"use_depth": "1"}, {"folds": ["0"]}):  # fmt: skip
        with pytest.raises(UserError, match=f"{next(iter(bad))} = "):
            from_dict(bad)
