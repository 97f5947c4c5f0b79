"""The per-view colour table of the multi-crop recipes (BYOL, DINO, iBOT, DINOv2), drawn once, applied in chunks.

Per image: ColorJitter with probability ``jitter_prob``, grayscale with
``grayscale_prob``, Gaussian blur (sigma ~ U[blur_sigma]) and solarization
each with a per-image probability, then normalisation. :meth:`ColourTable.draw`
makes every random choice of a batch up front, on the device of its per-image
probabilities, so how the batch is then cut into pieces changes no output. :meth:`ColourTable.apply` runs on a CPU in chunks of
about ``CHUNK_PIXELS`` pixels, each converted, sent through the whole table and
normalised while it is in cache, computing each op on the images that drew it
only; on an accelerator it runs on the whole batch without a host
synchronisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from graphssl.ops.augment import gaussian_blur, grayscale_, on_images_, solarize_
from graphssl.ops.buffers import BufferPool
from graphssl.ops.jitter import JitterStep, draw_jitter, jitter_steps, run_steps_

CHUNK_PIXELS = 1 << 16  # per chunk of a CPU pass: 768 KB of float RGB, within a core's L2 cache


@dataclass
class ColourDraws:
    """The random choices of n images (index with :meth:`take`)."""

    jitter: torch.Tensor  # bool[n]
    steps: list[JitterStep]  # the jitter's blends and hue shift (:func:`~graphssl.ops.jitter.jitter_steps`)
    grey: torch.Tensor | None  # bool[n], or None: no grayscale op
    sigma: torch.Tensor  # float[n]
    blur: torch.Tensor  # bool[n]
    solarize: torch.Tensor  # bool[n]

    def take(self, index) -> "ColourDraws":
        return ColourDraws(self.jitter[index], [s.take(index) for s in self.steps],
                           None if self.grey is None else self.grey[index], self.sigma[index], self.blur[index],
                           self.solarize[index])


@dataclass(frozen=True)
class ColourTable:
    """The colour, blur and solarize settings of one augmenter (see ``augment.multicrop``)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_prob: float = 0.8
    random_order: bool = True
    grayscale_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    kernel_size: int = 13
    solarize_threshold: float = 0.5

    def draw(self, n: int, channels: int, blur_prob: torch.Tensor, solarize_prob: torch.Tensor) -> ColourDraws:
        """Every choice of n images; ``blur_prob`` and ``solarize_prob`` float[n] are per image."""
        device = blur_prob.device
        jitter, factors, order = draw_jitter(n, device, self.brightness, self.contrast, self.saturation, self.hue,
                                             self.jitter_prob, self.random_order)
        steps = jitter_steps(factors, order, (self.brightness > 0, self.contrast > 0, self.saturation > 0, self.hue > 0))
        grey = None
        if channels > 1 and self.grayscale_prob > 0:
            grey = torch.rand(n, device=device) < self.grayscale_prob
        sigma = torch.empty(n, device=device).uniform_(*self.blur_sigma)
        blur = torch.rand(n, device=device) < blur_prob
        solarize = torch.rand(n, device=device) < solarize_prob
        return ColourDraws(jitter, steps, grey, sigma, blur, solarize)

    def apply(self, views: torch.Tensor, draws: ColourDraws, mean: torch.Tensor, std: torch.Tensor,
              pool: BufferPool | None = None) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] pixels [n,C,H,W] -> the table's views, float, normalised with
        ``mean``/``std`` ([C,1,1]); see :func:`normalise`."""
        gather = views.device.type == "cpu"
        return normalise(views, mean, std, lambda x, part: self._ops(x, draws.take(part), gather), pool)

    def _ops(self, x: torch.Tensor, d: ColourDraws, gather: bool) -> torch.Tensor:
        x = on_images_(x, d.jitter, lambda sub, i: run_steps_(sub, [s.take(i) for s in d.steps], gather), gather)
        if d.grey is not None:
            x = on_images_(x, d.grey, lambda sub, i: grayscale_(sub), gather)
        x = on_images_(x, d.blur, lambda sub, i: gaussian_blur(sub, d.sigma[i], self.kernel_size), gather)
        return on_images_(x, d.solarize, lambda sub, i: solarize_(sub, self.solarize_threshold), gather)


def normalise(views: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              op: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
              pool: BufferPool | None = None) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] pixels [n,C,H,W] -> float (x - mean) / std, with ``op(pixels, images)``
    (float [0, 1] pixels of ``views[images]``, which it may overwrite) applied first.

    On a CPU each chunk of about ``CHUNK_PIXELS`` pixels is converted, given to ``op`` and
    normalised while it is in cache, straight into the one output tensor (from ``pool``
    when given); elsewhere the whole batch is done at once. ``views`` is left as it was.
    """
    dtype = views.dtype if views.is_floating_point() else torch.float32
    mean, std = mean.to(views.device, dtype), std.to(views.device, dtype)
    if views.device.type != "cpu":
        x = views.to(dtype).div_(255) if not views.is_floating_point() else views.clone()
        return (x if op is None else op(x, slice(None))).sub_(mean).div_(std)
    out = torch.empty(views.shape, dtype=dtype) if pool is None else pool.empty(views.shape, dtype)
    per_chunk = max(1, CHUNK_PIXELS // (views.shape[-1] * views.shape[-2]))
    for start in range(0, views.shape[0], per_chunk):
        part = slice(start, start + per_chunk)
        x = out[part].copy_(views[part])
        if not views.is_floating_point():
            x.div_(255)
        if op is not None:
            done = op(x, part)
            if done is not x:
                x.copy_(done)
        x.sub_(mean).div_(std)
    return out
