"""One view per image: RandomResizedCrop + horizontal flip (MAE, SimMIM, EVA).

images float[B,C,H,W] (normalised) -> images float[B,C,S,S]. Batched on the
images' device: one affine grid + ``grid_sample`` for the whole batch.
Optional colour jitter (BEiT's ColorJitter(0.4, 0.4, 0.4)) is off by default;
when on, pixels are un-normalised with ``mean``/``std``, jittered in [0, 1],
and normalised again.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, field_validator

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ops.buffers import BufferPool
from graphssl.ops.crops import CropPlan, ViewGroup, precut_views, resized_crops
from graphssl.ops.jitter import draw_jitter, jitter_steps, run_steps_
from graphssl.ops.photometric import normalise
from graphssl.ports import IMAGES
from graphssl.registry import register


@register("augment.crop")
class Crop(Component):
    """Batched RandomResizedCrop (scale 0.2-1, ratio 3/4-4/3, bicubic) + flip p 0.5."""

    class Config(ComponentConfig):
        size: Optional[int] = Field(None, ge=1, description="output side S; default: data.image_size")
        scale: tuple[float, float] = Field((0.2, 1.0), description="crop area range, fraction of the image "
                                           "(MAE/EVA 0.2-1, SimMIM 0.67-1)")
        ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="aspect ratio range (log-uniform)")
        flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
        interpolation: Literal["bicubic", "bilinear", "nearest"] = Field("bicubic", description="resampling")
        color_jitter: float = Field(0.0, ge=0.0, description="brightness = contrast = saturation strength "
                                    "(BEiT 0.4); 0 = off")
        mean: Optional[list[float]] = Field(None, description="per-channel mean the images were normalised "
                                            "with (only used by colour jitter); default: the data's, else ImageNet")
        std: Optional[list[float]] = Field(None, description="per-channel std, as mean")

        @field_validator("scale", "ratio")
        @classmethod
        def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
            if not 0 < v[0] <= v[1]:
                raise ValueError(f"expected 0 < low <= high, got {v}")
            return v

    inputs = {"images": In(IMAGES, "normalised images [B,C,H,W]")}
    outputs = {"images": Out(IMAGES, "one augmented view per image [B,C,S,S]", dims=("C", "S", "S"))}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        self.size = config.size or ctx.image_size
        self.plan = self.plan_crops(config, ctx.image_size)
        self.output_memory = BufferPool()  # reused from step to step on a CPU
        mean = config.mean or getattr(ctx.data, "mean", None) or (0.485, 0.456, 0.406)
        std = config.std or getattr(ctx.data, "std", None) or (0.229, 0.224, 0.225)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    @classmethod
    def plan_crops(cls, config: Config, image_size: int) -> CropPlan:
        """The one view's geometry (a streaming data path cuts it from the original image)."""
        c = config
        return CropPlan((ViewGroup(1, c.size or image_size, c.scale, c.ratio, c.flip_prob, c.interpolation),))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        ch = images.shape[1]
        mean, std = self.mean[:ch].to(images.device), self.std[:ch].to(images.device)
        cut = precut_views(images, self.plan)
        if cut is not None:  # cut from the original by the data path (uint8)
            pixels = cut[0][0]
        else:
            views = resized_crops(images, 1, self.size, c.scale, c.ratio, c.flip_prob, c.interpolation)[0]
            if c.color_jitter == 0:
                return {"images": views}
            pixels = (views * std + mean).clamp(0, 1)
        if c.color_jitter == 0:
            return {"images": normalise(pixels, mean, std, pool=self.output_memory)}
        v = c.color_jitter  # ColorJitter(v, v, v) on every image, drawn once for the batch
        _, factors, order = draw_jitter(pixels.shape[0], images.device, v, v, v, 0.0, prob=1.0)
        steps = jitter_steps(factors, order, (True, True, True, False))

        def jitter(x: torch.Tensor, part: slice) -> torch.Tensor:
            return run_steps_(x, [s.take(part) for s in steps])

        return {"images": normalise(pixels, mean, std, jitter, self.output_memory)}
