"""Frozen features of an encoder node, shared by the evaluators."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


@torch.no_grad()
def frozen_features(encoder: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                    feature: str, batch_size: int = 256) -> torch.Tensor:
    """float[N,D] features (not normalised) of uint8[N,C,H,W] images, the encoder in eval mode.

    ``feature``: "cls" for the [CLS] token, otherwise the mean of the patch tokens.
    """
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            result = encoder(images=to_input(images[i: i + batch_size]))
            feats = result["cls"] if feature == "cls" else result["patches"].mean(dim=-2)
            out.append(feats.float())
    finally:
        encoder.train(was_training)
    return torch.cat(out)
