"""Schedules as values: a number, or {start, end, shape, over, convention, per}.

By default (``convention: graphssl``) a schedule is a function of training
progress ``t = step / (total_steps - 1)`` in [0, 1], so it stretches with
``train.steps`` and ends exactly at ``end``. ``convention: dino`` follows
DINO's ``utils.cosine_scheduler`` (iBOT's and BEiT's copies and DINOv2's
``CosineScheduler`` are the same): a ramp is an array of n points, a cosine
uses t = i / n (it never quite reaches ``end``), a linear ramp is
``linspace(start, end, n)`` with the end point. ``per: epoch`` holds every
value for an epoch (DINO's teacher temperature is indexed by epoch).
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
    With ``per: epoch`` the position is the epoch (step // steps_per_epoch) among
    the run's epochs; with ``convention: dino`` the ramp has round(over * count)
    points (count: steps or epochs), see the module docstring.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: float
    end: float
    shape: Literal["cosine", "linear"] = "cosine"
    over: float = Field(1.0, gt=0.0, le=1.0, description="fraction of the run the ramp takes; then the value holds at end")
    convention: Literal["graphssl", "dino"] = Field(
        "graphssl", description="graphssl: t = i / (count - 1), ends exactly at end; dino: DINO's cosine_scheduler, "
                                "cosine t = i / n (never quite at end), linear = linspace(start, end, n)")
    per: Literal["step", "epoch"] = Field("step", description="step: a new value every step; epoch: the value changes "
                                                              "only at epoch boundaries (DINO's teacher temperature)")


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


def dino_cosine(start: float, end: float, i: int, n: int) -> float:
    """Point i of DINO's cosine of n points: end + (start - end) (1 + cos(pi i / n)) / 2, in its float order."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * i / n))


def dino_linspace(start: float, end: float, i: int, n: int) -> float:
    """Point i of numpy's linspace(start, end, n): i * step + start, the last point exactly end (n = 1: start)."""
    if n == 1:
        return start
    if i == n - 1:
        return end
    return i * ((end - start) / (n - 1)) + start


def position(progress: Progress, per: str) -> tuple[int, int]:
    """(index, count): the step among the run's steps, or the epoch among its epochs (the last may be partial)."""
    if per == "step":
        return progress.step, progress.total_steps
    steps_per_epoch = max(1, progress.steps_per_epoch)
    return progress.step // steps_per_epoch, -(-progress.total_steps // steps_per_epoch)


def _continuous(value: "Schedule", index: int, count: int) -> float:
    """graphssl's convention: t = index / (count - 1) / over, so the ramp ends exactly at ``end``."""
    t = index / max(1, count - 1) / value.over
    return (cosine_ramp if value.shape == "cosine" else linear_ramp)(value.start, value.end, t)


def _points(value: "Schedule", index: int, count: int) -> float:
    """DINO's convention: the ramp is an array of round(over * count) points, then the value holds at ``end``."""
    n = max(1, round(value.over * count))
    if index >= n:
        return float(value.end)
    return (dino_cosine if value.shape == "cosine" else dino_linspace)(value.start, value.end, index, n)


CONVENTIONS = {"graphssl": _continuous, "dino": _points}  # Schedule.convention -> value(schedule, index, count)
WARMUPS = {"graphssl": lambda step, n, peak: peak * step / n,  # MAE's rule: peak * step / warmup
           "dino": lambda step, n, peak: dino_linspace(0.0, peak, step, n)}  # linspace(0, peak, warmup)


def value_at(value: Scheduled, progress: Progress) -> float:
    """The value of a number or a Schedule at ``progress``."""
    if not isinstance(value, Schedule):
        return float(value)
    index, count = position(progress, value.per)
    return CONVENTIONS[value.convention](value, index, count)


def warmup_cosine_lr(step: int, total_steps: int, peak: float, warmup_steps: int, min_lr: float = 0.0,
                     convention: str = "graphssl") -> float:
    """Per-step learning rate: linear warm-up from 0 to ``peak``, then half-cosine to ``min_lr``.

    As MAE's ``adjust_learning_rate``: lr = peak * step / warmup during warm-up;
    afterwards min + (peak - min) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2.
    ``convention: dino`` (DINO's ``cosine_scheduler``): the warm-up is
    linspace(0, peak, warmup), so its last step is already ``peak`` (and the
    first cosine step repeats it); the cosine is the same.
    """
    if step < warmup_steps:
        return WARMUPS[convention](step, warmup_steps, peak)
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
