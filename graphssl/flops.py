"""Counted FLOPs of one training step, per graph node.

What is counted is what ``torch.utils.flop_counter.FlopCounterMode`` counts:
matrix products (mm, addmm, bmm, baddbmm: 2*M*N*K each), convolutions and
fused attention (``scaled_dot_product_attention``: its two products forward,
five backward, the kernels recomputing the scores). Registered here on top:
CPU's fused attention kernel (the same formulas as the CUDA kernels) and the
EMA update of teachers (``_foreach_mul_``: 1 FLOP per element,
``_foreach_add_`` with alpha: 2). Element-wise work (norms, activations,
softmax, losses, the optimiser step) is not counted, as model-FLOP-utilisation
conventions do. A backward product that the autograd graph does not need is
not computed, so not counted: the patch embedding, whose input is the images,
costs its weight gradient only.

A step is the forward of every node in graph order, the backward of the
summed objective and every ``after_step`` hook (EMA teachers). Attribution:

- forward: the counter's total is read just before and after each node call
  (executor node hooks);
- backward: each autograd node created during a graph node's forward is
  tagged with that graph node; the counter is read before and after each
  autograd node runs, so the backward through a node's computation is charged
  to it (a module called at two nodes is charged at each);
- updates: read around each ``after_step`` hook.

The step is counted on real tensors at the real per-process batch size (it
runs once, in the dry run): MAE's visible-only encoder keeps the number of
tokens the mask leaves, which fake or meta tensors cannot know, and
batch-quadratic terms (KoLeo's pairwise distances) are exact without scaling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from graphssl.executor import Executor, NodeHook

aten = torch.ops.aten


def _numel(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


def _foreach_mul_flops(shapes, *args, out_shape=None, **kwargs) -> int:
    return _numel(shapes)


def _foreach_add_flops(shapes, others, *args, alpha=1, out_shape=None, **kwargs) -> int:
    return _numel(shapes) * (1 if alpha == 1 else 2)


# Shape-based formulas (FlopCounterMode passes tensor arguments as their shapes).
EXTRA_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop.__wrapped__,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_backward_flop.__wrapped__,
    aten._foreach_mul_: _foreach_mul_flops,
    aten._foreach_add_: _foreach_add_flops,
}


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step of one process, by graph node."""

    forward: dict[str, int]
    backward: dict[str, int]
    update: dict[str, int]  # after_step hooks (EMA teachers)
    unattributed: int  # backward of work outside any node (the objective's weighted sum): normally 0
    batch_size: int  # source images of the step (per process)

    @property
    def total(self) -> int:
        return sum(self.forward.values()) + sum(self.backward.values()) + sum(self.update.values()) + self.unattributed

    @property
    def per_image(self) -> float:
        return self.total / self.batch_size

    def of_node(self, name: str) -> int:
        return self.forward.get(name, 0) + self.backward.get(name, 0) + self.update.get(name, 0)


def _grad_fns(values) -> list:
    out = []
    for value in values:
        if isinstance(value, (list, tuple)):
            out += _grad_fns(value)
        elif isinstance(value, torch.Tensor) and value.grad_fn is not None:
            out.append(value.grad_fn)
    return out


