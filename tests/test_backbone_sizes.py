"""The DINOv3 sizes beyond the guide's (#14): timm's small_plus and 7b, built from their configs."""

import pytest
import torch

from src.core.config import TrainConfig
from src.models.backbone import TIMM_NAMES, create_backbone
from src.models.biomass import BiomassModel


@pytest.mark.guards("--backbone-size")
def test_small_plus_is_timms_small_plus_and_the_model_runs_on_it(fold):
    net = create_backbone("small_plus", "none", 32)
    assert net.pretrained_cfg["architecture"] == "vit_small_plus_patch16_dinov3"
    assert net.num_features == 384 and net.num_prefix_tokens == 5
    assert 28e6 < sum(p.numel() for p in net.parameters()) < 30e6  # not small's 21.6 M
    cfg = TrainConfig(backbone_size="small_plus", backbone_weights="none", image_size=32, use_depth=False,
                      depth_attention=False)  # fmt: skip
    model = BiomassModel(cfg, fold["stats"], fold["extras"])
    assert model.backbone.pretrained_cfg["architecture"] == "vit_small_plus_patch16_dinov3"
    out = model({"image": fold["batch"]["image"][:2]})
    assert out["pred"].shape == (2, 5) and torch.isfinite(out["pred"]).all()


def test_7b_is_timms_7b():
    """Counted on the meta device: 6.7 B parameters would not fit this machine's memory in fp32."""
    with torch.device("meta"):
        net = create_backbone("7b", "none", 512)
    assert TIMM_NAMES["7b"] == "vit_7b_patch16_dinov3"
    assert net.num_features == 4096 and len(net.blocks) == 40
    assert 6.7e9 < sum(p.numel() for p in net.parameters()) < 6.73e9
