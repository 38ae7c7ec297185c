"""--feature-layers: the model's tokens are the mean of the chosen blocks' normalised outputs, in
the live path and in the frozen-feature cache alike (both go through BiomassModel.tokens)."""

import pytest
import torch

from src.core.config import TrainConfig
from src.core.errors import UserError
from src.models.biomass import BiomassModel

TINY = dict(backbone_size="tiny", backbone_weights="none", image_size=32, use_depth=False, depth_attention=False)


def _model(fold, **kw):
    torch.manual_seed(0)
    model = BiomassModel(TrainConfig(**TINY, **kw), fold["stats"], fold["extras"]).eval()
    # DINOv3's LayerScale starts at 1e-5, so two random blocks' outputs differ by about 1e-5 and a
    # wrong block passes a tolerance; at 1, as after training, each block changes the tokens.
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if "gamma" in name:
                p.fill_(1.0)
    return model


@pytest.mark.guards("--feature-layers")
def test_tokens_are_the_mean_of_the_chosen_blocks(fold):
    x = fold["batch"]["image"][:3]
    last, both = _model(fold), _model(fold, feature_layers=[0, -1])
    flat = last.normalise(x.flatten(0, 1))
    blocks = [torch.cat([pre, sp], 1) for sp, pre in last.backbone.forward_intermediates(
        flat, indices=[0, 1], norm=True, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)]
    with torch.no_grad():
        cls_last, patches_last = last.tokens(x)
        cls_both, patches_both = both.tokens(x)
    torch.testing.assert_close(patches_last, blocks[1][:, 5:], rtol=1e-5, atol=1e-5)  # default: the last block
    torch.testing.assert_close(patches_both, (blocks[0][:, 5:] + blocks[1][:, 5:]) / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls_both, (blocks[0][:, 0] + blocks[1][:, 0]) / 2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(patches_both, patches_last)


def test_a_block_the_backbone_lacks_is_refused(fold):
    with pytest.raises(UserError, match="--feature-layers \\[2\\]: this backbone has blocks 0..1"):
        _model(fold, feature_layers=[2])
