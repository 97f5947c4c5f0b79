"""Batched photometric augmentations as tensor ops on the images' device.

Pure functions shared by ``augment.crop`` and ``augment.multicrop`` (the crops
are :mod:`graphssl.ops.crops`). Images are ``float[n,C,H,W]`` with pixels in
[0, 1] (un-normalise first). Every random draw is made with ``torch`` on the
images' device, so ``torch.manual_seed`` makes them repeatable. The ops follow
torchvision's tensor implementations (ColorJitter, RandomGrayscale,
GaussianBlur, RandomSolarize).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """float[n,3,H,W] -> float[n,1,H,W]: 0.2989 R + 0.587 G + 0.114 B (ITU-R 601, as torchvision)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * a + (1 - ratio) * b).clamp(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor: float[n]; clamp(f * x)."""
    return _blend(x, torch.zeros_like(x), _per_image(factor, x))


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level."""
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, _per_image(factor, x))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (identity on one-channel images)."""
    if x.shape[1] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), _per_image(factor, x))


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """float[n,3,H,W] RGB -> HSV, each in [0, 1] (torchvision's formulas: grey pixels get h = s = 0)."""
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    cr = maxc - minc
    eqc = cr == 0
    s = cr / torch.where(eqc, torch.ones_like(maxc), maxc)
    inv = 1.0 / torch.where(eqc, torch.ones_like(cr), cr)
    h = torch.where(maxc == r, (g - b) * inv, torch.where(maxc == g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv))
    h = torch.where(eqc, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """float[n,3,H,W] HSV -> RGB: channel c = v - v s clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 h) mod 6 with
    n = (5, 3, 1) for (R, G, B); the closed form of the six-sector table, one fused expression per channel."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h * 6.0, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift the hue by ``factor`` (a fraction of the colour wheel, in [-0.5, 0.5])."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    h = torch.fmod(hsv[:, 0] + _per_image(factor, hsv[:, 0]) + 1.0, 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 hue: float = 0.1, prob: float = 0.8, random_order: bool = True) -> torch.Tensor:
    """torchvision's ColorJitter applied to each image with probability ``prob``.

    Factors per image: brightness, contrast, saturation ~ U[max(0, 1-v), 1+v],
    hue ~ U[-v, v]. With ``random_order`` each image gets its own random order
    of the four ops (as ColorJitter's per-call ``randperm(4)``); otherwise the
    order is brightness, contrast, saturation, hue. Images not jittered get
    neutral factors; ops whose strength is 0 are skipped. See :func:`jitter_in_order`.
    """
    n, dev = x.shape[0], x.device
    on = torch.rand(n, device=dev) < prob

    def factor(v: float, centre: float) -> torch.Tensor:
        lo = max(0.0, centre - v) if centre == 1.0 else -v
        f = torch.empty(n, device=dev).uniform_(lo, centre + v)
        return torch.where(on, f, torch.full_like(f, centre))

    factors = torch.stack([factor(brightness, 1.0), factor(contrast, 1.0), factor(saturation, 1.0),
                           factor(hue, 0.0)], dim=1)
    active = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    order = torch.rand(n, 4, device=dev).argsort(dim=1) if random_order else None
    return jitter_in_order(x, factors, order, active)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _blend_towards(x: torch.Tensor, op: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """One of brightness (op 0), contrast (1), saturation (2) per image, in one blend.

    All three are clamp(f x + (1 - f) g) with g = 0, the mean grey level, or the grey image;
    ``op`` long[n] picks g per image and ``factor`` float[n] is f (1 leaves an image as it is).
    """
    grey = rgb_to_grayscale(x)
    mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
    op = op.view(-1, 1, 1, 1)
    # on one-channel images grey is the image itself, so saturation is the identity there
    towards = torch.where(op == 2, grey, torch.where(op == 1, mean, torch.zeros_like(mean)))
    f = _per_image(factor, x)
    return (f * x + (1 - f) * towards).clamp(0, 1)


def jitter_in_order(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor | None = None,
                    active: tuple[bool, ...] = (True, True, True, True)) -> torch.Tensor:
    """Apply brightness, contrast, saturation, hue with ``factors`` float[n,4], image i in
    the order ``order[i]`` (long[n,4]: the op index at each position; None = 0, 1, 2, 3).

    Hue (the costly op) runs once on every image; the cheap ops, all blends, run as one
    per-image blend per position (:func:`_blend_towards`): first the positions before each
    image's hue, then hue, then the positions after it; an image whose op at a position
    falls on the other side of its hue gets factor 1 there. No host synchronisation.
    Ops flagged inactive are skipped.
    """
    if order is None:
        for k, fn in enumerate(JITTER_OPS):
            if active[k]:
                x = fn(x, factors[:, k])
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
            f = torch.where(side, cheap.gather(1, op[:, None])[:, 0], torch.ones_like(cheap[:, 0]))
            x = _blend_towards(x, op, f)
        if stage == "before" and active[3]:
            x = adjust_hue(x, factors[:, 3])
    return x


def random_grayscale(x: torch.Tensor, prob: float = 0.2) -> torch.Tensor:
    """Each image becomes grey (kept at C channels) with probability ``prob``."""
    if x.shape[1] == 1 or prob <= 0:
        return x
    pick = _per_image(torch.rand(x.shape[0], device=x.device) < prob, x).bool()
    return torch.where(pick, rgb_to_grayscale(x).expand_as(x), x)


# ----------------------------------------------------------------------------- blur, solarize


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """float[n] -> float[n, kernel_size]: normalised 1-D Gaussians exp(-x^2 / 2 sigma^2)."""
    half = (kernel_size - 1) / 2
    xs = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-(xs[None] ** 2) / (2 * sigma[:, None] ** 2))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, reflect padding (as torchvision's GaussianBlur).

    float[n,C,H,W], sigma float[n]. ``kernel_size`` (odd) is shrunk to fit the image.
    """
    n, c, h, w = x.shape
    kernel_size = min(kernel_size, 2 * (min(h, w) - 1) + 1)
    pad = kernel_size // 2
    k = gaussian_kernels(sigma.to(x.dtype), kernel_size).repeat_interleave(c, dim=0)  # [n*C, K]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), k.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, h, w)


def random_blur(x: torch.Tensor, prob: torch.Tensor, sigma: tuple[float, float], kernel_size: int) -> torch.Tensor:
    """Blur each image with probability ``prob`` (float[n]), sigma ~ U[sigma]."""
    n = x.shape[0]
    s = torch.empty(n, device=x.device).uniform_(sigma[0], sigma[1])
    pick = torch.rand(n, device=x.device) < prob
    return torch.where(_per_image(pick, x).bool(), gaussian_blur(x, s, kernel_size), x)


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels at or above ``threshold``: x >= t -> 1 - x (PIL ImageOps.solarize at 128/255)."""
    return torch.where(x >= threshold, 1.0 - x, x)


def random_solarize(x: torch.Tensor, prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    pick = torch.rand(x.shape[0], device=x.device) < prob
    return torch.where(_per_image(pick, x).bool(), solarize(x, threshold), x)