class StepCounter(NodeHook):
    """Counts one training step by node; use as ``with StepCounter(executor) as c: forward, c.backward(loss), c.after_step(...)``."""

    def __init__(self, executor: Executor):
        self.executor = executor
        self.mode = FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
        self.forward: dict[str, int] = {}
        self.backward_by_node: dict[str, int] = {}
        self.update: dict[str, int] = {}
        self.backward_total = 0
        self._owner: dict = {}  # autograd node -> graph node whose forward created it
        self._handles: list = []
        self._start = 0
        self._open: tuple[str, int] | None = None

    def total(self) -> int:
        return self.mode.get_total_flops()

    def __enter__(self) -> "StepCounter":
        self.mode.__enter__()
        self.executor.hooks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self.executor.hooks.remove(self)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._owner.clear()
        self.mode.__exit__(*exc)

    # -- forward: executor node hooks -------------------------------------------
    def before_node(self, node, inputs) -> None:
        self._start = self.total()

    def after_node(self, node, outputs, seconds) -> None:
        self.forward[node.name] = self.forward.get(node.name, 0) + self.total() - self._start
        self._tag(node.name, _grad_fns(outputs.values()))

    def _tag(self, name: str, roots: list) -> None:
        """Tag the autograd nodes this graph node created (those not reached from earlier nodes' outputs)."""
        todo = [f for f in roots if f not in self._owner]
        while todo:
            fn = todo.pop()
            if fn in self._owner:
                continue
            self._owner[fn] = name
            if type(fn).__name__ != "AccumulateGrad":  # leaves: no work of their own
                self._handles.append(fn.register_prehook(self._enter(name)))
                self._handles.append(fn.register_hook(self._leave))
            todo += [next_fn for next_fn, _ in fn.next_functions if next_fn is not None and next_fn not in self._owner]

    def _enter(self, name: str):
        def hook(grad_outputs):
            self._open = (name, self.total())
        return hook

    def _leave(self, grad_inputs, grad_outputs):
        if self._open is not None:
            name, start = self._open
            self.backward_by_node[name] = self.backward_by_node.get(name, 0) + self.total() - start
            self._open = None

    # -- backward and updates -----------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        start = self.total()
        loss.backward()
        self.backward_total += self.total() - start

    def after_step(self, components: dict[str, torch.nn.Module], progress) -> None:
        """Run ``after_step(progress)`` of each named component, counting each."""
        for name, component in components.items():
            start = self.total()
            component.after_step(progress)
            self.update[name] = self.update.get(name, 0) + self.total() - start

    def result(self, batch_size: int) -> StepFlops:
        attributed = sum(self.backward_by_node.values())
        return StepFlops(dict(self.forward), dict(self.backward_by_node), dict(self.update),
                         self.backward_total - attributed, batch_size)


# ----------------------------------------------------------------------------- devices

# Dense peak FLOP/s per device (no sparsity), by precision: the vendors' data sheets.
# fp32 is the plain fp32 rate (torch does not use TF32 for matmuls unless allowed).
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [  # matched in order, as a substring of the device name
    ("H200 NVL", {"bf16": 835e12, "fp32": 60e12}),
    ("H200", {"bf16": 989e12, "fp32": 67e12}),
    ("H100 NVL", {"bf16": 835e12, "fp32": 60e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp32": 67e12}),  # SXM
    ("A100", {"bf16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp32": 30.3e12}),
]


def device_name(device: torch.device) -> str:
    """"NVIDIA H100 80GB HBM3" on CUDA, "cpu" otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def peak_flops(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one device at ``precision`` ("bf16" or "fp32"), None when not known (CPUs)."""
    for key, peaks in PEAK_FLOPS:
        if key.lower() in name.lower():
            return peaks.get(precision)
    return None


def format_flops(value: float, unit: str = "FLOP") -> str:
    """1.5e9 -> "1.50 GFLOP"."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


# ----------------------------------------------------------------------------- what runs log

def run_params(step: StepFlops, world_size: int, device: torch.device) -> dict[str, str]:
    """Parameters of a stage's run: the counted cost per step of all processes and per image, the
    forward/backward/update split, the global batch and the device (for the compute axis and MFU)."""
    return {"flops_per_step": str(step.total * world_size), "flops_per_image": f"{step.per_image:.6g}",
            "flops_per_step_forward": str(sum(step.forward.values()) * world_size),
            "flops_per_step_backward": str((sum(step.backward.values()) + step.unattributed) * world_size),
            "flops_per_step_update": str(sum(step.update.values()) * world_size),
            "global_batch": str(step.batch_size * world_size), "world_size": str(world_size),
            "device_name": device_name(device)}


def node_params(step: StepFlops, node: str, world_size: int) -> dict[str, str]:
    """Parameters of one node's run: its share of a step (all processes) and per image."""
    flops = step.of_node(node)
    return {"flops_per_step": str(flops * world_size), "flops_per_image": f"{flops / step.batch_size:.6g}"}


def summary(step: StepFlops) -> str:
    """One line for ``graphssl check``: the step's total, its split and the cost per image."""
    forward, backward = sum(step.forward.values()), sum(step.backward.values()) + step.unattributed
    update = sum(step.update.values())
    return (f"counted FLOPs of one training step (batch {step.batch_size}, one process): {format_flops(step.total)} = "
            f"forward {format_flops(forward)} + backward {format_flops(backward)} + updates {format_flops(update)}; "
            f"{format_flops(step.per_image)} per image")
