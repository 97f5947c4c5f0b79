"""Port types checked on real tensors (the dry run): what a node gets and gives against its declared ports.

Each value must have its port type's dtype and rank (``PortType.check``), with
``*`` one or two leading dims (``[B]`` or ``[V,B]``). Across one node's ports,
inputs and outputs together, trailing dims with the same name (N, K, D, P, C,
H, W, or a port's own ``dims``) must have the same size, and so must the
leading dims of ports with the same ``batch`` name. Each problem names the
node, the port, what was expected (with the sizes bound so far, and where
they came from) and the shape it got.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from graphssl.component import Component, In, Out
from graphssl.executor import NodeHook, describe
from graphssl.ports import PortType
from graphssl.spec import NodeSpec


@dataclass(frozen=True)
class ShapeProblem:
    node: str
    type_name: str
    port: str  # "images", or "student[1]" for the second value of a list port
    output: bool
    expected: str
    actual: str

    @property
    def path(self) -> str:
        """The YAML path to report it at: the input's reference, or the node."""
        return f"nodes.{self.node}" if self.output else f"nodes.{self.node}.{self.port.split('[')[0]}"

    def __str__(self) -> str:
        side = "output" if self.output else "input"
        return f"node {self.node!r} ({self.type_name}) {side} {self.port!r}: expected {self.expected}, got {self.actual}"


class _Binder:
    """Sizes of named dims and leading shapes seen so far at one node, with the port that set each."""

    def __init__(self, node: str, cls: type[Component], sizes: Mapping[str, int]):
        self.node, self.cls = node, cls
        self.dims: dict[str, tuple[int, str]] = {name: (size, "the expected sizes") for name, size in sizes.items()}
        self.batches: dict[str, tuple[tuple[int, ...], str]] = {}
        self.problems: list[ShapeProblem] = []

    def _problem(self, port: str, output: bool, expected: str, value: Any) -> None:
        self.problems.append(ShapeProblem(self.node, self.cls.type_name, port, output, expected, describe(value)))

    def check(self, port: str, output: bool, decl: In | Out, value: Any) -> None:
        types: tuple[PortType, ...] = decl.types if isinstance(decl, In) else (decl.type,)
        fits = [t for t in types if t.check(value) is None]
        if not fits:
            self._problem(port, output, " or ".join(str(t) for t in types), value)
            return
        t = fits[0]
        names = decl.dims or t.dims
        shape = tuple(value.shape)
        lead, trailing = shape[: len(shape) - len(names)], shape[len(shape) - len(names):]
        where = f"{'output' if output else 'input'} {port!r}"
        if t.batched and not 1 <= len(lead) <= 2:
            self._problem(port, output, f"{_written(t, names)} with * = [B] or [V,B]", value)
            return
        if t.batched and decl.batch is not None:
            seen = self.batches.setdefault(decl.batch, (lead, where))
            if seen[0] != lead:
                self._problem(port, output, f"{_written(t, names)} with * = {list(seen[0])} as in {seen[1]}", value)
                return
        for name, size in zip(names, trailing):
            seen_size, seen_where = self.dims.setdefault(name, (size, where))
            if seen_size != size:
                self._problem(port, output, f"{_written(t, names)} with {name}={seen_size} as in {seen_where}", value)
                return


def _written(t: PortType, names: tuple[str, ...]) -> str:
    return f"{t.name} {t.dtype}[{','.join((('*',) if t.batched else ()) + tuple(names))}]"


def check_node(node: str, cls: type[Component], inputs: Mapping[str, Any],
               outputs: Mapping[str, Any] | None = None, sizes: Mapping[str, int] = {}) -> list[ShapeProblem]:
    """Problems of the values node ``node`` (a ``cls``) got (``inputs``) and, when given, gave (``outputs``).

    Missing optional inputs (absent or None) and outputs a component leaves out
    (e.g. head.dino's ``patches`` without patch inputs) are not problems; an
    output it does not declare is. ``sizes`` binds named dims before any port does.
    """
    binder = _Binder(node, cls, sizes)
    for port, decl in cls.inputs.items():
        value = inputs.get(port)
        if value is None:
            continue
        if decl.many and isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                binder.check(f"{port}[{i}]", False, decl, item)
        else:
            binder.check(port, False, decl, value)
    for port, value in (outputs or {}).items():
        decl = cls.outputs.get(port)
        if decl is None:
            declared = ", ".join(cls.outputs) or "none"
            binder.problems.append(ShapeProblem(node, cls.type_name, port, True, f"one of its declared outputs ({declared})",
                                                describe(value)))
        elif value is not None:
            binder.check(port, True, decl, value)
    return binder.problems


class PortTypeError(Exception):
    """Values that do not fit their ports, found while the graph runs."""

    def __init__(self, problems: list[ShapeProblem]):
        self.problems = problems
        super().__init__("; ".join(map(str, problems)))


class PortChecks(NodeHook):
    """An executor hook that checks every node's inputs before it runs and its outputs after (the dry run)."""

    def __init__(self) -> None:
        self._inputs: dict[str, Any] = {}

    def before_node(self, node: NodeSpec, inputs: dict[str, Any]) -> None:
        problems = check_node(node.name, node.cls, inputs)
        if problems:
            raise PortTypeError(problems)
        self._inputs = inputs

    def after_node(self, node: NodeSpec, outputs: dict[str, Any], seconds: float) -> None:
        problems = check_node(node.name, node.cls, self._inputs, outputs)
        if problems:
            raise PortTypeError(problems)
