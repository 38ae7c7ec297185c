"""Photo cleaning applied once, as a photo is decoded, the same way for the image cache, the depth
cache, training and prediction: the camera's orange date stamp painted out (--clean-date-stamp)
and a bottom strip cut off (--crop-bottom FRACTION).

About a quarter of the real photos carry the stamp in the bottom-right corner; a model can learn
from it (the date says the season), which does not carry over to new photos. A cache made with
other cleaning is a different file (``PhotoPrep.tag`` is part of its folder name).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Where the stamp is (fractions of the photo from the bottom-right corner) and what orange means
# in OpenCV HSV (H 0..180): the stamps are saturated, bright orange; dry grass and litter are
# duller (on the demo photos: ~1400 stamp pixels with a stamp, 0 without).
STAMP_BOX = (0.45, 0.18)  # width, height
STAMP_HSV_LO, STAMP_HSV_HI = (5, 200, 200), (25, 255, 255)
STAMP_DILATE_PX = 3  # the anti-aliased glyph edges are less saturated than their cores
INPAINT_RADIUS = 5


@dataclass(frozen=True)
class PhotoPrep:
    clean_date_stamp: bool = False
    crop_bottom: float = 0.0

    @classmethod
    def of(cls, cfg) -> PhotoPrep:
        return cls(bool(cfg.clean_date_stamp), float(cfg.crop_bottom))

    @property
    def tag(self) -> str:
        """Folder-name suffix of the caches made with this cleaning ("" for none)."""
        return ("_nostamp" if self.clean_date_stamp else "") + (f"_crop{self.crop_bottom:g}" if self.crop_bottom else "")

    @classmethod
    def from_tag(cls, tag: str) -> PhotoPrep:
        crop = tag.split("_crop", 1)[1] if "_crop" in tag else "0"
        return cls("_nostamp" in tag, float(crop))

    def flags(self) -> list[str]:
        """The CLI flags of the cache builders and the trainer that ask for this cleaning."""
        out = ["--clean-date-stamp"] if self.clean_date_stamp else []
        return out + (["--crop-bottom", f"{self.crop_bottom:g}"] if self.crop_bottom else [])

    def settings(self) -> dict[str, str]:
        return {"clean_date_stamp": str(self.clean_date_stamp), "crop_bottom": f"{self.crop_bottom:g}"}

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        if self.clean_date_stamp:
            rgb = clean_stamp(rgb)
        if self.crop_bottom:
            rgb = rgb[: max(1, round(rgb.shape[0] * (1 - self.crop_bottom)))]
        return rgb


def stamp_mask(rgb: np.ndarray) -> np.ndarray:
    """H x W bool: the stamp's pixels (orange, inside the bottom-right box), dilated a little."""
    h, w = rgb.shape[:2]
    y0, x0 = int(h * (1 - STAMP_BOX[1])), int(w * (1 - STAMP_BOX[0]))
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb[y0:, x0:]), cv2.COLOR_RGB2HSV)
    core = cv2.inRange(hsv, STAMP_HSV_LO, STAMP_HSV_HI)
    if STAMP_DILATE_PX:
        core = cv2.dilate(core, np.ones((2 * STAMP_DILATE_PX + 1,) * 2, np.uint8))
    mask = np.zeros((h, w), bool)
    mask[y0:, x0:] = core > 0
    return mask


def clean_stamp(rgb: np.ndarray) -> np.ndarray:
    """The photo with the stamp's pixels inpainted from their surroundings (Telea); unchanged
    (the same array) when there is no stamp."""
    mask = stamp_mask(rgb)
    if not mask.any():
        return rgb
    return cv2.inpaint(np.ascontiguousarray(rgb), mask.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA)
