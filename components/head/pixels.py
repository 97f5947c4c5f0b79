"""SimMIM's prediction head: one linear map per token from D to the p*p*C pixels of its patch.

SimMIM writes it as a 1x1 convolution D -> p*p*C followed by a pixel shuffle
to the image; per token that is exactly a linear layer, and the pixel-shuffle
layout is a fixed permutation of its outputs. This head emits the patches in
graphssl's patchify layout, (p_row, p_col, C), so the target is ``target.patch_pixels`` (``norm_pix: false``).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ports import PATCHES, TOKENS
from graphssl.registry import register


@register("head.pixels")
class PixelHead(Component):
    """tokens float[*,N,D] -> pred float[*,N,p*p*C] (C: the data's channels)."""

    class Config(ComponentConfig):
        in_dim: int = Field(ge=1, description="width D of the input tokens (the encoder's embed_dim)")
        patch_size: int = Field(16, ge=1, description="encoder patch size p (SimMIM's encoder_stride)")

    inputs = {"tokens": In(TOKENS, "encoder patch tokens, all N (mask_mode replace)")}
    outputs = {"pred": Out(PATCHES, "predicted pixels per patch, patchify layout")}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        self.proj = nn.Linear(config.in_dim, config.patch_size**2 * ctx.channels)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": self.proj(tokens)}
