"""BEiT's loss: cross-entropy of the code logits against the tokenizer's ids, over masked tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import LOSS, TOKEN_IDS, TOKEN_LOGITS, TOKEN_MASK
from graphssl.registry import register


def cross_entropy_masked(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-(1/|M|) sum_{(b,i) in M} log softmax(logits_{b,i})[target_{b,i}]; 0 (with a graph) when nothing is masked.

    logits float[*,N,K], target long[*,N], mask bool[*,N].
    """
    nll = F.cross_entropy(logits[mask].float(), target[mask], reduction="sum")
    return nll / mask.sum().clamp(min=1)


@register("loss.cross_entropy_masked")
class CrossEntropyMaskedLoss(Component):
    """logits float[*,N,K], target long[*,N], mask bool[*,N] -> loss; logs accuracy on masked tokens."""

    class Config(ComponentConfig):
        pass

    inputs = {
        "logits": In(TOKEN_LOGITS, "predicted code logits per token"),
        "target": In(TOKEN_IDS, "target code id per token"),
        "mask": In(TOKEN_MASK, "True = masked: only these tokens count"),
    }
    outputs = {"loss": Out(LOSS, "scalar")}

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = cross_entropy_masked(logits, target, mask)
        with torch.no_grad():
            hits = (logits.argmax(-1) == target) & mask
            self.log("accuracy", hits.sum() / mask.sum().clamp(min=1))
        return {"loss": loss}
