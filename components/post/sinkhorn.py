"""Sinkhorn-Knopp teacher normalisation (POST.sinkhorn): the DINOv2 L/g configs.

Q = exp(t / tau_t) over M samples x K prototypes, scaled to total mass 1, then
``n_iterations`` (3) rounds of: every prototype's mass -> 1/K, every sample's
mass -> 1/M; finally each sample's row is scaled to sum to 1. The sums over
samples (and M itself) are all-reduced under DDP, as DINOv2.

- ``cls``: teacher [CLS] logits [*,K] -> PROBS [*,K]; all leading dims (teacher
  views and images) are normalised together, as DINOv2 does for its 2B crops.
- ``patches``: teacher token logits [*,N,K] -> TOKEN_PROBS [*,N,K]; with
  ``mask`` only masked tokens take part (DINOv2) and the others get all-zero
  rows; without it every token takes part.

No state. The temperature is a schedule (default linear 0.04 -> 0.07 over
the first 30% of training). Logs temperature and the mean teacher entropy
(over masked tokens for patches with a mask; estimated on at most 1024 rows).
"""
from __future__ import annotations

import math

import torch
from pydantic import Field

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out, Progress
from graphssl.ops.distributed import all_reduce_max, all_reduce_sum
from graphssl.ops.stats import mean_entropy
from graphssl.ports import LOGITS, PROBS, TOKEN_LOGITS, TOKEN_MASK, TOKEN_PROBS
from graphssl.registry import register
from graphssl.schedules import PositiveScheduled, Schedule, value_at


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _logsumexp_over_samples(x: torch.Tensor) -> torch.Tensor:
    """log sum_m exp(x[m, k]) over every process's samples: float[1,K] (distributed: all-reduced)."""
    peak = _finite(all_reduce_max(x.amax(0, keepdim=True)))
    return _finite(peak + all_reduce_sum((x - peak).exp().sum(0, keepdim=True)).log())


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, n_iterations: int = 3,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """float[M,K] -> float[M,K] assignment; rows (samples) sum to 1, columns (prototypes) to about M/K.

    DINOv2's SinkhornKnopp: Q = exp(t / tau); Q /= sum(Q); n times: each
    prototype's mass -> 1/K, then each sample's mass -> 1/M; Q *= M. Computed in
    the log domain, so large t / tau neither overflows nor underflows (the
    first division by sum(Q) cancels in the prototype step and is skipped).
    ``weights`` (bool or 0/1 [M]) selects the samples that take part (M counts
    only them); the others get zero rows. Distributed: the sums over samples and
    M are all-reduced.
    """
    x = logits.detach().float() / temperature
    if weights is not None:
        keep = weights.reshape(-1, 1) > 0
        x = x.masked_fill(~keep, float("-inf"))
        n = keep.sum().float().reshape(1)
    else:
        n = torch.tensor([float(x.shape[0])], device=x.device)
    log_n = all_reduce_sum(n).clamp_min(1.0).log()  # distributed: all-reduced
    log_k = math.log(x.shape[1])
    for _ in range(n_iterations):
        x = x - _logsumexp_over_samples(x) - log_k  # every prototype: mass 1/K
        x = x - _finite(torch.logsumexp(x, dim=1, keepdim=True)) - log_n  # every sample: mass 1/M
    return torch.exp(x + log_n)


@register("post.sinkhorn")
class Sinkhorn(Component):
    """Sinkhorn-Knopp equipartition of teacher outputs (3 iterations), per branch."""

    no_grad = True

    class Config(ComponentConfig):
        teacher_temp: PositiveScheduled = Field(Schedule(start=0.04, end=0.07, shape="linear", over=0.3),
                                        description="teacher temperature tau_t (a number or a schedule)")
        n_iterations: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations (DINOv2: 3)")

    inputs = {
        "cls": In(LOGITS, "teacher [CLS] logits [*,K]", optional=True, batch="cls"),
        "patches": In(TOKEN_LOGITS, "teacher patch logits [*,N,K]", optional=True, dims=("N", "Kp")),
        "mask": In(TOKEN_MASK, "student mask [*,N] (True = masked): only those patch tokens count", optional=True),
    }
    outputs = {
        "cls": Out(PROBS, "teacher [CLS] assignments [*,K], rows sum to 1", batch="cls"),
        "patches": Out(TOKEN_PROBS, "teacher patch assignments [*,N,K]; zero rows where not masked", dims=("N", "Kp")),
    }

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        self.temperature = value_at(config.teacher_temp, Progress(0, ctx.total_steps, ctx.steps_per_epoch))

    def before_step(self, progress: Progress) -> None:
        self.temperature = value_at(self.config.teacher_temp, progress)

    def forward(self, cls: torch.Tensor | None = None, patches: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if cls is None and patches is None:
            raise ValueError("post.sinkhorn needs cls or patches (or both)")
        tau, iters, out = self.temperature, self.config.n_iterations, {}
        self.log("temperature", tau)
        if cls is not None:
            q = sinkhorn_knopp(cls.reshape(-1, cls.shape[-1]), tau, iters)
            out["cls"] = q.view(cls.shape)
            self.log("cls_entropy", mean_entropy(q))
        if patches is not None:
            w = mask.reshape(-1) if mask is not None else None
            q = sinkhorn_knopp(patches.reshape(-1, patches.shape[-1]), tau, iters, w)
            out["patches"] = q.view(patches.shape)
            self.log("patches_entropy", mean_entropy(q, w))
        return out
