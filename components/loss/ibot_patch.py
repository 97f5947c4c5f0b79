"""iBOT's masked-patch soft cross-entropy (LOSS.softCE_patch): iBOT, DINOv2.

For every student view v paired with the teacher's output for the same view:

    H_vbi = - < P_t(v)_bi , log softmax(s(v)_bi / tau_s) >
    L     = mean_{v,b} [ sum_i m_vbi H_vbi / max(1, sum_i m_vbi) ]     (normalize: per_image)

so images without masked patches count as 0 in the mean. iBOT (mean over
images per view, then over views) and DINOv2 (weight 1/n_masked per token,
sum, / number of images, unmasked images included) are the same number when
the views hold equally many images. ``normalize: per_token`` instead averages
over all masked tokens of the batch (BEiT-style pooling).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import LOSS, TOKEN_LOGITS, TOKEN_MASK, TOKEN_PROBS
from graphssl.registry import register


def ibot_patch_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, student_temp: float = 0.1,
                    normalize: str = "per_image") -> torch.Tensor:
    """student float[*,N,K] logits, teacher float[*,N,K] probabilities, mask bool[*,N] -> scalar."""
    with torch.autocast(device_type=student.device.type, enabled=False):
        log_p = F.log_softmax(student.float() / student_temp, dim=-1)
        ce = -(teacher.float() * log_p).sum(-1)  # [*,N]
        m = mask.float()
        if normalize == "per_token":
            return (ce * m).sum() / m.sum().clamp_min(1.0)
        per_image = (ce * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # [*]
        return per_image.mean()


@register("loss.ibot_patch")
class IBOTPatchLoss(Component):
    """Masked tokens only; per-image mean over masked tokens, then mean over images and views."""

    class Config(ComponentConfig):
        student_temp: float = Field(0.1, gt=0.0, description="student temperature tau_s")
        normalize: Literal["per_image", "per_token"] = Field("per_image", description="per_image (iBOT, "
                                                             "DINOv2) or a pooled mean over all masked tokens")

    inputs = {
        "student": In(TOKEN_LOGITS, "student patch logits of the masked views [V,B,N,K]"),
        "teacher": In(TOKEN_PROBS, "teacher patch distributions of the same views, unmasked [V,B,N,K]"),
        "mask": In(TOKEN_MASK, "the student's mask [V,B,N], True = masked = counted"),
    }
    outputs = {"loss": Out(LOSS, "masked-patch soft cross-entropy")}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        self.log("mask_ratio", mask.float().mean())
        return {"loss": ibot_patch_loss(student, teacher, mask, self.config.student_temp, self.config.normalize)}
