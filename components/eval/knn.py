"""DINO's weighted k-NN classifier on frozen features (k = 20, T = 0.07)."""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from graphssl.component import ComponentConfig, Evaluator
from graphssl.ops.features import frozen_features, labelled_features
from graphssl.registry import register


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, max_elements: int = 1 << 26) -> torch.Tensor:
    """Weighted k-NN vote as DINO's ``knn_classifier``: long[M] predictions.

    bank float[N,D], queries float[M,D] (both L2-normalised); each of the k most
    cosine-similar bank items votes for its label with weight exp(sim / T).
    Queries go in chunks so that one chunk's similarities hold at most
    ``max_elements`` values (a bank of a million features fits).
    """
    k = min(k, bank.shape[0])
    chunk = max(1, max_elements // max(1, bank.shape[0]))
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start: start + chunk]
        sims, idx = (q @ bank.T).topk(k, dim=1)  # [m,k]
        weights = (sims / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[idx], weights)
        out.append(votes.argmax(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=queries.device)


def extract_features(encoder: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                     feature: str, batch_size: int = 256) -> torch.Tensor:
    """float[N,D] L2-normalised frozen features of uint8 images."""
    return F.normalize(frozen_features(encoder, images, to_input, feature, batch_size), dim=-1)


@register("eval.knn")
class KNNEval(Evaluator):
    """k-NN top-1 on the test split: the bank is a fixed class-stratified subset of ``eval.limit``
    training images, the queries one of ``eval.limit`` test images (null: whole splits). Logs ``knn_top1``."""

    module_refs = ("encoder",)

    class Config(ComponentConfig):
        encoder: str = Field(description="the node (or owner.node copy) whose features are evaluated")
        k: int = Field(20, ge=1)
        temperature: float = Field(0.07, gt=0)
        feature: Literal["cls", "mean"] = Field("cls", description="[CLS] token or the mean of patch tokens")
        every: int | None = Field(None, ge=1, description="steps between runs; default: eval.every")
        metric: str = Field("knn_top1", description="name of the logged metric")

    def evaluate(self, resolve: Callable[[str], nn.Module], data, limit: int | None) -> dict[str, float]:
        if not getattr(data, "labelled", True):
            return {}  # unlabeled images (pretraining only): nothing to classify
        encoder = resolve(self.config.encoder)
        bank_feats, bank_labels = labelled_features(encoder, data, "train", limit, self.config.feature)
        query_feats, query_labels = labelled_features(encoder, data, "test", limit, self.config.feature)
        bank_feats, query_feats = F.normalize(bank_feats, dim=-1), F.normalize(query_feats, dim=-1)
        num_classes = max(int(getattr(data, "num_classes", 0)), int(max(bank_labels.max(), query_labels.max())) + 1)
        pred = knn_predict(bank_feats, bank_labels, query_feats, num_classes, self.config.k, self.config.temperature)
        return {self.config.metric: float((pred == query_labels).float().mean())}
