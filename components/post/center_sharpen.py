"""Teacher centering and sharpening (POST.center_sharpen): DINO, iBOT, DINOv2.

    P_t = softmax((t - c) / tau_t)

then, after use, c <- m c + (1 - m) * mean(t) with m = 0.9, the mean taken over
the global batch (all-reduced under DDP). One node serves both branches, each
with its own center:

- ``cls``: teacher [CLS] logits [*,K] -> PROBS [*,K]; the center is the mean over
  every [CLS] output (all teacher views and images), as DINO.
- ``patches``: teacher token logits [*,N,K] -> TOKEN_PROBS [*,N,K];
  ``patch_center: all`` (iBOT) takes the mean over every patch token;
  ``patch_center: masked`` (DINOv2) the mean over the tokens that ``mask``
  marks (True = masked in the student's view).

Outputs exist only for the inputs given. The temperature tau_t is a schedule
(default: linear 0.04 -> 0.07 over the first 30% of training, then constant:
the papers' 30-of-100-epoch warm-up; DINO steps it per epoch, this per step).
For a different patch temperature (iBOT's teacher_patch_temp) use two nodes,
one per branch. Logs temperature, and per branch the center norm and the mean
entropy of the teacher distributions (in nats; log K = uniform; for more than
1024 rows estimated on evenly spaced rows).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out, Progress
from graphssl.ops.distributed import all_reduce_sum
from graphssl.ops.stats import mean_entropy
from graphssl.ports import LOGITS, PROBS, TOKEN_LOGITS, TOKEN_MASK, TOKEN_PROBS
from graphssl.registry import register
from graphssl.schedules import PositiveScheduled, Schedule, value_at


def center_sharpen(logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax((t - c) / tau) over the last dim, in float32."""
    return torch.softmax((logits.float() - center) / temperature, dim=-1)


@torch.no_grad()
def updated_center(center: torch.Tensor, logits: torch.Tensor, momentum: float,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """m c + (1 - m) * batch mean of ``logits`` [..., K] (weighted by ``weights`` [...] when given).

    The sum and the count are all-reduced together (distributed: all-reduced), so
    the mean is over the global batch. With a zero total weight c is kept.
    """
    flat = logits.detach().float().reshape(-1, logits.shape[-1])
    if weights is None:
        total = flat.sum(0)
        count = torch.tensor([float(flat.shape[0])], device=flat.device)
    else:
        w = weights.reshape(-1).float()
        total = w @ flat
        count = w.sum().reshape(1)
    stats = all_reduce_sum(torch.cat([total, count]))  # distributed: all-reduced
    total, count = stats[:-1], stats[-1]
    batch_center = total / count.clamp_min(1.0)
    new = center * momentum + batch_center * (1 - momentum)
    return torch.where(count > 0, new, center)


@register("post.center_sharpen")
class CenterSharpen(Component):
    """softmax((t - c) / tau_t) with a momentum center per branch ([CLS], patches)."""

    no_grad = True

    class Config(ComponentConfig):
        teacher_temp: PositiveScheduled = Field(Schedule(start=0.04, end=0.07, shape="linear", over=0.3),
                                        description="teacher temperature tau_t (a number or a schedule)")
        center_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="center EMA momentum m")
        patch_center: Literal["all", "masked"] = Field("all", description="patch center from all tokens (iBOT) "
                                                       "or only masked ones (DINOv2; needs mask)")

    inputs = {
        "cls": In(LOGITS, "teacher [CLS] logits [*,K]", optional=True, batch="cls"),
        "patches": In(TOKEN_LOGITS, "teacher patch logits [*,N,K]", optional=True, dims=("N", "Kp")),
        "mask": In(TOKEN_MASK, "student mask [*,N] (True = masked), for patch_center: masked", optional=True),
    }
    outputs = {
        "cls": Out(PROBS, "teacher [CLS] distributions [*,K]", batch="cls"),
        "patches": Out(TOKEN_PROBS, "teacher patch distributions [*,N,K]", dims=("N", "Kp")),
    }

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        # Centers start at zero, sized at the first call (K comes from the head).
        self.register_buffer("cls_center", torch.zeros(0))
        self.register_buffer("patch_center", torch.zeros(0))
        self.temperature = value_at(config.teacher_temp, Progress(0, ctx.total_steps, ctx.steps_per_epoch))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("cls_center", "patch_center"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def before_step(self, progress: Progress) -> None:
        self.temperature = value_at(self.config.teacher_temp, progress)

    def _center(self, name: str, logits: torch.Tensor) -> torch.Tensor:
        c = getattr(self, name)
        if c.numel() == 0:
            c = torch.zeros(logits.shape[-1], device=logits.device)
            setattr(self, name, c)
        if c.shape[0] != logits.shape[-1]:
            raise ValueError(f"{name} has {c.shape[0]} entries but the logits have K={logits.shape[-1]}")
        return c

    def forward(self, cls: torch.Tensor | None = None, patches: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if cls is None and patches is None:
            raise ValueError("post.center_sharpen needs cls or patches (or both)")
        c, tau, out = self.config, self.temperature, {}
        self.log("temperature", tau)
        if cls is not None:
            center = self._center("cls_center", cls)
            probs = center_sharpen(cls, center, tau)
            self.cls_center = updated_center(center, cls, c.center_momentum)
            out["cls"] = probs
            self.log("cls_center_norm", self.cls_center.norm())
            self.log("cls_entropy", mean_entropy(probs))
        if patches is not None:
            weights = None
            if c.patch_center == "masked":
                if mask is None:
                    raise ValueError("patch_center: masked needs the mask input")
                weights = mask
            center = self._center("patch_center", patches)
            probs = center_sharpen(patches, center, tau)
            self.patch_center = updated_center(center, patches, c.center_momentum, weights)
            out["patches"] = probs
            self.log("patches_center_norm", self.patch_center.norm())
            self.log("patches_entropy", mean_entropy(probs, weights))
        return out
