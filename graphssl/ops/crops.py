"""Crops: RandomResizedCrop's geometry, batched, and the crop plans a data path may cut for an augmenter.

Images are ``float[n,C,H,W]``; every random draw is made with ``torch`` on the
images' device. The box sampling follows torchvision's RandomResizedCrop.get_params.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- crop plans


@dataclass(frozen=True)
class ViewGroup:
    """``count`` views of side ``size``: RandomResizedCrop(scale, ratio) + flip, resampled with ``interpolation``."""

    count: int
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_prob: float
    interpolation: str


@dataclass(frozen=True)
class CropPlan:
    """The geometric part of an augmenter: what a data path may cut from the original images for it.

    A streaming data path delivers the views of a plan pre-cut (in its loader
    workers, from the full-resolution decode) as ``images.precut[plan]``; the
    augmenter then skips its own crop and applies only the batched ops.
    """

    groups: tuple[ViewGroup, ...]


def precut_views(images: torch.Tensor, plan: CropPlan) -> list[torch.Tensor] | None:
    """uint8[count,B,C,size,size] pixels per group of ``plan``, if the data path cut them; else None."""
    cut = getattr(images, "precut", None)
    if not cut or plan not in cut:
        return None
    return list(cut[plan])


# ----------------------------------------------------------------------------- crops


def sample_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """RandomResizedCrop's box sampling, batched: float[n, 4] = (top, left, h, w) in pixels.

    As torchvision's ``RandomResizedCrop.get_params``: up to ``attempts`` draws of
    area ~ U(scale) * H * W and aspect ratio log-uniform in ``ratio``; h and w are
    rounded to whole pixels; the first draw that fits is used, at a uniformly
    random integer offset. If none fits: the largest centred crop whose ratio is
    clamped to ``ratio``.
    """
    area = height * width
    target = area * torch.empty(n, attempts, device=device).uniform_(scale[0], scale[1])
    log_r = torch.empty(n, attempts, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_r.exp()
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first fitting draw (0 if none)
    w = w.gather(1, first)[:, 0]
    h = h.gather(1, first)[:, 0]
    any_fit = fits.any(dim=1)
    top = (torch.rand(n, device=device) * (height - h + 1)).floor()
    left = (torch.rand(n, device=device) * (width - w + 1)).floor()
    # Fallback: centre crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    fb = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=w.dtype, device=device)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(any_fit[:, None], boxes, fb)


def crop_theta(boxes: torch.Tensor, height: int, width: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """float[n,2,3] affine matrices for ``F.affine_grid(..., align_corners=False)``.

    Maps the output grid onto the box (top, left, h, w) of an H x W image, so that
    output pixel centres are spread over the box as a resize of the cropped
    region would place them; ``flip`` (bool[n]) mirrors the crop horizontally.
    """
    top, left, h, w = boxes.unbind(-1)
    sx, sy = w / width, h / height
    cx = (left + w / 2) / width * 2 - 1
    cy = (top + h / 2) / height * 2 - 1
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, cx], -1), torch.stack([zero, sy, cy], -1)], dim=-2)


def resized_crops(images: torch.Tensor, n_views: int, size: int, scale: tuple[float, float],
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_prob: float = 0.5,
                  mode: str = "bicubic") -> torch.Tensor:
    """``n_views`` independent RandomResizedCrop + horizontal flip of every image.

    float[B,C,H,W] -> float[n_views,B,C,size,size]. One ``grid_sample`` call for
    all views: their sampling grids are stacked along the output height, so the
    input is never copied per view. No antialiasing (as torchvision on tensors
    with ``antialias=False``); bicubic may overshoot the input range slightly.
    """
    b, c, height, width = images.shape
    n = n_views * b
    boxes = sample_crop_boxes(n, height, width, scale, ratio, device=images.device)  # view-major: [V*B]
    flip = torch.rand(n, device=images.device) < flip_prob
    theta = crop_theta(boxes, height, width, flip).to(images.dtype)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)  # [V*B,S,S,2]
    grid = grid.view(n_views, b, size, size, 2).permute(1, 0, 2, 3, 4).reshape(b, n_views * size, size, 2)
    out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)  # [B,C,V*S,S]
    return out.view(b, c, n_views, size, size).permute(2, 0, 1, 3, 4).contiguous()


# ----------------------------------------------------------------------------- colour (pixels in [0, 1])
