"""Batched photometric augmentations as tensor ops on the images' device.

Pure functions shared by ``augment.crop`` and ``augment.multicrop`` (the crops
are :mod:`graphssl.ops.crops`, ColorJitter's batched draws and op orders
:mod:`graphssl.ops.jitter`, the per-view colour table that applies them in
cache-sized chunks :mod:`graphssl.ops.photometric`). Images are
``float[n,C,H,W]`` with pixels in [0, 1] (un-normalise first); per-image
parameters come as tensors, drawn by the callers. The ops follow torchvision's
tensor implementations (ColorJitter, RandomGrayscale, GaussianBlur,
RandomSolarize).

Functions ending in ``_`` overwrite their input (and return it); they exist
because on a CPU every fresh full-batch tensor costs its page faults, which
outweigh the arithmetic of these ops.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _at_least(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """float 1.0 where x >= threshold, else 0.0 (arithmetic: comparisons and ``torch.where`` are slow on CPUs)."""
    return (x - threshold).sign_().add_(1.0).clamp_(max=1.0)


def on_images_(x: torch.Tensor, pick: torch.Tensor, op: Callable[[torch.Tensor, object], torch.Tensor],
               gather: bool) -> torch.Tensor:
    """x with ``op`` applied to the images where ``pick`` (bool[n]); ``op(images, index)`` may overwrite
    its ``images`` and reads its per-image parameters as ``param[index]``.

    gather=True (CPUs): only the picked images are computed, gathered and written back into x (the
    index is found on the host). gather=False (accelerators): every image is computed and
    ``torch.where`` keeps the picked ones, without a host synchronisation; x is left as it was.
    """
    if not gather:
        return torch.where(_per_image(pick, x).bool(), op(x.clone(), slice(None)), x)
    index = pick.nonzero()[:, 0]
    if index.numel() == x.shape[0]:
        out = op(x, slice(None))
        return out if out is x else x.copy_(out)
    if index.numel():
        x.index_copy_(0, index, op(x.index_select(0, index), index))
    return x


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """float[n,3,H,W] -> float[n,1,H,W]: 0.2989 R + 0.587 G + 0.114 B (ITU-R 601, as torchvision)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def blend_(x: torch.Tensor, op: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Brightness (op 0), contrast (1) or saturation (2) per image, in place: x <- clamp(f x + (1 - f) g).

    g is 0, the image's mean grey level, or its grey image; ``op`` long[n] picks g and
    ``factor`` float[n] is f (1 leaves an image as it is). Saturation is the identity on
    one-channel images, whose grey image is the image itself. The mean grey level is the
    channel means' weighted sum (the grey image's mean, without making it); on a CPU the
    terms no image needs are skipped, which changes no image's result.
    """
    op, f = op.view(-1, 1, 1, 1), _per_image(factor, x)
    if x.shape[1] == 1:
        f = torch.where(op == 2, torch.ones_like(f), f)
    some = (lambda k: True) if not x.is_cpu else (lambda k: bool((op == k).any()))
    grey = rgb_to_grayscale(x) if x.shape[1] == 3 and some(2) else None
    w = 1 - f
    offset = None
    if some(1):
        mean = rgb_to_grayscale(x.mean(dim=(-2, -1), keepdim=True))
        offset = torch.where(op == 1, w * mean, torch.zeros_like(mean))
    x.mul_(f)  # (an addcmul into x with per-image f and offset is several times slower on CPUs)
    if offset is not None:
        x.add_(offset)
    if grey is not None:
        x.addcmul_(grey, torch.where(op == 2, w, torch.zeros_like(w)))
    return x.clamp_(0, 1)


def _blend(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    return blend_(x.clone(), torch.full((x.shape[0],), op, device=x.device), factor)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor: float[n]; clamp(f * x)."""
    return _blend(x, 0, factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level."""
    return _blend(x, 1, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (identity on one-channel images)."""
    return _blend(x, 2, factor)


_PEAK_OFFSETS = (6.0, 4.0, 2.0)  # R, G, B: where each channel's ramp sits on the hue wheel, in sixths of a turn


def _is_max(channel: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """float 1.0 where ``channel`` equals the per-pixel maximum ``top`` (channel <= top everywhere), else 0.0."""
    return (channel - top).sign_().add_(1.0)


def hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float[n,3,H,W] by ``shift`` float[n] turns, in place (one-channel images unchanged).

    HSV's round trip in closed form, with arithmetic only (comparisons and ``torch.where`` are
    slow on CPUs): v = max, c = max - min (= v s) and h6 the hue in sixths of a turn by
    torchvision's sector formulas (R before G before B on ties), reduced to [0, 6). Channel
    k becomes v - c clamp(2 - d_k, 0, 1), d_k the distance from h6 + (6, 4, 2)_k to the nearer of 3 and 9
    (the HSV table's v - v s clamp(min(k', 4 - k'), 0, 1), k' = (n_k + h6) mod 6, n = (5, 3, 1)).
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    top = x.amax(dim=1)
    bottom = x.amin(dim=1)
    chroma = top - bottom
    h = (r - g).add_(chroma, alpha=4.0)  # c * h6 where blue is the maximum
    h.add_((b - r).add_(chroma, alpha=2.0).sub_(h).mul_(_is_max(g, top)))  # green
    h.add_((g - b).sub_(h).mul_(_is_max(r, top)))  # red
    h.div_(chroma.clamp_min(1e-12)).add_(_per_image(shift, h), alpha=6.0)  # grey pixels: 0 / tiny = 0
    h.sub_(torch.floor(h / 6.0).mul_(6.0))
    wheel = h.unsqueeze(1) + torch.tensor(_PEAK_OFFSETS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    distance = wheel.sub_(6.0).abs_().sub_(3.0).abs_()  # to the nearer of 3 and 9, for wheel in [0, 12]
    rise = distance.sub_(1.0).clamp_(0.0, 1.0)  # 1 - clamp(2 - d, 0, 1)
    return torch.addcmul(bottom.unsqueeze(1), chroma.unsqueeze(1), rise, out=x)  # v - c (1 - rise)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift the hue by ``factor`` (a fraction of the colour wheel, in [-0.5, 0.5])."""
    return hue_(x.clone(), factor)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def grayscale_(x: torch.Tensor) -> torch.Tensor:
    """x <- its grey image, kept at C channels, in place."""
    return x if x.shape[1] == 1 else x.copy_(rgb_to_grayscale(x).expand_as(x))


# ----------------------------------------------------------------------------- blur, solarize


NEGLIGIBLE_WEIGHT = 1e-9  # all of a kernel's weights under this sum to less than half a float32 step at 0.5


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """float[n] -> float[n, kernel_size]: normalised 1-D Gaussians exp(-x^2 / 2 sigma^2), negligible weights zeroed
    (subnormal ones would also slow every multiply by them many times over)."""
    half = (kernel_size - 1) / 2
    xs = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-(xs[None] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    return k.masked_fill(k < NEGLIGIBLE_WEIGHT, 0.0)


def _taps(padded: torch.Tensor, weights: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """sum_i weights[:, i] * padded.narrow(dim, i, size): one kernel tap per pass (faster than a grouped conv on CPUs)."""
    w = weights.view(weights.shape[0], 1, 1, 1, -1)
    out = padded.narrow(dim, 0, size) * w[..., 0]
    for i in range(1, weights.shape[1]):
        out.addcmul_(padded.narrow(dim, i, size), w[..., i])
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, reflect padding (as torchvision's GaussianBlur).

    float[n,C,H,W], sigma float[n]. ``kernel_size`` (odd) is shrunk to fit the image; on a CPU
    also to the taps some image weighs (a small sigma needs few).
    """
    n, c, h, w = x.shape
    kernel_size = min(kernel_size, 2 * (min(h, w) - 1) + 1)
    k = gaussian_kernels(sigma.to(x.dtype), kernel_size)  # [n, K]
    if x.is_cpu:
        unused = int((k == 0).all(dim=0).int().argmin())  # zero taps at each end (the kernels are symmetric)
        k = k[:, unused:kernel_size - unused]
    pad = k.shape[1] // 2
    y = _taps(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k, 3, w)
    return _taps(F.pad(y, (0, 0, pad, pad), mode="reflect"), k, 2, h)


def solarize_(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels at or above ``threshold``, in place: x >= t -> 1 - x (PIL ImageOps.solarize at 128/255)."""
    return x.addcmul_(_at_least(x, threshold), x.mul(-2.0).add_(1.0))


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """:func:`solarize_` on a copy of x."""
    return solarize_(x.clone(), threshold)
