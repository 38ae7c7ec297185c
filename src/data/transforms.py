"""Per-half image transforms: split the 2:1 quadrat photo, resize, augment (albumentations).

Halves leave here as uint8 (C, H, W): the model normalises them on its device, which takes that
float work off the data-loading CPUs and moves 4x fewer bytes to the GPU.

Augmentation is seeded per (seed, epoch, image) rather than by worker state, so a run gives the
same pixels under any number of DDP ranks or DataLoader workers, and a resumed run replays them.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

# DINOv3 (timm) expects ImageNet statistics (applied in BiomassModel.normalise).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MEAN_RGB = np.round(np.array(MEAN) * 255).astype(np.uint8)  # ~0 after normalising
BORDER_FRAC = 0.05  # band blanked by --use-border-mask: cardboard frame and edge artifacts


def split_halves(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right halves of an H x W photo (W ~ 2H for the quadrat photos)."""
    mid = img.shape[1] // 2
    return img[:, :mid], img[:, mid:]


def to_square(half: np.ndarray, size: int, pad: bool) -> np.ndarray:
    """Resize a half to size x size; with ``pad`` keep its aspect ratio by zero-padding first."""
    if pad and half.shape[0] != half.shape[1]:
        side = max(half.shape[:2])
        top, left = (side - half.shape[0]) // 2, (side - half.shape[1]) // 2
        half = cv2.copyMakeBorder(half, top, side - half.shape[0] - top, left, side - half.shape[1] - left,
                                  cv2.BORDER_CONSTANT, value=0)
    interp = cv2.INTER_AREA if half.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(half, (size, size), interpolation=interp)


def build_augment(strong: bool, perspective: bool) -> A.Compose:
    """Training augmentation of one square half. Validation never calls this. A depth map passed
    as ``depth`` gets the same geometric transforms as the image and none of the colour ones."""
    ops: list = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if strong:
        ops += [
            A.RandomRotate90(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            A.CLAHE(clip_limit=2.0, p=0.2),
            A.MotionBlur(blur_limit=(3, 5), p=0.2),
        ]
    if perspective:
        # Quadrat corners are hand-annotated; small warps mimic that noise.
        ops.append(A.Perspective(scale=(0.02, 0.05), keep_size=True, p=0.5))
    return A.Compose(ops, additional_targets={"depth": "mask"})


def build_photometric() -> A.Compose:
    """A second lighting of the same view (--use-aos-hallucination): colour and gamma only."""
    return A.Compose([A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=1.0),
                      A.RandomGamma(gamma_limit=(70, 140), p=1.0)])  # fmt: skip


PATCH = 16  # the backbone's patch size: depth features are pooled to its token grid


def depth_patch_features(depth: np.ndarray) -> np.ndarray:
    """(S, S) depth -> (2, S/16, S/16): mean and standard deviation inside each backbone patch."""
    g = depth.shape[0] // PATCH
    blocks = depth[: g * PATCH, : g * PATCH].reshape(g, PATCH, g, PATCH)
    return np.stack([blocks.mean(axis=(1, 3)), blocks.std(axis=(1, 3))]).astype(np.float32)


class HalfTransform:
    """numpy RGB photo (and optional (2, R, R) half depth maps) -> a dict with
    ``image``: left/right halves, uint8 (2, 3, S, S); ``depth``: per-patch depth features
    (2, 2, S/16, S/16) aligned with the pixels; ``aos_view``: the same halves under another
    lighting (training with ``aos`` only)."""

    def __init__(self, size: int, train: bool, strong_aug: bool = True, perspective: bool = False,
                 border_mask: bool = False, pad_to_square: bool = False, aos: bool = False):
        self.size, self.train, self.border_mask, self.pad = size, train, border_mask, pad_to_square
        self.augment = build_augment(strong_aug, perspective) if train else None
        self.photometric = build_photometric() if train and aos else None

    def __call__(self, img: np.ndarray, seed: int = 0, depth: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        return self.from_halves([to_square(h, self.size, self.pad) for h in split_halves(img)], seed, depth)

    def from_halves(self, squares, seed: int = 0, depth: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The same, from halves already split and resized (an image cache's rows)."""
        halves, feats, relit = [], [], []
        for k, half in enumerate(squares):
            half = np.ascontiguousarray(half)
            d = None
            if depth is not None:
                d = cv2.resize(depth[k].astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            if self.augment is not None:
                self.augment.set_random_seed(seed * 2 + k)  # each half gets its own draw
                out = self.augment(image=half, **({} if d is None else {"depth": d}))
                half, d = out["image"], out.get("depth")
            halves.append(self._chw(half))
            if d is not None:
                feats.append(depth_patch_features(d))
            if self.photometric is not None:
                self.photometric.set_random_seed(seed * 2 + k + 1_000_003)
                relit.append(self._chw(self.photometric(image=half)["image"]))
        out = {"image": torch.from_numpy(np.stack(halves))}
        if feats:
            out["depth"] = torch.from_numpy(np.stack(feats))
        if relit:
            out["aos_view"] = torch.from_numpy(np.stack(relit))
        return out

    def _chw(self, half: np.ndarray) -> np.ndarray:
        if self.border_mask:
            half = half.copy()
            b = max(1, int(round(BORDER_FRAC * self.size)))
            half[:b], half[-b:], half[:, :b], half[:, -b:] = MEAN_RGB, MEAN_RGB, MEAN_RGB, MEAN_RGB
        return np.ascontiguousarray(half.transpose(2, 0, 1))
