"""Runs a validated graph for one batch: nodes in topological order, weighted losses summed.

Free of side effects: it neither logs, nor checkpoints, nor steps an optimiser.
The trainer and its hooks do that around it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphssl.graph import SOURCE, GraphSpec, NodeSpec, Ref


class NodeError(Exception):
    """A failure inside a node, with the node, its component and its input shapes."""

    def __init__(self, node: str, type_name: str, inputs: dict[str, Any], cause: BaseException):
        self.node = node
        shapes = ", ".join(f"{k}={describe(v)}" for k, v in inputs.items()) or "no inputs"
        super().__init__(f"node {node!r} ({type_name}) failed: {type(cause).__name__}: {cause}\n  inputs: {shapes}")


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        kind = str(value.dtype).replace("torch.", "")
        return f"{kind}{list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    return type(value).__name__


class NodeHook:
    """Called around every node call of a forward pass (timers, FLOP counters, ...); no-op defaults."""

    def before_node(self, node: NodeSpec, inputs: dict[str, Any]) -> None:
        """Just before ``node`` runs on ``inputs`` (port -> value)."""

    def after_node(self, node: NodeSpec, outputs: dict[str, Any], seconds: float) -> None:
        """Just after ``node`` returned ``outputs`` (port -> value), ``seconds`` after it started."""


@dataclass
class PlannedNode:
    spec: NodeSpec
    module: nn.Module
    inputs: dict[str, Ref | list[Ref]]
    no_grad: bool
    release: list[Ref]  # values nobody needs after this node


def resolve_module(spec: NodeSpec, modules: dict[str, nn.Module]) -> nn.Module:
    """The module a node runs: its own, another node's (shared weights), or an owner's copy."""
    if spec.call is None:
        return modules[spec.name]
    if spec.call in modules:
        return modules[spec.call]
    owner, _, target = spec.call.partition(".")
    return modules[owner].copy_of(target)


class Executor(nn.Module):
    """Holds every node's module and runs the graph forward."""

    def __init__(self, spec: GraphSpec, modules: dict[str, nn.Module], hooks: list[NodeHook] = ()):
        super().__init__()
        self.spec = spec
        self.hooks: list[NodeHook] = list(hooks)
        self.nodes = nn.ModuleDict(modules)
        self.plan = self._plan(spec, modules)
        self.node_seconds: dict[str, float] = {n: 0.0 for n in spec.order}
        self.node_calls: dict[str, int] = {n: 0 for n in spec.order}
        self.collect_stats = False
        self.trace: dict[str, dict[str, str]] | None = None  # set to {} to record output shapes
        self.stats: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _plan(spec: GraphSpec, modules: dict[str, nn.Module]) -> list[PlannedNode]:
        last_use: dict[Ref, int] = {}
        for i, name in enumerate(spec.order):
            for refs in spec.nodes[name].inputs.values():
                for ref in refs if isinstance(refs, list) else [refs]:
                    last_use[ref] = i
        keep = set(spec.objective)
        plan = []
        for i, name in enumerate(spec.order):
            node = spec.nodes[name]
            release = [ref for ref, last in last_use.items() if last == i and ref not in keep]
            owned_copy = node.call is not None and node.call not in modules
            plan.append(PlannedNode(node, resolve_module(node, modules), node.inputs, node.cls.no_grad or owned_copy, release))
        return plan

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[Ref, torch.Tensor]:
        """Run every step node; returns the objective's losses by (node, port)."""
        values: dict[Ref, torch.Tensor] = {(SOURCE, k): v for k, v in batch.items()}
        for planned in self.plan:
            name = planned.spec.name
            try:
                kwargs = {port: [values[r] for r in refs] if isinstance(refs, list) else values[refs]
                          for port, refs in planned.inputs.items()}
            except KeyError as e:
                raise NodeError(name, planned.spec.type_name, {}, KeyError(f"input {e.args[0]} was not produced")) from None
            for hook in self.hooks:
                hook.before_node(planned.spec, kwargs)
            start = time.perf_counter()
            try:
                with torch.set_grad_enabled(torch.is_grad_enabled() and not planned.no_grad):
                    outputs = planned.module(**kwargs)
            except NodeError:
                raise
            except Exception as e:
                raise NodeError(name, planned.spec.type_name, kwargs, e) from e
            seconds = time.perf_counter() - start
            for hook in self.hooks:
                hook.after_node(planned.spec, outputs, seconds)
            self.node_seconds[name] += seconds
            self.node_calls[name] += 1
            for port, value in outputs.items():
                values[(name, port)] = value
            if self.trace is not None:
                self.trace[name] = {port: describe(v) for port, v in outputs.items()}
            if self.collect_stats:
                self.stats[name] = {f"{port}_std": v.detach().float().std() for port, v in outputs.items()
                                    if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 1}
            for ref in planned.release:
                values.pop(ref, None)
        missing = [f"{n}.{p}" for n, p in self.spec.objective if (n, p) not in values]
        if missing:
            raise NodeError(missing[0].split(".")[0], "objective", {}, KeyError(f"loss output {missing} was not produced"))
        return {ref: values[ref] for ref in self.spec.objective}

    def total_loss(self, losses: dict[Ref, torch.Tensor]) -> torch.Tensor:
        return sum(w * losses[ref] for ref, w in self.spec.objective.items())

    def components(self) -> dict[str, nn.Module]:
        return dict(self.nodes.items())
