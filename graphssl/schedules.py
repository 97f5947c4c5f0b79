"""Schedules as values: a number, or {start, end, shape, over}.

All are functions of training progress ``t = step / (total_steps - 1)`` in [0, 1],
so a schedule stretches with ``train.steps`` and ends exactly at ``end``.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from graphssl.component import Progress


class Schedule(BaseModel):
    """Moves from ``start`` to ``end`` over the first ``over`` of training, then holds.

    ``shape: cosine`` is the half-cosine ramp used for EMA momentum and weight
    decay (DINO); ``shape: linear`` is the linear warm-up used for the teacher
    temperature (0.04 -> 0.07 over the first 30% of the run: ``over: 0.3``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: float
    end: float
    shape: Literal["cosine", "linear"] = "cosine"
    over: float = Field(1.0, gt=0.0, le=1.0)


Scheduled = Union[float, Schedule]


def check_range(value: Scheduled, ge: float | None = None, gt: float | None = None, le: float | None = None,
                lt: float | None = None) -> Scheduled:
    """``value`` unchanged, or ValueError unless the number (a schedule: its start and end) lies in range.

    For pydantic validators of scheduled parameters: EMA momentum in [0, 1], temperatures > 0.
    """
    points = [("start", value.start), ("end", value.end)] if isinstance(value, Schedule) else [("", value)]
    checks = ((ge, ">=", lambda x, b: x >= b), (gt, ">", lambda x, b: x > b),
              (le, "<=", lambda x, b: x <= b), (lt, "<", lambda x, b: x < b))
    for which, x in points:
        for bound, sign, ok in checks:
            if bound is not None and not ok(x, bound):
                raise ValueError(f"{'the schedule ' + which + ' ' if which else ''}must be {sign} {bound}, got {x}")
    return value


PositiveScheduled = Annotated[Scheduled, AfterValidator(lambda v: check_range(v, gt=0.0))]
"""A number or schedule that must stay > 0 (temperatures)."""


def cosine_ramp(start: float, end: float, t: float) -> float:
    """end - (end - start) * (cos(pi t) + 1) / 2; start at t=0, end at t=1."""
    t = min(max(t, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * t) + 1.0) / 2.0


def linear_ramp(start: float, end: float, t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return start + (end - start) * t


def value_at(value: Scheduled, progress: Progress) -> float:
    """The value of a number or a Schedule at ``progress``."""
    if not isinstance(value, Schedule):
        return float(value)
    t = progress.fraction / value.over
    ramp = cosine_ramp if value.shape == "cosine" else linear_ramp
    return ramp(value.start, value.end, t)


def warmup_cosine_lr(step: int, total_steps: int, peak: float, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Per-step learning rate: linear warm-up from 0 to ``peak``, then half-cosine to ``min_lr``.

    As MAE's ``adjust_learning_rate``: lr = peak * step / warmup during warm-up;
    afterwards min + (peak - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2.
    """
    if step < warmup_steps:
        return peak * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / span))


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """The papers' lr scaling rules: none, linear_256 (MAE/DINO/iBOT), linear_512 (SimMIM), sqrt_1024 (DINOv2)."""
    if rule == "none":
        return base_lr
    if rule == "linear_256":
        return base_lr * batch_size / 256
    if rule == "linear_512":
        return base_lr * batch_size / 512
    if rule == "sqrt_1024":
        return base_lr * math.sqrt(batch_size / 1024)
    raise ValueError(f"unknown lr scaling rule {rule!r}")
