"""DINOv2's KoLeo regulariser (LOSS.koleo): spread features over the sphere.

Per view (each global crop, per process, as DINOv2):

    z_i = x_i / ||x_i||,   L_view = - mean_i log(||z_i - z_nn(i)|| + 1e-8)

with nn(i) the nearest other sample (largest inner product). DINOv2 applies
it to the student backbone [CLS] (before the head) and sums over the 2 global
crops (``reduction: sum``); its weight 0.1 belongs in the objective.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import LOSS, VECTOR
from graphssl.registry import register


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x float[*,B,D] -> float[*]: the KoLeo loss of each set of B vectors."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        z = F.normalize(x.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            dots = z @ z.transpose(-1, -2)  # [*,B,B]
            eye = torch.eye(z.shape[-2], dtype=torch.bool, device=z.device)
            nn_index = dots.masked_fill(eye, float("-inf")).argmax(dim=-1)  # [*,B]
        neighbours = torch.gather(z, -2, nn_index[..., None].expand_as(z))
        distances = F.pairwise_distance(z, neighbours, p=2, eps=eps)  # as torch.nn.PairwiseDistance(2, eps)
        return -torch.log(distances + eps).mean(-1)


@register("loss.koleo")
class KoLeoLoss(Component):
    """Kozachenko-Leonenko entropy estimator on L2-normalised features, per view."""

    class Config(ComponentConfig):
        reduction: Literal["sum", "mean"] = Field("sum", description="over views: sum (DINOv2) or mean")

    inputs = {"features": In(VECTOR, "features [V,B,D] or [B,D], e.g. the student backbone [CLS]")}
    outputs = {"loss": Out(LOSS, "KoLeo loss, summed (or averaged) over views")}

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if features.shape[-2] < 2:
            raise ValueError(f"KoLeo needs at least 2 samples per view, got shape {tuple(features.shape)}")
        per_view = koleo_loss(features).reshape(-1)
        return {"loss": per_view.sum() if self.config.reduction == "sum" else per_view.mean()}
