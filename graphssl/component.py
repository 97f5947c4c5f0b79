"""The component contract: one class, one step of a paper.

A component is an ``nn.Module`` with
- ``Config``: a pydantic model (``extra="forbid"``) of its parameters;
- ``inputs`` / ``outputs``: its typed ports (see :mod:`graphssl.ports`);
- ``forward(**inputs) -> dict[port, tensor]``;
- optional per-step hooks: ``before_step`` (set scheduled values),
  ``before_optimizer_step`` (edit gradients), ``after_step`` (EMA updates).

Components never import each other; the pipeline YAML wires them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from graphssl.ports import PortType


@dataclass(frozen=True)
class In:
    """An input port. ``many`` accepts a list of references (e.g. several views)."""

    types: tuple[PortType, ...]
    doc: str
    optional: bool = False
    many: bool = False

    def __init__(self, types: PortType | tuple[PortType, ...], doc: str, optional: bool = False, many: bool = False):
        object.__setattr__(self, "types", types if isinstance(types, tuple) else (types,))
        object.__setattr__(self, "doc", doc)
        object.__setattr__(self, "optional", optional)
        object.__setattr__(self, "many", many)

    def __str__(self) -> str:
        kinds = " | ".join(str(t) for t in self.types)
        return f"list of {kinds}" if self.many else kinds


@dataclass(frozen=True)
class Out:
    """An output port."""

    type: PortType
    doc: str

    def __str__(self) -> str:
        return str(self.type)


class ComponentConfig(BaseModel):
    """Base of every component's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Progress:
    """Where training stands; schedules are functions of it."""

    step: int
    total_steps: int
    steps_per_epoch: int = 1

    @property
    def fraction(self) -> float:
        return self.step / max(1, self.total_steps - 1)


@dataclass
class BuildContext:
    """What a component may know when it is built.

    ``modules`` holds the already built components by node name (for components
    that own copies of, or evaluate, other nodes' modules); ``artifacts`` maps
    names of earlier stages' products to local paths.
    """

    image_size: int
    channels: int
    total_steps: int = 1
    steps_per_epoch: int = 1
    device: torch.device = torch.device("cpu")
    modules: dict[str, nn.Module] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    data: Any = None  # the pipeline's Data (evaluators read labelled splits from it)
    # Loads a module trained elsewhere: "STAGE.NODE" (a module an earlier stage
    # trained; at check time, an untrained module of the same config) or a path
    # to a checkpoint that graphssl wrote. Returns an nn.Module in eval mode.
    load_module: Callable[[str], nn.Module] | None = None


class Component(nn.Module):
    """Base class of every graph component."""

    type_name: ClassVar[str] = ""  # set by @register
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    inputs: ClassVar[dict[str, In]] = {}
    outputs: ClassVar[dict[str, Out]] = {}
    # Config fields whose values name other nodes' modules (not data ports).
    module_refs: ClassVar[tuple[str, ...]] = ()
    # "step": runs every training step; "evaluator": runs on a schedule via
    # evaluate(); "owner": holds copies of other nodes' modules (an EMA teacher)
    # and has no ports: it implements provides(config) -> node names and
    # copy_of(name) -> nn.Module, and "call: OWNER.NODE" nodes run the copies.
    role: ClassVar[str] = "step"
    # True when the component's outputs must not carry gradients (targets, teachers).
    no_grad: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig, ctx: BuildContext):
        super().__init__()
        self.config = config
        self._metrics: dict[str, torch.Tensor | float] = {}

    # -- per-step hooks (default: nothing) ---------------------------------
    def before_step(self, progress: Progress) -> None:
        """Set values that follow a schedule, before the forward pass."""

    def before_optimizer_step(self, progress: Progress) -> None:
        """Edit gradients after backward, before the optimizer step."""

    def after_step(self, progress: Progress) -> None:
        """Update state after the optimizer step (EMA teachers)."""

    # -- metrics -------------------------------------------------------------
    def log(self, name: str, value: torch.Tensor | float) -> None:
        """Record a scalar for this node's MLflow run (detached; read lazily)."""
        self._metrics[name] = value.detach() if isinstance(value, torch.Tensor) else value

    def pop_metrics(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self._metrics.items()}
        self._metrics.clear()
        return out

    def forward(self, **inputs: Any) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def has_hook(component: nn.Module, hook: str) -> bool:
    """True when ``component`` overrides the base class's no-op ``hook``."""
    return isinstance(component, Component) and getattr(type(component), hook) is not getattr(Component, hook)
