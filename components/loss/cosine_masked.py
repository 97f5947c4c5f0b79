"""EVA's loss: negative cosine similarity between predicted and teacher features, over masked tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import LOSS, TOKEN_MASK, TOKENS
from graphssl.registry import register


def cosine_masked(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over masked (b,i) of cos(pred_{b,i}, target_{b,i}) (eps 1e-8, as nn.CosineSimilarity); 0 if none.

    pred, target float[*,N,F], mask bool[*,N].
    """
    cos = F.cosine_similarity(pred[mask].float(), target[mask].float(), dim=-1, eps=1e-8)
    return cos.sum() / mask.sum().clamp(min=1)


@register("loss.cosine_masked")
class CosineMaskedLoss(Component):
    """pred, target float[*,N,F], mask bool[*,N] -> loss = -mean cos over masked tokens (EVA); logs cosine.

    The loss falls to -1 as the features align (EVA's BEiT-style path; its
    MAE-style path returns +cos un-negated, a slip not copied here).
    """

    class Config(ComponentConfig):
        pass

    inputs = {
        "pred": In(TOKENS, "predicted features per token"),
        "target": In(TOKENS, "teacher features per token"),
        "mask": In(TOKEN_MASK, "True = masked: only these tokens count"),
    }
    outputs = {"loss": Out(LOSS, "scalar")}

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        cos = cosine_masked(pred, target, mask)
        self.log("cosine", cos)
        return {"loss": -cos}
