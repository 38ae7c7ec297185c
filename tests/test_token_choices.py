"""Flags re-decided on the pre-trained demo backbone (#27, benchmarks/defaults.py): which tokens the
density head and the auxiliary heads read, whether the auxiliary loss reaches the backbone through
CLS, and the LoRA adapters' own learning rate."""

import pytest
import torch

from src.core.config import LORA_LR_MULT, TrainConfig, validate
from src.core.errors import UserError
from src.models.biomass import BiomassModel
from src.training.optim import build_optimizer

TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)
guards = pytest.mark.guards


def _model(fold, **kw):
    torch.manual_seed(0)
    model = BiomassModel(TrainConfig(**TINY, **kw), fold["stats"], fold["extras"]).eval()
    with torch.no_grad():  # start_at zeroes the heads' last layers: every input would give the same mass
        for p in [*model.head.parameters(), *model.aux.parameters()]:
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _tokens(seed: int, b: int = 4, n: int = 4, d: int = 32, cls=None, patches=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"cls": torch.randn(b, 2, d, generator=g) if cls is None else cls,
            "patches": torch.randn(b, 2, n, d, generator=g) if patches is None else patches}  # fmt: skip


def _moves(model, key: str, change: str) -> bool:
    """Does output ``key`` change when only the CLS tokens (or only the patch tokens) change?"""
    a = _tokens(0)
    b = _tokens(1, cls=a["cls"]) if change == "patches" else _tokens(1, patches=a["patches"])
    with torch.no_grad():
        return not torch.allclose(model(a)[key], model(b)[key])


@guards("--density-tokens")
def test_the_density_head_reads_the_cls_token_only_with_cls_patch(fold):
    assert not _moves(_model(fold, density_tokens="patch"), "pred", "cls")
    assert _moves(_model(fold), "pred", "cls")  # the default since #27
    assert _moves(_model(fold, density_tokens="cls_patch"), "pred", "patches")


def test_a_checkpoint_saved_before_density_tokens_existed_loads_as_it_was_trained(fold, tmp_path):
    """Its config.yaml has no density_tokens: the head read patch tokens only (today's default
    would build a head twice as wide, and its weights would not load)."""
    import yaml

    from src.training.checkpoint import load_config, load_weights, save_weights

    old = _model(fold, density_tokens="patch")
    save_weights(old, tmp_path / "best.safetensors", old.cfg, fold["extras"])
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["density_tokens"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = load_config(tmp_path)
    assert cfg.density_tokens == "patch"
    load_weights(BiomassModel(cfg, extras=fold["extras"], weights="none"), tmp_path / "best.safetensors")


@guards("--aux-tokens")
@pytest.mark.parametrize("tokens, reads", [("cls_patch", {"cls", "patches"}), ("patch", {"patches"}), ("cls", {"cls"})])
def test_the_auxiliary_heads_read_what_aux_tokens_names(fold, tokens, reads):
    model = _model(fold, use_height_head=True, aux_tokens=tokens)
    assert {c for c in ("cls", "patches") if _moves(model, "height", c)} == reads


@guards("--aux-cls-grad", "--no-aux-cls-grad")
@pytest.mark.parametrize("grad", [True, False])
def test_without_aux_cls_grad_the_auxiliary_loss_leaves_the_cls_token_alone(fold, grad):
    model = _model(fold, use_height_head=True, aux_cls_grad=grad).train()
    batch = _tokens(0)
    batch["cls"].requires_grad_(True)
    batch["patches"].requires_grad_(True)
    model(batch)["height"].square().sum().backward()
    assert (batch["cls"].grad is not None and float(batch["cls"].grad.abs().sum()) > 0) == grad
    assert float(batch["patches"].grad.abs().sum()) > 0  # the patch path is never cut


def _backbone_lr(**kw) -> float:
    cfg = TrainConfig(**TINY, lr=1e-3, backbone_lr=2e-4, **kw)
    model = BiomassModel(cfg)
    opt = build_optimizer(model, cfg, train_backbone=True)
    return max(g["lr"] for g in opt.param_groups if g["name"] == "backbone")


@guards("--lora-lr")
def test_the_adapters_train_at_lora_lr():
    assert _backbone_lr() == pytest.approx(2e-4)  # full fine-tuning: --backbone-lr
    assert _backbone_lr(lora_rank=4, lora_blocks=1) == pytest.approx(LORA_LR_MULT * 2e-4)  # the documented multiple
    assert _backbone_lr(lora_rank=4, lora_blocks=1, lora_lr=5e-3) == pytest.approx(5e-3)
    assert _backbone_lr(lora_lr=5e-3) == pytest.approx(2e-4)  # no adapters: --lora-lr has nothing to set


def test_a_negative_lora_lr_is_refused():
    with pytest.raises(UserError, match="--lora-lr"):
        validate(TrainConfig(lora_lr=-1.0), "cli")
