"""MAE's per-sample random mask: a fixed count of masked tokens in every image."""
from __future__ import annotations

import math

import torch
from pydantic import Field

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import IMAGES, TOKEN_MASK
from graphssl.registry import register


def random_token_mask(batch: int, num_tokens: int, ratio: float, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """bool[batch, num_tokens], True = masked, exactly N - int(N * (1 - ratio)) per row.

    As MAE's ``random_masking``: argsort of uniform noise, keep the first
    int(N * (1 - ratio)) positions.
    """
    keep = int(num_tokens * (1 - ratio))
    noise = torch.rand(batch, num_tokens, generator=generator, device=device)
    ids_shuffle = noise.argsort(dim=1)
    mask = torch.ones(batch, num_tokens, dtype=torch.bool, device=device)
    mask.scatter_(1, ids_shuffle[:, :keep], False)
    return mask


@register("mask.random")
class RandomMask(Component):
    """Per-sample uniform random mask with a fixed ratio (MAE: 0.75)."""

    class Config(ComponentConfig):
        ratio: float = Field(0.75, gt=0.0, lt=1.0, description="fraction of tokens masked per image")
        patch_size: int = Field(16, ge=1, description="patch size of the encoder the mask is for")

    inputs = {"images": In(IMAGES, "images whose patch grid is masked")}
    outputs = {"mask": Out(TOKEN_MASK, "bool[*,N], True = masked; the same count in every image")}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        *lead, _, h, w = images.shape
        n = (h // self.config.patch_size) * (w // self.config.patch_size)
        batch = math.prod(lead)
        mask = random_token_mask(batch, n, self.config.ratio, device=images.device).view(*lead, n)
        self.log("mask_ratio", mask.float().mean())
        return {"mask": mask}
