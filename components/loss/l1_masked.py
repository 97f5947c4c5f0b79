"""SimMIM's loss: L1 between predicted and target pixels, averaged over masked pixels and channels."""
from __future__ import annotations

import torch
from pydantic import Field

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ports import LOSS, PATCHES, TOKEN_MASK
from graphssl.registry import register


def l1_masked(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, channels: int,
              eps: float = 1e-5) -> torch.Tensor:
    """sum_m |x - x_hat| / (C * (M + eps)), M = masked pixel positions (SimMIM's forward).

    pred, target float[*,N,P] with P = p*p*C; mask bool[*,N]. SimMIM writes
    (loss * mask).sum() / (mask.sum() + 1e-5) / C with a pixel mask of H x W
    positions; a masked token has P / C of them.
    """
    m = mask.to(pred.dtype).unsqueeze(-1)
    masked_pixels = mask.sum().to(pred.dtype) * (pred.shape[-1] // channels)
    return ((pred - target).abs() * m).sum() / (masked_pixels + eps) / channels


@register("loss.l1_masked")
class L1MaskedLoss(Component):
    """pred, target float[*,N,p*p*C], mask bool[*,N] -> loss: mean L1 over masked pixels (SimMIM)."""

    class Config(ComponentConfig):
        eps: float = Field(1e-5, ge=0.0, description="added to the masked-pixel count (SimMIM 1e-5)")

    inputs = {
        "pred": In(PATCHES, "predicted pixels per patch"),
        "target": In(PATCHES, "target pixels per patch, same layout"),
        "mask": In(TOKEN_MASK, "True = masked: only these patches count"),
    }
    outputs = {"loss": Out(LOSS, "scalar")}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        self.channels = ctx.channels

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": l1_masked(pred, target, mask, self.channels, self.config.eps)}
