"""Batched photometric augmentations as tensor ops on the images' device.

Pure functions shared by ``augment.crop`` and ``augment.multicrop`` (the crops
are :mod:`graphssl.ops.crops`, the per-view colour table that applies them in
cache-sized chunks is :mod:`graphssl.ops.photometric`). Images are
``float[n,C,H,W]`` with pixels in [0, 1] (un-normalise first). Every random
draw is made with ``torch`` on the images' device, so ``torch.manual_seed``
makes them repeatable. The ops follow torchvision's tensor implementations
(ColorJitter, RandomGrayscale, GaussianBlur, RandomSolarize).

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
    one-channel images, whose grey image is the image itself. On a CPU the grey image is
    made only when some image is desaturated (the mean grey level is then the channel
    means' weighted sum).
    """
    op, f = op.view(-1, 1, 1, 1), _per_image(factor, x)
    grey = None
    if x.shape[1] == 1:
        f = torch.where(op == 2, torch.ones_like(f), f)
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    elif not x.is_cpu or bool((op == 2).any()):
        grey = rgb_to_grayscale(x)
        mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
    else:
        means = x.mean(dim=(-2, -1), keepdim=True)
        mean = rgb_to_grayscale(means)
    w = 1 - f
    offset = torch.where(op == 1, w * mean, torch.zeros_like(mean))
    torch.addcmul(offset, x, f, out=x)
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


def draw_jitter(n: int, device: torch.device, brightness: float = 0.4, contrast: float = 0.4,
                saturation: float = 0.2, hue: float = 0.1, prob: float = 0.8,
                random_order: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ColorJitter's draws for n images: (jittered bool[n], factors float[n,4], order long[n,4] or None).

    brightness, contrast, saturation ~ U[max(0, 1-v), 1+v], hue ~ U[-v, v]; images not
    jittered get neutral factors. With ``random_order`` each image gets its own order of
    the four ops (ColorJitter's per-call ``randperm(4)``).
    """
    on = torch.rand(n, device=device) < prob

    def factor(v: float, centre: float) -> torch.Tensor:
        lo = max(0.0, centre - v) if centre == 1.0 else -v
        f = torch.empty(n, device=device).uniform_(lo, centre + v)
        return torch.where(on, f, torch.full_like(f, centre))

    factors = torch.stack([factor(brightness, 1.0), factor(contrast, 1.0), factor(saturation, 1.0),
                           factor(hue, 0.0)], dim=1)
    order = torch.rand(n, 4, device=device).argsort(dim=1) if random_order else None
    return on, factors, order


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 hue: float = 0.1, prob: float = 0.8, random_order: bool = True) -> torch.Tensor:
    """torchvision's ColorJitter applied to each image with probability ``prob`` (see :func:`draw_jitter`);
    ops whose strength is 0 are skipped. x is left as it was."""
    on, factors, order = draw_jitter(x.shape[0], x.device, brightness, contrast, saturation, hue, prob, random_order)
    active = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    gather = x.device.type == "cpu"
    return on_images_(x.clone(), on, lambda sub, i: jitter_in_order_(sub, factors[i], None if order is None else order[i],
                                                                     active, gather), gather)


def jitter_in_order_(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor | None = None,
                     active: tuple[bool, ...] = (True, True, True, True), gather: bool | None = None) -> torch.Tensor:
    """Apply brightness, contrast, saturation, hue with ``factors`` float[n,4], image i in
    the order ``order[i]`` (long[n,4]: the op index at each position; None = 0, 1, 2, 3), in place.

    Hue (the costly op) runs once per image; the cheap ops, all blends, run as one
    per-image blend per position (:func:`blend_`): first the positions before each
    image's hue, then hue, then the positions after it. At each position only the
    images whose op there falls on that side of their hue are blended (gathered on a
    CPU; elsewhere the others get factor 1, without a host synchronisation). Ops
    flagged inactive are skipped.
    """
    gather = x.device.type == "cpu" if gather is None else gather
    if order is None:
        for k, fn in enumerate(JITTER_OPS):
            if active[k]:
                x = hue_(x, factors[:, 3]) if k == 3 else blend_(x, torch.full_like(factors[:, 0], k).long(), factors[:, k])
        return x
    if not active[3]:  # hue inactive: its position does not matter
        order = torch.cat([order[order != 3].view(-1, 3), order[:, :1].new_full((order.shape[0], 1), 3)], dim=1)
    hue_pos = order.argsort(dim=1)[:, 3]
    skip = torch.tensor([not a for a in active[:3]], device=factors.device)
    cheap = factors[:, :3].masked_fill(skip, 1.0)  # factor 1: an inactive op leaves the image as it is
    stages = (("before", range(0, 3)), ("after", range(1, 4))) if active[3] else (("before", range(0, 3)),)
    for stage, positions in stages:
        for position in positions:
            side = position < hue_pos if stage == "before" else position > hue_pos
            op = order[:, position].clamp(max=2)  # 3 (hue) only where ``side`` is False
            f = cheap.gather(1, op[:, None])[:, 0]
            x = on_images_(x, side, lambda sub, i: blend_(sub, op[i], f[i]), gather)
        if stage == "before" and active[3]:
            x = hue_(x, factors[:, 3])
    return x


def jitter_in_order(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor | None = None,
                    active: tuple[bool, ...] = (True, True, True, True), gather: bool | None = None) -> torch.Tensor:
    """:func:`jitter_in_order_` on a copy of x."""
    return jitter_in_order_(x.clone(), factors, order, active, gather)


def grayscale_(x: torch.Tensor) -> torch.Tensor:
    """x <- its grey image, kept at C channels, in place."""
    return x if x.shape[1] == 1 else x.copy_(rgb_to_grayscale(x).expand_as(x))


# ----------------------------------------------------------------------------- blur, solarize


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """float[n] -> float[n, kernel_size]: normalised 1-D Gaussians exp(-x^2 / 2 sigma^2), weights under 1e-12 zeroed."""
    half = (kernel_size - 1) / 2
    xs = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-(xs[None] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    # weights this small change no pixel, but subnormal ones would slow every multiply by them many times over
    return k.masked_fill(k < 1e-12, 0.0)


def _taps(padded: torch.Tensor, weights: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """sum_i weights[:, i] * padded.narrow(dim, i, size): one kernel tap per pass (faster than a grouped conv on CPUs)."""
    w = weights.view(weights.shape[0], 1, 1, 1, -1)
    out = padded.narrow(dim, 0, size) * w[..., 0]
    for i in range(1, weights.shape[1]):
        out.addcmul_(padded.narrow(dim, i, size), w[..., i])
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, reflect padding (as torchvision's GaussianBlur).

    float[n,C,H,W], sigma float[n]. ``kernel_size`` (odd) is shrunk to fit the image.
    """
    n, c, h, w = x.shape
    kernel_size = min(kernel_size, 2 * (min(h, w) - 1) + 1)
    pad = kernel_size // 2
    k = gaussian_kernels(sigma.to(x.dtype), kernel_size)  # [n, K]
    y = _taps(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k, 3, w)
    return _taps(F.pad(y, (0, 0, pad, pad), mode="reflect"), k, 2, h)


def solarize_(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels at or above ``threshold``, in place: x >= t -> 1 - x (PIL ImageOps.solarize at 128/255)."""
    return x.addcmul_(_at_least(x, threshold), x.mul(-2.0).add_(1.0))


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """:func:`solarize_` on a copy of x."""
    return solarize_(x.clone(), threshold)
