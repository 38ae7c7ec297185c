"""Depth Anything V2 through transformers: load (hub id or local dir), run on photo halves.

Its output ``predicted_depth`` is relative inverse depth (larger = closer to the camera, i.e.
taller vegetation in a top-view photo), shape (B, H, W), with an arbitrary scale per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.config import DEPTH_HUB_IDS as HUB_IDS
from ..core.errors import UserError

BACKENDS = ("torchvision", "pil")


def model_id(size: str, override: str = "") -> str:
    """The hub id for ``--depth-model-size``, unless a hub id or local directory is given."""
    return override or HUB_IDS[size]


def load(model: str, backend: str, device: torch.device):
    import transformers
    from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

    # transformers 5 names the image backend; 4.x (a Kaggle image's) picks the torchvision one with
    # use_fast: the same resizing, the same depth maps (checked against 4.57.1)
    choice = {"backend": backend} if int(transformers.__version__.split(".")[0]) >= 5 else {
        "use_fast": backend == "torchvision"}
    try:
        processor = AutoImageProcessor.from_pretrained(model, **choice)
        net = DepthAnythingForDepthEstimation.from_pretrained(model).to(device).eval()
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load Depth Anything V2 from {model!r} ({str(exc).splitlines()[0][:160]}); "
            "download it once with network access (huggingface-cli download ID) or pass --model LOCAL_DIR"
        )
    return processor, net


@torch.no_grad()
def predict(processor, net, halves: list[np.ndarray], resolution: int, device: torch.device) -> np.ndarray:
    """RGB uint8 halves -> relative inverse depth (n, resolution, resolution) float32."""
    inputs = processor(images=halves, return_tensors="pt")
    depth = net(pixel_values=inputs["pixel_values"].to(device)).predicted_depth
    depth = F.interpolate(depth[:, None].float(), size=(resolution, resolution), mode="bilinear", align_corners=False)
    return depth[:, 0].cpu().numpy()


def make_tiny(path: str | Path, image_size: int = 56) -> Path:
    """A random-init, ~140k-parameter Depth Anything V2 saved like a hub checkpoint (model +
    image processor), for tests and the offline demo: same code path as the real weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=image_size, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)  # fmt: skip
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                              fusion_hidden_size=16, head_hidden_size=8, patch_size=14)  # fmt: skip
    torch.manual_seed(0)
    path = Path(path)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessor(size={"height": image_size, "width": image_size}, keep_aspect_ratio=True,
                      ensure_multiple_of=14).save_pretrained(path)  # fmt: skip
    return path
