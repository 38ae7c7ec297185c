"""--lora-rank / --lora-blocks: peft LoRA adapters on the last blocks of the backbone; only they
(and the heads) train, the backbone's own weights stay as loaded, and the checkpoint loads in
prediction without a flag."""

import pytest
import torch
from safetensors.torch import load_file

from src.core.config import TrainConfig, validate
from src.core.errors import UserError
from src.inference.predictor import load_fold_models
from src.training import run as run_module

TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)


def _run(data, out, **kw):
    settings = dict(data_dir=str(data), fold_csv=str(data / "trainfold_group_location.csv"), output_dir=str(out),
                    folds=[0], freeze_epochs=1, stage1_patience=5, batch_size=8, num_workers=0, device="cpu",
                    lora_rank=4, lora_blocks=1, backbone_lr=1e-2, **TINY)  # fmt: skip
    run_module.run(TrainConfig(**{**settings, **kw}))
    return load_file(str(out / "fold0/last.safetensors"))


@pytest.mark.guards("--lora-rank", "--lora-blocks")
def test_only_the_adapters_of_the_last_blocks_train(demo_data, tmp_path):
    start = _run(demo_data, tmp_path / "frozen", stage2_epochs=0)  # Stage 1 only: the backbone as built
    tuned = _run(demo_data, tmp_path / "lora", stage2_epochs=2)
    lora = [k for k in tuned if ".lora_" in k]
    assert lora and all(k.startswith("backbone.blocks.1.") for k in lora)  # the last block only (of 2)
    assert {k.split(".lora_")[0] for k in lora} == {f"backbone.blocks.1.{m}" for m in ("attn.qkv", "attn.proj",
                                                                                    "mlp.fc1", "mlp.fc2")}
    for k in tuned:
        if k.startswith("backbone.") and ".lora_" not in k:
            assert torch.equal(tuned[k], start[k]), k  # the backbone's own weights never moved
    assert all(float(start[k].abs().max()) == 0 for k in lora if ".lora_B." in k)  # adapters start as no change
    assert any(float(tuned[k].abs().max()) > 0 for k in lora if ".lora_B." in k)  # and then learnt


def test_a_lora_checkpoint_predicts_without_a_flag(demo_data, tmp_path, predicts_its_oof):
    _run(demo_data, tmp_path / "m", stage2_epochs=1)
    assert load_fold_models(tmp_path / "m", "cpu")[0][1].lora_rank == 4
    predicts_its_oof(tmp_path / "m", demo_data)


@pytest.mark.parametrize("kw, words", [(dict(lora_rank=-1), "--lora-rank"), (dict(lora_blocks=0), "--lora-blocks")])
def test_bad_lora_values_are_refused(kw, words):
    with pytest.raises(UserError, match=words):
        validate(TrainConfig(**kw), "cli")


def test_more_blocks_than_the_backbone_has_is_one_clear_line(demo_data, tmp_path):
    with pytest.raises(UserError, match="--lora-blocks 3: this backbone has 2 blocks"):
        _run(demo_data, tmp_path / "x", stage2_epochs=1, lora_blocks=3)


def test_the_7b_memory_estimate_counts_the_real_adapters():
    """benchmarks/lora_memory.py on the real 7B shapes: rank x (in + out) per adapted Linear."""
    from benchmarks.lora_memory import estimate

    rows = estimate(rank=16, blocks=4, batch=4)
    per_block = 16 * ((4096 + 12288) + (4096 + 4096) + 2 * (4096 + 8192) + (8192 + 4096))  # qkv, proj, SwiGLU fc1 x2, fc2
    assert rows["adapter parameters (M)"] == pytest.approx(4 * per_block / 1e6)
    assert rows["backbone parameters (B)"] == pytest.approx(6.716, abs=1e-3)
    assert rows["total today, fp32 frozen weights (GB)"] < 80  # one 80 GB GPU
