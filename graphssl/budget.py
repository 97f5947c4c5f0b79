"""Training budgets: ``train.budget: {flops: 2e15}``, ``{images: 1e6}`` or ``{epochs: 3}`` instead of ``train.steps``.

A budget is turned into ``train.steps`` once, in the dry run, before anything
trains, so schedules, checkpoints, resume and reproducibility work exactly as
with steps. The number of steps is the budget divided by what one step costs,
rounded up (a run never spends less than its budget, and at most one step more):

    flops:  ceil(flops / counted FLOPs of one step of all processes)
    images: ceil(images / global batch)               (source images: a multi-crop step counts its batch once)
    epochs: ceil(epochs * steps per epoch)            (steps per epoch = training images // global batch)

The division is exact (rational arithmetic on the numbers as written), so
``flops: 2e15`` with a step of 2e13 gives 100 steps, never 101.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

KINDS = ("flops", "images", "epochs")


class Budget(BaseModel):
    """How much training a stage gets; exactly one of flops, images, epochs. Sets train.steps (rounded up)."""

    model_config = ConfigDict(extra="forbid")

    flops: Optional[float] = Field(None, gt=0, description="counted training FLOPs of all processes "
                                                           "(graphssl check prints the cost of a step)")
    images: Optional[float] = Field(None, gt=0, description="source images seen: global batch x steps")
    epochs: Optional[float] = Field(None, gt=0, description="passes over the training set: steps per epoch x epochs")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Budget":
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a budget is exactly one of flops, images, epochs (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def amount(self) -> float:
        return getattr(self, self.kind)


@dataclass(frozen=True)
class ResolvedBudget:
    kind: str
    amount: float
    per_step: float  # FLOPs, images or epochs of one step
    steps: int

    def describe(self) -> str:
        unit = {"flops": "FLOPs", "images": "images", "epochs": "epochs"}[self.kind]
        return (f"train.budget.{self.kind}={self.amount:g} -> {self.steps} steps "
                f"({self.per_step:.4g} {unit} per step, rounded up)")


def _exact(value: float) -> Fraction:
    return Fraction(repr(float(value)))  # the number as written: 0.1 is 1/10


def resolve(budget: Budget, flops_per_step: int, global_batch: int, steps_per_epoch: int | None) -> ResolvedBudget:
    """The steps a budget buys. ``flops_per_step``: counted FLOPs of one step of all processes."""
    kind, amount = budget.kind, _exact(budget.amount)
    if kind == "flops":
        if flops_per_step <= 0:
            raise ValueError("train.budget.flops: a training step of this pipeline counts no FLOPs "
                             "(no matrix product, convolution or attention); give train.steps or another budget")
        per_step = Fraction(flops_per_step)
        steps = math.ceil(amount / per_step)
    elif kind == "images":
        per_step = Fraction(global_batch)
        steps = math.ceil(amount / per_step)
    else:
        if not steps_per_epoch:
            raise ValueError("train.budget.epochs: the training set holds less than one global batch")
        per_step = Fraction(1, steps_per_epoch)
        steps = math.ceil(amount * steps_per_epoch)
    return ResolvedBudget(kind, budget.amount, float(per_step), max(1, steps))


def merge_train(inherited: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """A stage's ``train`` over the pipeline's: a stage's own budget replaces inherited steps, and its own steps an
    inherited budget (both in one place stay an error)."""
    merged = {**inherited, **own}
    if own.get("budget") is not None and "steps" not in own:
        merged.pop("steps", None)
    if own.get("steps") is not None and "budget" not in own:
        merged.pop("budget", None)
    return merged


def apply_budget(prepared, world_size: int = 1, training_images: Callable[[], int] = lambda: 0) -> ResolvedBudget | None:
    """Set ``prepared.cfg.train.steps`` from its budget and the step's counted FLOPs (``prepared.flops``);
    ``training_images()``: the size of the training set (asked only for an epochs budget)."""
    from graphssl.errors import PipelineError

    cfg = prepared.cfg
    budget = cfg.train.budget
    if budget is None:
        return None
    global_batch = cfg.data.batch_size * world_size
    steps_per_epoch = training_images() // global_batch if budget.kind == "epochs" else None
    try:
        resolved = resolve(budget, prepared.flops.total * world_size, global_batch, steps_per_epoch)
    except ValueError as e:
        raise PipelineError([prepared.loaded.problem(f"train.budget.{budget.kind}", str(e))], prepared.source) from None
    prepared.cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": resolved.steps})})
    prepared.budget = resolved
    return resolved
