"""BEiT's target: the code ids of a frozen image tokenizer, one per student patch.

The tokenizer comes from ``ctx.load_module(source)``: a module an earlier
stage trained ("STAGE.NODE", e.g. a ``tokenizer.vqvae`` node) or a checkpoint
path. It is used by duck typing: ``encode(images float[B,C,H,W]) -> long[B,N]``
(argmax / nearest code per position; BEiT: the DALL-E dVAE's argmax). It is
frozen, kept in eval mode and run without gradients.

The tokenizer's grid must be the student's: N must equal
(H_s / patch_size) * (W_s / patch_size) for the student's view (``like``, or
the same ``images``); otherwise a ValueError names both grids. BEiT feeds the
tokenizer a half-size view (112 px, 8x downsampling) of the student's 224 px
crop (16x16 patches): both give 14x14.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ops.grid import check_grid, grid_text
from graphssl.ports import IMAGES, TOKEN_IDS
from graphssl.registry import register


@register("target.tokenizer")
class TokenizerTarget(Component):
    """images float[*,C,H,W] -> target long[*,N]: the frozen tokenizer's code id per patch."""

    no_grad = True

    class Config(ComponentConfig):
        source: str = Field(description='the tokenizer: "STAGE.NODE" of an earlier stage, or a checkpoint path')
        patch_size: int = Field(16, ge=1, description="the student's patch size, to check the grids align")

    inputs = {
        "images": In(IMAGES, "the tokenizer's view (BEiT: the 112 px copy of the crop)"),
        "like": In(IMAGES, "the student's view, read only for the grid check (default: images)", optional=True,
                   dims=("C", "Hs", "Ws")),
    }
    outputs = {"target": Out(TOKEN_IDS, "code id per patch")}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        if ctx.load_module is None:
            raise ValueError("target.tokenizer needs a module loader (ctx.load_module) to load its source")
        tokenizer = ctx.load_module(config.source)
        if not callable(getattr(tokenizer, "encode", None)):
            raise TypeError(f"the tokenizer {config.source!r} ({type(tokenizer).__name__}) has no encode(images) method")
        self.tokenizer: nn.Module = tokenizer.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "TokenizerTarget":
        super().train(mode)
        self.tokenizer.eval()  # frozen: never in training mode
        return self

    def forward(self, images: torch.Tensor, like: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        lead = images.shape[:-3]
        with torch.no_grad():
            ids = self.tokenizer.encode(images.reshape(-1, *images.shape[-3:]))
        ids = ids.reshape(*lead, -1)
        n = ids.shape[-1]
        check_grid(n, "tokenizer grid " + grid_text(images, getattr(self.tokenizer, "patch_size", None), n),
                   images if like is None else like, self.config.patch_size)
        return {"target": ids}
