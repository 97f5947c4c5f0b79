"""Linear probe on frozen features: MAE's linear protocol, scaled down to a fixed short recipe.

MAE (He et al., 2022, appendix A.2) puts a BatchNorm without affine parameters
(eps 1e-6) in front of a linear classifier (weights trunc-normal std 0.01, bias
0) on the frozen encoder's features, and trains only that head. MAE trains it
with LARS at batch 16384 for 90 epochs; here, on a few thousand cached
features, the recipe is plain SGD (momentum 0.9, no weight decay) with a
cosine lr over a fixed number of epochs, seeded, so the number is repeatable
and costs about a second on a CPU.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from graphssl.component import ComponentConfig, Evaluator
from graphssl.ops.features import labelled_features
from graphssl.registry import register


def linear_head(dim: int, num_classes: int) -> nn.Sequential:
    """MAE's probe head: BatchNorm1d(affine=False, eps=1e-6) -> Linear (weight ~ trunc_normal(std 0.01), bias 0)."""
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


@contextmanager
def one_cpu_thread(device: torch.device):
    """Run on one CPU thread: the head is tiny, and with several threads each step mostly waits on the
    others (tens of times slower when the CPUs are shared)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, epochs: int = 100,
                       lr: float = 0.1, batch_size: int = 256, weight_decay: float = 0.0, momentum: float = 0.9,
                       seed: int = 0) -> nn.Sequential:
    """Train the probe head on fixed features float[N,D] / labels long[N]; returns it in eval mode.

    SGD with momentum, lr following a half cosine from ``lr`` to 0 over all
    steps; a fresh seeded permutation every epoch (a last partial batch is
    kept, except a single leftover sample, which BatchNorm cannot normalise).
    """
    device = train_x.device
    with one_cpu_thread(device):
        return _train(train_x, train_y, num_classes, epochs, lr, batch_size, weight_decay, momentum, seed)


def _train(train_x, train_y, num_classes, epochs, lr, batch_size, weight_decay, momentum, seed) -> nn.Sequential:
    device = train_x.device
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = linear_head(train_x.shape[1], num_classes).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(train_x)
    batch_size = min(batch_size, n)
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    head.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(per_epoch):
            idx = perm[i * batch_size: (i + 1) * batch_size]
            if len(idx) < 2:
                continue
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.eval()


@torch.no_grad()
def probe_accuracy(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the (eval-mode) head on features x float[M,D], labels y long[M]."""
    return float((head(x).argmax(dim=1) == y).float().mean())


@register("eval.linear")
class LinearProbeEval(Evaluator):
    """Linear-probe top-1 on the test split: a BatchNorm (no affine) + linear head trained on the frozen
    features of a fixed class-stratified subset of ``eval.limit`` training images, tested on one of ``eval.limit``
    test images (null: whole splits).
    Logs ``linear_top1``."""

    module_refs = ("encoder",)

    class Config(ComponentConfig):
        encoder: str = Field(description="the node (or owner.node copy, e.g. teacher.student) whose features are probed")
        feature: Literal["cls", "mean"] = Field("cls", description="[CLS] token or the mean of patch tokens")
        epochs: int = Field(100, ge=1, description="passes over the cached training features")
        lr: float = Field(0.1, gt=0, description="SGD peak lr (cosine to 0 over all steps)")
        batch_size: int = Field(256, ge=2, description="features per SGD step")
        weight_decay: float = Field(0.0, ge=0, description="MAE's linear probe uses none")
        seed: int = Field(0, description="seeds the head's initialisation and the batch order")
        every: int | None = Field(None, ge=1, description="steps between runs; default: eval.every")
        metric: str = Field("linear_top1", description="name of the logged metric")

    def evaluate(self, resolve: Callable[[str], nn.Module], data, limit: int | None) -> dict[str, float]:
        c = self.config
        if not getattr(data, "labelled", True):
            return {}  # unlabeled images (pretraining only): nothing to classify
        encoder = resolve(c.encoder)
        train_x, train_y = labelled_features(encoder, data, "train", limit, c.feature)
        test_x, test_y = labelled_features(encoder, data, "test", limit, c.feature)
        num_classes = max(int(getattr(data, "num_classes", 0)), int(max(train_y.max(), test_y.max())) + 1)
        with torch.enable_grad():
            head = train_linear_probe(train_x, train_y, num_classes, c.epochs, c.lr, c.batch_size,
                                      c.weight_decay, seed=c.seed)
        return {c.metric: probe_accuracy(head, test_x, test_y)}
