"""MAE's loss: mean squared error per patch, averaged over masked patches only."""
from __future__ import annotations

import torch

from graphssl.component import Component, In, Out
from graphssl.ports import LOSS, PATCHES, TOKEN_MASK
from graphssl.registry import register


def mse_masked(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_i m_i * mean_j (pred_ij - target_ij)^2 / sum_i m_i over all images' patches i."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp(min=1.0)


@register("loss.mse_masked")
class MSEMasked(Component):
    """Scalar loss; visible patches get none."""

    inputs = {
        "pred": In(PATCHES, "predicted patches"),
        "target": In(PATCHES, "target patches"),
        "mask": In(TOKEN_MASK, "True = masked = counted"),
    }
    outputs = {"loss": Out(LOSS, "the masked MSE")}

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": mse_masked(pred, target, mask)}
