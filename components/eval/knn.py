"""DINO's weighted k-NN classifier on frozen features (k = 20, T = 0.07)."""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from graphssl.component import ComponentConfig, Evaluator
from graphssl.ops.features import frozen_features
from graphssl.registry import register


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Weighted k-NN vote as DINO's ``knn_classifier``: long[M] predictions.

    bank float[N,D], queries float[M,D] (both L2-normalised); each of the k most
    cosine-similar bank items votes for its label with weight exp(sim / T).
    """
    k = min(k, bank.shape[0])
    sims, idx = (queries @ bank.T).topk(k, dim=1)  # [M,k]
    weights = (sims / temperature).exp()
    votes = torch.zeros(queries.shape[0], num_classes, device=queries.device, dtype=weights.dtype)
    votes.scatter_add_(1, bank_labels[idx], weights)
    return votes.argmax(dim=1)


def extract_features(encoder: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                     feature: str, batch_size: int = 256) -> torch.Tensor:
    """float[N,D] L2-normalised frozen features of uint8 images."""
    return F.normalize(frozen_features(encoder, images, to_input, feature, batch_size), dim=-1)


@register("eval.knn")
class KNNEval(Evaluator):
    """k-NN top-1 on the test split: the bank is the first ``eval.limit`` training
    images, the queries the first ``eval.limit`` test images. Logs ``knn_top1``."""

    module_refs = ("encoder",)

    class Config(ComponentConfig):
        encoder: str = Field(description="the node (or owner.node copy) whose features are evaluated")
        k: int = Field(20, ge=1)
        temperature: float = Field(0.07, gt=0)
        feature: Literal["cls", "mean"] = Field("cls", description="[CLS] token or the mean of patch tokens")
        every: int | None = Field(None, ge=1, description="steps between runs; default: eval.every")
        metric: str = Field("knn_top1", description="name of the logged metric")

    def evaluate(self, resolve: Callable[[str], nn.Module], data, limit: int) -> dict[str, float]:
        encoder = resolve(self.config.encoder)
        bank = data.eval_set("train", limit)
        queries = data.eval_set("test", limit)
        bank_feats = extract_features(encoder, bank.images, data.to_input, self.config.feature)
        query_feats = extract_features(encoder, queries.images, data.to_input, self.config.feature)
        num_classes = int(max(bank.labels.max(), queries.labels.max())) + 1
        pred = knn_predict(bank_feats, bank.labels.to(bank_feats.device), query_feats, num_classes,
                           self.config.k, self.config.temperature)
        return {self.config.metric: float((pred.cpu() == queries.labels).float().mean())}
