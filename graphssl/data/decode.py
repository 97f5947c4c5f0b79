"""Decoding one image file the same way everywhere: EXIF rotation, 16-bit, palette and CMYK handled."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from graphssl.data.common import BadImage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def decode(source: bytes | str | Path, channels: int, name: str = "") -> Image.Image:
    """The image as an 8-bit PIL image, "RGB" (channels 3) or "L" (channels 1), upright.

    EXIF orientation is applied; 16- and 32-bit integer images (16-bit PNGs)
    are scaled to 8 bits (not clipped); palette images go through RGBA, so a
    transparent palette entry still gets its colour; CMYK (JPEGs from print
    workflows) is converted by PIL. Raises BadImage naming the file.
    """
    label = name or str(source) if not isinstance(source, bytes) else name or "<bytes>"
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        img.load()
        img = ImageOps.exif_transpose(img)
        return to_8bit(img, channels)
    except BadImage:
        raise
    except Exception as e:
        raise BadImage(f"cannot decode image {label}: {type(e).__name__}: {e}") from None


def to_8bit(img: Image.Image, channels: int) -> Image.Image:
    mode = "RGB" if channels == 3 else "L"
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode != "F" or a.max() > 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif img.mode == "P":
        img = img.convert("RGBA")
    if img.mode != mode:
        img = img.convert(mode)
    return img


def pixels(img: Image.Image) -> np.ndarray:
    """uint8[C,H,W] of an "RGB" or "L" image."""
    a = np.asarray(img)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
