"""Per-image geometry in the loader workers: crops from the original, the evaluation transform.

A crop box is drawn as torchvision's ``RandomResizedCrop.get_params`` does,
relative to the original image's area and aspect ratio (up to 10 draws, then
the largest centred crop with the ratio clamped), cut from the full-resolution
decode and resized with PIL (antialiased) to the view's side; the flip is
drawn with it. Randomness comes from a ``random.Random`` seeded by (seed,
step, image index), so a view never depends on which worker made it.
"""
from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image

from graphssl.data.decode import pixels
from graphssl.ops.crops import CropPlan

RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def sample_rng(seed: int, step: int, index: int) -> random.Random:
    """The random stream of one image at one step (a pure function of the three numbers)."""
    return random.Random((seed * 1_000_003 + step) * 4_294_967_311 + index)


def crop_box(rng: random.Random, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float], attempts: int = 10) -> tuple[int, int, int, int]:
    """(top, left, h, w) in pixels of the original, RandomResizedCrop's rule."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def cut_views(img: Image.Image, plan: CropPlan, rng: random.Random) -> list[np.ndarray]:
    """One uint8[count,C,size,size] array per view group of ``plan``, cut from ``img``."""
    out = []
    for group in plan.groups:
        views = np.empty((group.count, len(img.getbands()), group.size, group.size), dtype=np.uint8)
        for v in range(group.count):
            top, left, h, w = crop_box(rng, img.height, img.width, group.scale, group.ratio)
            view = img.resize((group.size, group.size), RESAMPLE[group.interpolation], box=(left, top, left + w, top + h))
            if rng.random() < group.flip_prob:
                view = view.transpose(Image.FLIP_LEFT_RIGHT)
            views[v] = pixels(view)
        out.append(views)
    return out


def centre_view(img: Image.Image, size: int, crop_fraction: float) -> np.ndarray:
    """uint8[C,size,size]: the shorter side resized to size / crop_fraction (bicubic), then the centre crop.

    As the papers' evaluation transform (Resize(256) + CenterCrop(224) at 224 px, fraction 0.875).
    """
    short = max(size, int(round(size / crop_fraction)))
    w, h = img.size
    if w <= h:
        nw, nh = short, max(short, int(short * h / w))
    else:
        nw, nh = max(short, int(short * w / h)), short
    img = img.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return pixels(img.crop((left, top, left + size, top + size)))
