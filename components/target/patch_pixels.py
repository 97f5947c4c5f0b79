"""Patch-pixel targets: the patchified input pixels (SimMIM), each patch standardised on its own (MAE's norm_pix_loss)."""
from __future__ import annotations

import torch
from pydantic import Field

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ops.patches import patchify
from graphssl.ports import IMAGES, PATCHES
from graphssl.registry import register


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(y - mean) / sqrt(var + eps) per patch, var unbiased (torch's default), as MAE."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


@register("target.patch_pixels")
class PatchPixels(Component):
    """float[*,C,H,W] -> float[*,N,p*p*C]: the pixels of every patch, optionally per-patch normalised."""

    no_grad = True

    class Config(ComponentConfig):
        patch_size: int = Field(16, ge=1)
        norm_pix: bool = Field(True, description="standardise each patch by its own mean and variance (MAE); "
                                                 "false: the data-normalised pixels as they are (SimMIM)")

    inputs = {"images": In(IMAGES, "the images the student saw")}
    outputs = {"target": Out(PATCHES, "target pixels per patch")}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        target = patchify(images, self.config.patch_size)
        return {"target": normalize_patches(target) if self.config.norm_pix else target}
