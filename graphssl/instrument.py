"""Node hooks that observe a forward pass: time per call, output statistics, output shapes.

The timers and statistics are sampled: they record only while ``active`` (the tracking
plugin switches them on for the steps it logs), so an ordinary step pays nothing and a
GPU is synchronised only where it is timed.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from graphssl.executor import NodeHook, describe
from graphssl.graph import NodeSpec


def _device_of(values: dict[str, Any]) -> torch.device | None:
    for value in values.values():
        if isinstance(value, torch.Tensor):
            return value.device
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            return value[0].device
    return None


class NodeTimer(NodeHook):
    """Milliseconds per call of each node, over the calls made while active (CUDA synchronised)."""

    def __init__(self):
        self.active = False
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._start = 0.0
        self._cuda = False

    def before_node(self, node: NodeSpec, inputs: dict[str, Any]) -> None:
        if not self.active:
            return
        device = _device_of(inputs)
        self._cuda = device is not None and device.type == "cuda"
        if self._cuda:
            torch.cuda.synchronize(device)
        self._start = time.perf_counter()

    def after_node(self, node: NodeSpec, outputs: dict[str, Any], seconds: float) -> None:
        if not self.active:
            return
        if self._cuda:
            torch.cuda.synchronize()
            seconds = time.perf_counter() - self._start
        self.seconds[node.name] = self.seconds.get(node.name, 0.0) + seconds
        self.calls[node.name] = self.calls.get(node.name, 0) + 1

    def pop_ms_per_call(self) -> dict[str, float]:
        """{node: ms per call} since the last pop."""
        out = {n: 1000 * s / self.calls[n] for n, s in self.seconds.items() if self.calls.get(n)}
        self.seconds.clear()
        self.calls.clear()
        return out


class OutputStats(NodeHook):
    """The standard deviation of every floating-point output of a node (``PORT_std``), kept on the device."""

    def __init__(self):
        self.active = False
        self.stats: dict[str, dict[str, torch.Tensor]] = {}

    def after_node(self, node: NodeSpec, outputs: dict[str, Any], seconds: float) -> None:
        if self.active:
            self.stats[node.name] = {f"{port}_std": v.detach().float().std() for port, v in outputs.items()
                                     if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 1}

    def pop(self) -> dict[str, dict[str, torch.Tensor]]:
        out, self.stats = self.stats, {}
        return out


class ShapeTrace(NodeHook):
    """Each node's output shapes as text (``float[4, 65, 192]``), for ``graphssl check``."""

    def __init__(self):
        self.shapes: dict[str, dict[str, str]] = {}

    def after_node(self, node: NodeSpec, outputs: dict[str, Any], seconds: float) -> None:
        self.shapes[node.name] = {port: describe(v) for port, v in outputs.items()}
