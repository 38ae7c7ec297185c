"""Quadrat photos: one decoder and one orientation everywhere (training, caches, depth, prediction),
and a photo that cannot be fully decoded is one line naming it, before any training starts.

PIL decodes, with its EXIF orientation applied (the photo as a viewer shows it), so a size check
and the halves cut from it agree. PIL raises on a cut or corrupt JPEG body, where OpenCV returned
flat grey or noise without a word.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import UserError
from ..core.progress import progress
from .photo_prep import PhotoPrep

# 100 MP: more than any camera's quadrat photo (the real ones are 2 MP); bigger is a bomb or a scan.
MAX_PIXELS = 100_000_000
ASPECT_RANGE = (1.6, 2.5)  # width / height of the real photos is 2
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_BAD = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


def _fix(path: Path, what: str) -> UserError:
    return UserError(f"photo {path}: {what}; replace the file (a cut or damaged copy?) or drop its rows")


def _open(path: str | Path, decode: bool) -> tuple[tuple[int, int], np.ndarray | None]:
    """(width, height) as decoded (after EXIF orientation) from the header, its limits checked
    before any pixel is decoded; with ``decode`` also the H x W x 3 uint8 RGB pixels. One open."""
    if not Path(path).is_file():
        raise UserError(f"photo {path}: file not found; add the file or drop its rows")
    try:
        with Image.open(path) as im:
            w, h = im.size
            rotated = im.getexif().get(0x0112, 1) in _ROTATED
            if w < 32 or h < 16:
                raise UserError(f"photo {path}: {w}x{h} is too small for a quadrat photo (at least 32x16); replace it "
                                "or drop its rows")  # fmt: skip
            if w * h > MAX_PIXELS:
                raise UserError(f"photo {path}: {w}x{h} is {w * h / 1e6:.0f} MP, more than the {MAX_PIXELS // 10**6} MP "
                                "any quadrat photo needs; resize it (the model sees 512 px halves) or drop its rows")  # fmt: skip
            size = (h, w) if rotated else (w, h)
            if not decode:
                return size, None
            try:  # writable: torch and transformers take it as is
                ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of a photo that needs no turn
                return size, np.array(im if im.mode == "RGB" else im.convert("RGB"))
            except _BAD as exc:
                raise _fix(Path(path), f"cannot be decoded ({_first(exc)})")
    except Image.DecompressionBombError as exc:
        raise UserError(f"photo {path}: {_first(exc)}, far more than any quadrat photo needs; resize it or drop its rows")
    except _BAD as exc:
        raise _fix(Path(path), f"not a readable image ({_first(exc)})")


def photo_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as decoded (after EXIF orientation), from the header alone."""
    return _open(path, decode=False)[0]


def read_rgb(path: str | Path, prep: PhotoPrep | None = None) -> np.ndarray:
    """H x W x 3 uint8 RGB, fully decoded, EXIF orientation applied, then ``prep``'s cleaning."""
    rgb = _open(path, decode=True)[1]
    return rgb if prep is None else prep.apply(rgb)


def _first(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]


def check_photos(data_dir: str | Path, images: pd.DataFrame, decode: bool = True, warn: bool = True,
                 each: Callable[[int, np.ndarray], None] | None = None) -> list[tuple[int, int]]:  # fmt: skip
    """Every photo's size; with ``decode`` each is fully decoded once (a damaged one stops here,
    not in epoch 7) and handed to ``each(row, rgb)`` (RGB as ``read_rgb`` without cleaning: the
    trainer's in-memory image cache is filled in this same pass). Warns once when photos are far
    from the 2:1 of the quadrat photos."""
    paths = [Path(data_dir) / rel for rel in images["image_path"]]
    sizes = []
    for i, p in enumerate(progress(paths, desc="checking photos", unit="img", disable=not decode or len(paths) < 50)):
        size, rgb = _open(p, decode)
        sizes.append(size)
        if each is not None and rgb is not None:
            each(i, rgb)
    odd = [(i, w, h) for i, (w, h) in zip(images["image_id"], sizes) if not ASPECT_RANGE[0] <= w / h <= ASPECT_RANGE[1]]
    if odd and warn:
        i, w, h = odd[0]
        print(f"warning: {len(odd)} of {len(paths)} photos are far from 2:1 (e.g. {i}: {w}x{h}); each is cut into a "
              "left and right half, so a rotated or cropped photo gives halves of another shape "
              "(--use-pad-to-square keeps their shape)", flush=True)  # fmt: skip
    return sizes
