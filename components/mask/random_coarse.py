"""SimMIM's random mask on a coarse grid of mask_patch_size cells, upsampled to the token grid.

As SimMIM's ``MaskGenerator`` (microsoft/SimMIM data/data_simmim.py): the image
is cut into (H / mask_patch_size) x (W / mask_patch_size) cells,
ceil(ratio * cells) of them are drawn uniformly without replacement, and each
masked cell masks the (mask_patch_size / patch_size)^2 tokens it covers.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import IMAGES, TOKEN_MASK
from graphssl.registry import register


def coarse_grid(height: int, width: int, mask_patch_size: int, patch_size: int) -> tuple[int, int, int]:
    """(cells_h, cells_w, scale): the coarse grid and the tokens per cell side; ValueError if they do not tile."""
    if mask_patch_size % patch_size:
        raise ValueError(f"mask_patch_size {mask_patch_size} must be a multiple of the encoder's patch_size {patch_size}")
    if height % mask_patch_size or width % mask_patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by mask_patch_size {mask_patch_size}")
    return height // mask_patch_size, width // mask_patch_size, mask_patch_size // patch_size


def random_coarse_mask(batch: int, cells_h: int, cells_w: int, scale: int, ratio: float,
                       generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool[batch, cells_h*scale * cells_w*scale], True = masked, row-major token grid.

    Exactly ceil(ratio * cells) cells per image are masked, i.e.
    ceil(ratio * cells) * scale^2 tokens, aligned to the scale x scale cells.
    """
    cells = cells_h * cells_w
    count = math.ceil(cells * ratio)
    noise = torch.rand(batch, cells, generator=generator, device=device)
    chosen = noise.argsort(dim=1)[:, :count]
    mask = torch.zeros(batch, cells, dtype=torch.bool, device=device).scatter_(1, chosen, True)
    mask = mask.view(batch, cells_h, 1, cells_w, 1).expand(batch, cells_h, scale, cells_w, scale)
    return mask.reshape(batch, cells_h * scale * cells_w * scale)


@register("mask.random_coarse")
class RandomCoarseMask(Component):
    """SimMIM's mask: images float[*,C,H,W] -> mask bool[*,N], N = (H/patch_size)*(W/patch_size).

    The same count, ceil(ratio * cells) * (mask_patch_size/patch_size)^2 tokens, in every image.
    """

    class Config(ComponentConfig):
        ratio: float = Field(0.6, gt=0.0, lt=1.0, description="fraction of coarse cells masked (SimMIM 0.6)")
        mask_patch_size: int = Field(32, ge=1, description="side in pixels of one coarse mask cell (SimMIM 32)")
        patch_size: int = Field(16, ge=1, description="patch size of the encoder the mask is for")

    inputs = {"images": In(IMAGES, "images whose patch grid is masked")}
    outputs = {"mask": Out(TOKEN_MASK, "bool[*,N], True = masked, in whole coarse cells")}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        *lead, _, h, w = images.shape
        cells_h, cells_w, scale = coarse_grid(h, w, self.config.mask_patch_size, self.config.patch_size)
        mask = random_coarse_mask(math.prod(lead), cells_h, cells_w, scale, self.config.ratio, device=images.device)
        mask = mask.view(*lead, mask.shape[-1])
        self.log("mask_ratio", mask.float().mean())
        return {"mask": mask}
