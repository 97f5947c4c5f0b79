"""The component contract: one class, one step of a paper.

A component is an ``nn.Module`` with
- ``Config``: a pydantic model (``extra="forbid"``) of its parameters;
- ``inputs`` / ``outputs``: its typed ports (see :mod:`graphssl.ports`);
- ``forward(**inputs) -> dict[port, tensor]``;
- optional per-step hooks: ``before_step`` (set scheduled values),
  ``before_optimizer_step`` (edit gradients), ``after_step`` (EMA updates).

Two kinds of component have no ports and are typed by their base class:
``Owner`` (holds copies of other nodes' modules, run by ``call: OWNER.NODE``)
and ``Evaluator`` (measures frozen modules on a schedule). Modules may also
tell the optimiser and the sharding about their parameters through the small
protocols ``LayerIds``, ``NoWeightDecay`` and ``ShardUnits``.

Components never import each other; the pipeline YAML wires them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from graphssl.ports import PortType


def _port_dims(types: tuple[PortType, ...], dims: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if dims is not None and (len(types) != 1 or len(dims) != len(types[0].dims)):
        raise ValueError(f"dims {dims} must name each trailing dim of exactly one port type, got {[str(t) for t in types]}")
    return dims


@dataclass(frozen=True)
class In:
    """An input port. ``many`` accepts a list of references (e.g. several views).

    The dry run checks the shapes a node sees and makes: trailing dims with the
    same name agree across a node's ports (``dims`` renames the port type's,
    e.g. ``("Nv", "D")`` for only the visible tokens), and so do the leading
    ``*`` dims of ports with the same ``batch`` name (None: free).
    """

    types: tuple[PortType, ...]
    doc: str
    optional: bool = False
    many: bool = False
    dims: tuple[str, ...] | None = None
    batch: str | None = "*"

    def __init__(self, types: PortType | tuple[PortType, ...], doc: str, optional: bool = False, many: bool = False,
                 dims: tuple[str, ...] | None = None, batch: str | None = "*"):
        types = types if isinstance(types, tuple) else (types,)
        object.__setattr__(self, "types", types)
        object.__setattr__(self, "doc", doc)
        object.__setattr__(self, "optional", optional)
        object.__setattr__(self, "many", many)
        object.__setattr__(self, "dims", _port_dims(types, dims))
        object.__setattr__(self, "batch", batch)

    def __str__(self) -> str:
        kinds = " | ".join(str(t) for t in self.types)
        return f"list of {kinds}" if self.many else kinds


@dataclass(frozen=True)
class Out:
    """An output port; ``dims`` and ``batch`` as for :class:`In`."""

    type: PortType
    doc: str
    dims: tuple[str, ...] | None = None
    batch: str | None = "*"

    def __post_init__(self) -> None:
        _port_dims((self.type,), self.dims)

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
    # Config fields whose values name other nodes' modules ("student", "teacher.student"), not data ports.
    module_refs: ClassVar[tuple[str, ...]] = ()
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


class Owner(Component):
    """Holds copies of other nodes' modules (an EMA teacher); it has no ports.

    ``provides(config)`` names the nodes it copies, ``copy_of(name)`` returns
    the copy, and ``call: OWNER.NODE`` nodes run it.
    """

    @classmethod
    def provides(cls, config: ComponentConfig) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def copy_of(self, name: str) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError


class Evaluator(Component):
    """Measures frozen modules outside the training step, on a schedule; it has no ports.

    ``evaluate(resolve, data, limit)`` returns ``{metric: value}`` for the
    names ``metric_names(config)`` gives; ``resolve("student")`` or
    ``resolve("teacher.student")`` returns the module to measure. It runs every
    ``every(config)`` steps (None: the pipeline's ``eval.every``), before
    training and at the end. The defaults read the Config's ``metric`` and
    ``every`` fields (the registry checks that it has them).
    """

    @classmethod
    def metric_names(cls, config: ComponentConfig) -> tuple[str, ...]:
        return (config.metric,)

    @classmethod
    def every(cls, config: ComponentConfig) -> int | None:
        return config.every

    def evaluate(self, resolve: Callable[[str], nn.Module], data: Any, limit: int) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError


def role_of(cls: type[Component]) -> str:
    """"owner", "evaluator" or "step" (runs every training step): how ``graphssl components`` names the kind."""
    if issubclass(cls, Owner):
        return "owner"
    if issubclass(cls, Evaluator):
        return "evaluator"
    return "step"


@runtime_checkable
class LayerIds(Protocol):
    """A module whose parameters sit in numbered layers (a ViT), for layer-wise lr decay.

    ``layer_id(name)`` is 0 for the embeddings up to ``num_layers()`` for the
    last layer; the optimiser scales a parameter's lr by
    ``layer_decay ** (num_layers() - layer_id(name))``, and the patch
    embedding's (``is_patch_embed(name)``) by ``patch_embed_lr`` too.
    """

    def num_layers(self) -> int: ...

    def layer_id(self, param_name: str) -> int: ...

    def is_patch_embed(self, param_name: str) -> bool: ...


@runtime_checkable
class NoWeightDecay(Protocol):
    """A module that names parameters (as in ``named_parameters()``) that take no weight decay, as timm's
    ``no_weight_decay()``; biases and 1-D parameters never take any."""

    def no_weight_decay(self) -> set[str]: ...


@runtime_checkable
class ShardUnits(Protocol):
    """A module that FSDP2 shards piece by piece: ``fsdp_units()`` (e.g. each transformer block), then itself."""

    def fsdp_units(self) -> list[nn.Module]: ...


def has_hook(component: nn.Module, hook: str) -> bool:
    """True when ``component`` overrides the base class's no-op ``hook``."""
    return isinstance(component, Component) and getattr(type(component), hook) is not getattr(Component, hook)
