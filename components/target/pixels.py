"""SimMIM's target: the (data-normalised) input image, cut into patches, with no per-patch norm."""
from __future__ import annotations

import torch
from pydantic import Field

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ops.patches import patchify
from graphssl.ports import IMAGES, PATCHES
from graphssl.registry import register


@register("target.pixels")
class PixelTarget(Component):
    """images float[*,C,H,W] -> target float[*,N,p*p*C], patchify layout (p_row, p_col, C)."""

    no_grad = True

    class Config(ComponentConfig):
        patch_size: int = Field(16, ge=1, description="encoder patch size p")

    inputs = {"images": In(IMAGES, "the images the encoder saw, before masking")}
    outputs = {"target": Out(PATCHES, "pixels of each patch")}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"target": patchify(images, self.config.patch_size)}
