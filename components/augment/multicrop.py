"""Multi-crop views with the BYOL colour/blur/solarize table (DINO, iBOT, DINOv2).

images float[B,C,H,W] (normalised) ->
  global float[Vg,B,C,S,S]  (S = global_size)
  local  float[Vl,B,C,s,s]  (s = local_size; only when n_local > 0)

Per view, as DINO's DataAugmentationDINO: RandomResizedCrop (bicubic, ratio
3/4-4/3; global_scale or local_scale), flip p 0.5, ColorJitter(0.4, 0.4, 0.2,
0.1) with p 0.8 (the four ops in a random order per image, as torchvision),
grayscale p 0.2, Gaussian blur sigma ~ U[0.1, 2] with a per-view probability,
solarization (x >= 0.5 -> 1 - x) with a per-view probability, then
re-normalisation. Colour ops act on [0, 1] pixels: the input is un-normalised
with ``mean``/``std`` first (and clamped, as PIL's uint8 images are).

Per-view probabilities (``blur_prob``, ``solarize_prob``) are lists: one value
per global view then one for all local views (length n_global + 1), or one
value per view (length n_global + n_local). Nominal DINO/iBOT table:
blur [1.0, 0.1, 0.5], solarize [0.0, 0.2, 0.0]. DINOv2's code effectively
blurs with [0.0, 0.9, 0.5] (methods.md 9.3 item 5): write that list to
reproduce it.

All views of one resolution are made by one ``grid_sample`` call and come out
as one tensor, so they go through the encoder in one call. Logs nothing.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import Field, field_validator, model_validator

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ops.buffers import BufferPool
from graphssl.ops.photometric import ColourTable
from graphssl.ops.crops import CropPlan, ViewGroup, precut_views, resized_crops
from graphssl.ports import IMAGES
from graphssl.registry import register


def per_view(values: list[float], n_global: int, n_local: int) -> list[float]:
    """Expand a [globals..., locals] list (length Vg + 1) or a per-view list (Vg + Vl) to Vg + Vl values."""
    if len(values) == n_global + n_local:
        return list(values)
    if len(values) == n_global + 1:
        return list(values[:n_global]) + [values[n_global]] * n_local
    raise ValueError(f"expected {n_global + 1} values (one per global view, then one for the local views) "
                     f"or {n_global + n_local} (one per view), got {len(values)}")


@register("augment.multicrop")
class MultiCrop(Component):
    """2 global + N local crops, each with flip, colour jitter, grayscale, blur and solarize."""

    class Config(ComponentConfig):
        n_global: int = Field(2, ge=1, description="number of global views (the teacher's views)")
        n_local: int = Field(8, ge=0, description="number of local views (DINO/DINOv2 8, iBOT recipe 10)")
        global_size: Optional[int] = Field(None, ge=1, description="global crop side; default: data.image_size (224)")
        local_size: Optional[int] = Field(None, ge=1, description="local crop side; default: round(global_size * 96 / 224)")
        global_scale: tuple[float, float] = Field((0.4, 1.0), description="global crop area range "
                                                  "(DINO 0.4-1, iBOT 0.25-1, DINOv2 0.32-1)")
        local_scale: tuple[float, float] = Field((0.05, 0.4), description="local crop area range "
                                                 "(DINO 0.05-0.4, iBOT 0.05-0.25, DINOv2 0.05-0.32)")
        ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="crop aspect ratio range (log-uniform)")
        interpolation: Literal["bicubic", "bilinear"] = Field("bicubic", description="crop resampling")
        flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
        brightness: float = Field(0.4, ge=0.0, description="jitter: brightness factor ~ U[1-v, 1+v]")
        contrast: float = Field(0.4, ge=0.0, description="jitter: contrast factor ~ U[1-v, 1+v]")
        saturation: float = Field(0.2, ge=0.0, description="jitter: saturation factor ~ U[1-v, 1+v]")
        hue: float = Field(0.1, ge=0.0, le=0.5, description="jitter: hue shift ~ U[-v, v]")
        jitter_prob: float = Field(0.8, ge=0.0, le=1.0, description="probability of colour jitter per image")
        jitter_random_order: bool = Field(True, description="random order of the 4 jitter ops per image "
                                          "(torchvision); false: brightness, contrast, saturation, hue")
        grayscale_prob: float = Field(0.2, ge=0.0, le=1.0, description="probability of converting to grey")
        blur_prob: list[float] = Field([1.0, 0.1, 0.5], description="blur probability per view: globals in "
                                       "order then locals (DINOv2's effective values: [0.0, 0.9, 0.5])")
        blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Gaussian sigma range in pixels")
        blur_kernel_size: Optional[int] = Field(None, ge=1, description="odd kernel side (DINOv2: 9); "
                                                "default 2*ceil(3*max sigma)+1 (PIL's blur is untruncated)")
        solarize_prob: list[float] = Field([0.0, 0.2, 0.0], description="solarize probability per view, as blur_prob")
        solarize_threshold: float = Field(0.5, ge=0.0, le=1.0, description="on [0,1] pixels (PIL: 128/255)")
        mean: Optional[list[float]] = Field(None, description="per-channel mean the input was normalised with; "
                                            "default: the data's, else ImageNet's")
        std: Optional[list[float]] = Field(None, description="per-channel std, as mean")

        @field_validator("global_scale", "local_scale", "ratio", "blur_sigma")
        @classmethod
        def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
            if not 0 < v[0] <= v[1]:
                raise ValueError(f"expected 0 < low <= high, got {v}")
            return v

        @field_validator("blur_prob", "solarize_prob")
        @classmethod
        def _probs(cls, v: list[float]) -> list[float]:
            if any(not 0.0 <= p <= 1.0 for p in v):
                raise ValueError(f"probabilities must lie in [0, 1], got {v}")
            return v

        @field_validator("blur_kernel_size")
        @classmethod
        def _odd(cls, v: Optional[int]) -> Optional[int]:
            if v is not None and v % 2 == 0:
                raise ValueError(f"the blur kernel side must be odd, got {v}")
            return v

        @model_validator(mode="after")
        def _lengths(self) -> "MultiCrop.Config":
            per_view(self.blur_prob, self.n_global, self.n_local)
            per_view(self.solarize_prob, self.n_global, self.n_local)
            return self

    inputs = {"images": In(IMAGES, "normalised images [B,C,H,W]")}
    outputs = {
        "global": Out(IMAGES, "global views [Vg,B,C,S,S]", dims=("C", "S", "S"), batch=None),
        "local": Out(IMAGES, "local views [Vl,B,C,s,s] (absent when n_local = 0)", dims=("C", "s", "s"), batch=None),
    }

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        c = config
        self.global_size = c.global_size or ctx.image_size
        self.local_size = c.local_size or max(1, round(self.global_size * 96 / 224))
        self.plan = self.plan_crops(c, ctx.image_size)
        self.kernel_size = c.blur_kernel_size or 2 * math.ceil(3 * c.blur_sigma[1]) + 1
        self.output_memory = BufferPool()  # reused from step to step on a CPU
        self.colour = ColourTable(c.brightness, c.contrast, c.saturation, c.hue, c.jitter_prob, c.jitter_random_order,
                                  c.grayscale_prob, c.blur_sigma, self.kernel_size, c.solarize_threshold)
        mean = c.mean or getattr(ctx.data, "mean", None) or (0.485, 0.456, 0.406)
        std = c.std or getattr(ctx.data, "std", None) or (0.229, 0.224, 0.225)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        blur = per_view(c.blur_prob, c.n_global, c.n_local)
        sol = per_view(c.solarize_prob, c.n_global, c.n_local)
        self.register_buffer("blur_prob", torch.tensor(blur), persistent=False)
        self.register_buffer("solarize_prob", torch.tensor(sol), persistent=False)

    @classmethod
    def plan_crops(cls, config: Config, image_size: int) -> CropPlan:
        """The global and local views' geometry (a streaming data path cuts them from the original image)."""
        c = config
        global_size = c.global_size or image_size
        local_size = c.local_size or max(1, round(global_size * 96 / 224))
        groups = [ViewGroup(c.n_global, global_size, c.global_scale, c.ratio, c.flip_prob, c.interpolation)]
        if c.n_local > 0:
            groups.append(ViewGroup(c.n_local, local_size, c.local_scale, c.ratio, c.flip_prob, c.interpolation))
        return CropPlan(tuple(groups))

    def _views(self, cropped: torch.Tensor, first: int) -> torch.Tensor:
        """Cropped pixels [n,B,C,S,S] (uint8, or float in [0, 1]) -> normalised float [n,B,C,S,S];
        ``first`` indexes the per-view tables."""
        n, b, ch = cropped.shape[:3]
        blur = self.blur_prob[first:first + n].repeat_interleave(b)  # view-major, as the crops
        sol = self.solarize_prob[first:first + n].repeat_interleave(b)
        draws = self.colour.draw(n * b, ch, blur, sol)
        views = self.colour.apply(cropped.flatten(0, 1), draws, self.mean[:ch], self.std[:ch], self.output_memory)
        return views.view(cropped.shape)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        ch = images.shape[1]
        if self.mean.shape[0] not in (1, ch) and self.mean.shape[0] < ch:
            raise ValueError(f"mean/std have {self.mean.shape[0]} channels, images have {ch}")
        cut = precut_views(images, self.plan)  # [global, local] when the data path cut them from the originals
        pixels = None if cut is not None else images * self.std[:ch].to(images) + self.mean[:ch].to(images)

        def cropped(group: int, n: int, size: int, scale: tuple[float, float]) -> torch.Tensor:
            if cut is not None:
                return cut[group]
            return resized_crops(pixels, n, size, scale, c.ratio, c.flip_prob, c.interpolation).clamp(0, 1)

        out = {"global": self._views(cropped(0, c.n_global, self.global_size, c.global_scale), 0)}
        if c.n_local > 0:
            out["local"] = self._views(cropped(1, c.n_local, self.local_size, c.local_scale), c.n_global)
        return out
