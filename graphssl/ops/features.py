"""Frozen features of an encoder node, shared by the evaluators."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


def _feature(result: dict[str, torch.Tensor], feature: str) -> torch.Tensor:
    return (result["cls"] if feature == "cls" else result["patches"].mean(dim=-2)).float()


@torch.no_grad()
def frozen_features(encoder: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                    feature: str, batch_size: int = 256) -> torch.Tensor:
    """float[N,D] features (not normalised) of uint8[N,C,H,W] images, the encoder in eval mode.

    ``feature``: "cls" for the [CLS] token, otherwise the mean of the patch tokens.
    """
    feats, _ = streamed_features(encoder, ((images[i: i + batch_size], None) for i in range(0, len(images), batch_size)),
                                 to_input, feature)
    return feats


@torch.no_grad()
def streamed_features(encoder: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
                      to_input: Callable[[torch.Tensor], torch.Tensor], feature: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(float[N,D] features, long[N] labels or None) of (uint8 images, labels) batches, one batch in memory at a time."""
    was_training = encoder.training
    encoder.eval()
    out, labels = [], []
    try:
        for images, y in batches:
            out.append(_feature(encoder(images=to_input(images)), feature))
            if y is not None:
                labels.append(y)
    finally:
        encoder.train(was_training)
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out), (torch.cat(labels) if labels else None)


def labelled_features(encoder: nn.Module, data, split: str, limit: int | None, feature: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(float[N,D], long[N] on the features' device) of the evaluation subset of ``split`` (``data.eval_batches``)."""
    if hasattr(data, "eval_batches"):
        batches = data.eval_batches(split, limit)
    else:  # a data object with only eval_set (small in-memory sets)
        s = data.eval_set(split, limit)
        batches = ((s.images[i: i + 256], s.labels[i: i + 256]) for i in range(0, len(s), 256))
    feats, labels = streamed_features(encoder, batches, data.to_input, feature)
    return feats, labels.to(feats.device)
