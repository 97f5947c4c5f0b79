"""DINO's cross-view soft cross-entropy on [CLS] outputs (LOSS.softCE_cls): DINO, iBOT, DINOv2.

    L = 1/T * sum_{a < Vt} sum_{v != a} mean_b [ - < P_t(a)_b , log softmax(s(v)_b / tau_s) > ]

over teacher global views a and student views v, where the student views are
the concatenation of the ``student`` inputs in order (e.g. [head.cls,
head_local.cls]: globals then locals) and the first Vt student views are the
same global crops as the teacher's (so v = a is the same crop and is skipped).
T counts the pairs: 2 * (n_crops - 1) for 2 teacher views (18 for 2 + 8
crops). DINOv2's normalisation (2 + 2 n_local terms, global pairs only A-B)
is the same number.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import LOGITS, LOSS, PROBS
from graphssl.registry import register


def dino_loss(student: list[torch.Tensor], teacher: torch.Tensor, student_temp: float = 0.1) -> torch.Tensor:
    """student: list of float[V_i,B,K] (or [B,K]); teacher: float[Vt,B,K] probabilities -> scalar."""
    views = torch.cat([s if s.dim() == 3 else s[None] for s in student])  # [Vs,B,K]
    t = teacher if teacher.dim() == 3 else teacher[None]
    if views.shape[1:] != t.shape[1:]:
        raise ValueError(f"student views {tuple(views.shape)} and teacher {tuple(t.shape)} differ in batch or K")
    vt, b, _ = t.shape
    vs = views.shape[0]
    with torch.autocast(device_type=views.device.type, enabled=False):
        log_p = F.log_softmax(views.float() / student_temp, dim=-1)
        cross = -torch.einsum("abk,vbk->av", t.float(), log_p) / b  # [Vt,Vs]: batch mean per pair
    pairs = torch.ones(vt, vs, device=cross.device)
    same = torch.arange(min(vt, vs), device=cross.device)
    pairs[same, same] = 0.0  # teacher view a and student view a are the same crop
    n_pairs = vt * vs - min(vt, vs)
    if n_pairs == 0:
        raise ValueError("loss.dino has no cross-view pairs: give more student views than the teacher's one")
    return (cross * pairs).sum() / n_pairs


@register("loss.dino")
class DINOLoss(Component):
    """Soft cross-entropy between teacher view a and every other student view, averaged over pairs."""

    class Config(ComponentConfig):
        student_temp: float = Field(0.1, gt=0.0, description="student temperature tau_s")

    inputs = {
        "student": In(LOGITS, "student [CLS] logits, each [V_i,B,K]; the first Vt views = the teacher's views",
                      many=True, batch=None),
        "teacher": In(PROBS, "teacher distributions [Vt,B,K] of the global views", batch=None),
    }
    outputs = {"loss": Out(LOSS, "mean over cross-view pairs of the batch-mean cross-entropy")}

    def forward(self, student: list[torch.Tensor], teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(student, torch.Tensor):
            student = [student]
        return {"loss": dino_loss(student, teacher, self.config.student_temp)}
