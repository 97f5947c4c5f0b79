"""Cheap diagnostics that components log."""
from __future__ import annotations

import torch


@torch.no_grad()
def mean_entropy(probs: torch.Tensor, weights: torch.Tensor | None = None, max_rows: int = 1024) -> torch.Tensor:
    """Mean over rows of -sum_k p log p (weighted by ``weights`` [...] when given), in nats.

    ``probs`` [..., K]. With more than ``max_rows`` rows it is estimated on evenly
    spaced rows, so logging it stays cheap next to large patch outputs.
    """
    p = probs.reshape(-1, probs.shape[-1])
    w = None if weights is None else weights.reshape(-1).float()
    if p.shape[0] > max_rows:
        stride = -(-p.shape[0] // max_rows)
        p = p[::stride]
        w = None if w is None else w[::stride]
    h = torch.special.entr(p).sum(-1)
    if w is None:
        return h.mean()
    return (h * w).sum() / w.sum().clamp_min(1.0)
