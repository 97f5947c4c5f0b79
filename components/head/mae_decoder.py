"""MAE's decoder: mask tokens for dropped positions, unshuffle, transformer blocks, pixels."""
from __future__ import annotations

from functools import partial

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ops.patches import sincos_2d
from graphssl.ports import PATCHES, TOKEN_MASK, TOKENS, VECTOR
from graphssl.registry import register


def restore_positions(visible: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Put visible tokens back on the grid: float[B,Nv,D] + bool[B,N] -> float[B,N,D].

    Masked positions get ``fill`` float[D]. Visible tokens are in grid order, as
    the encoder's drop path keeps them, so this equals MAE's unshuffle by ids_restore.
    """
    b, n = mask.shape
    full = fill.to(visible.dtype).expand(b, n, -1).clone()
    full[~mask] = visible.reshape(-1, visible.shape[-1])
    return full


@register("head.mae_decoder")
class MAEDecoder(Component):
    """Linear D -> d, mask tokens + fixed 2-D sin-cos positions, ``depth`` blocks, LayerNorm,
    linear d -> p*p*C per patch; the [CLS] prediction is discarded (MAE: d 512, depth 8, 16 heads)."""

    class Config(ComponentConfig):
        embed_dim: int = Field(512, ge=8, description="decoder width")
        depth: int = Field(8, ge=1, description="decoder blocks")
        num_heads: int = Field(16, ge=1)
        mlp_ratio: float = Field(4.0, gt=0)
        patch_size: int = Field(16, ge=1, description="the encoder's patch size")
        in_dim: int = Field(192, ge=8, description="width of the encoder tokens")

    inputs = {
        "cls": In(VECTOR, "encoder [CLS] token"),
        "patches": In(TOKENS, "encoder tokens of the visible patches, in grid order", dims=("Nv", "D")),
        "mask": In(TOKEN_MASK, "the mask the encoder dropped (True = masked)"),
    }
    outputs = {"pred": Out(PATCHES, "predicted pixels of every patch, [*,N,p*p*C]")}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        d = config.embed_dim
        if ctx.image_size % config.patch_size:
            raise ValueError(f"image size {ctx.image_size} is not divisible by patch size {config.patch_size}")
        grid = ctx.image_size // config.patch_size
        self.embed = nn.Linear(config.in_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", sincos_2d(d, grid, grid, cls_token=True)[None], persistent=False)
        self.blocks = nn.Sequential(*[Block(d, config.num_heads, config.mlp_ratio, qkv_bias=True,
                                            norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pred = nn.Linear(d, config.patch_size**2 * ctx.channels)
        self.apply(self._init)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        lead = mask.shape[:-1]
        n = mask.shape[-1]
        if self.pos_embed.shape[1] != n + 1:
            raise ValueError(f"decoder built for {self.pos_embed.shape[1] - 1} tokens, got a mask over {n}")
        vis = self.embed(patches.reshape(-1, *patches.shape[-2:]))
        x = restore_positions(vis, mask.reshape(-1, n), self.mask_token.view(-1))
        x = torch.cat([self.embed(cls.reshape(-1, 1, cls.shape[-1])), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        pred = self.pred(x[:, 1:])
        return {"pred": pred.reshape(*lead, n, pred.shape[-1])}
