"""An exponential-moving-average teacher (DINO, iBOT, DINOv2): TGT.ema.

An owner node: it holds frozen deep copies of the named student modules
(``of: [student, head]``), which pipeline nodes run with ``call: teacher.student``.
After every optimiser step each copy moves towards its student:

    theta_t <- m * theta_t + (1 - m) * theta_s      (parameters, matched by name)
    buffers_t <- buffers_s

with momentum m following a schedule (DINO/iBOT: cosine 0.996 -> 1; DINOv2
0.992 -> 1; 0.994 for L/g). The copies never require gradients and always stay
in eval mode, so stochastic depth (drop path) and dropout are off in the teacher.
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field, field_validator
from torch import nn

from graphssl.component import BuildContext, ComponentConfig, Owner, Progress
from graphssl.registry import register
from graphssl.schedules import Schedule, Scheduled, check_range, value_at


@torch.no_grad()
def ema_update(teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: float) -> None:
    """In place, over matched tensors: t = m * t + (1 - m) * s (torch._foreach_*: one kernel per group)."""
    if not teacher:
        return
    torch._foreach_mul_(teacher, momentum)
    torch._foreach_add_(teacher, student, alpha=1.0 - momentum)


@register("teacher.ema")
class EMATeacher(Owner):
    """Frozen, eval-mode EMA copies of student modules; run them with ``call: <this node>.<module>``."""

    no_grad = True
    module_refs = ("of",)

    class Config(ComponentConfig):
        of: list[str] = Field(description="node names of the student modules to copy, e.g. [student, head]")
        momentum: Scheduled = Field(Schedule(start=0.996, end=1.0, shape="cosine"),
                                    description="EMA momentum m (DINO/iBOT cosine 0.996 -> 1; DINOv2 0.992 -> 1)")

        @field_validator("momentum")
        @classmethod
        def _momentum_in_unit_range(cls, v: Scheduled) -> Scheduled:
            return check_range(v, ge=0.0, le=1.0)

        @field_validator("of")
        @classmethod
        def _non_empty(cls, v: list[str]) -> list[str]:
            if not v:
                raise ValueError("name at least one module to copy")
            if len(set(v)) != len(v):
                raise ValueError(f"duplicate module names in {v}")
            return v

    inputs = {}
    outputs = {}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        missing = [n for n in config.of if n not in ctx.modules]
        if missing:
            raise ValueError(f"teacher.ema: modules {missing} are not built (known: {sorted(ctx.modules)})")
        # The students are held outside the module tree: not in this node's
        # state dict, parameters or .to() calls (they are their own nodes).
        self._students: dict[str, nn.Module] = {n: ctx.modules[n] for n in config.of}
        self.copies = nn.ModuleDict({n: copy.deepcopy(ctx.modules[n]) for n in config.of})
        for p in self.copies.parameters():
            p.requires_grad_(False)
        self.copies.eval()
        self.momentum = value_at(config.momentum, Progress(0, ctx.total_steps, ctx.steps_per_epoch))

    @classmethod
    def provides(cls, config: Config) -> list[str]:
        return list(config.of)

    def copy_of(self, name: str) -> nn.Module:
        return self.copies[name]

    def train(self, mode: bool = True) -> "EMATeacher":
        super().train(mode)
        self.copies.eval()  # the teacher never uses drop path or dropout
        return self

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        t_params, s_params, t_bufs, s_bufs = [], [], [], []
        for name, student in self._students.items():
            teacher = self.copies[name]
            s_named = dict(student.named_parameters())
            for pname, tp in teacher.named_parameters():
                sp = s_named.get(pname)
                if sp is None or sp.shape != tp.shape:
                    raise RuntimeError(f"teacher.ema: {name}.{pname} has no matching student parameter")
                t_params.append(tp)
                s_params.append(sp.detach())
            s_bufs_named = dict(student.named_buffers())
            for bname, tb in teacher.named_buffers():
                sb = s_bufs_named.get(bname)
                if sb is not None:
                    t_bufs.append(tb)
                    s_bufs.append(sb)
        return t_params, s_params, t_bufs, s_bufs

    def after_step(self, progress: Progress) -> None:
        m = value_at(self.config.momentum, progress)
        self.momentum = m
        t_params, s_params, t_bufs, s_bufs = self._pairs()
        groups: dict[tuple, tuple[list, list]] = {}
        for t, s in zip(t_params, s_params):  # _foreach needs one device and dtype per call
            key = (t.device, t.dtype)
            groups.setdefault(key, ([], []))
            groups[key][0].append(t)
            groups[key][1].append(s.to(t.dtype))
        for ts, ss in groups.values():
            ema_update(ts, ss, m)
        with torch.no_grad():
            for tb, sb in zip(t_bufs, s_bufs):
                tb.copy_(sb)
        self.log("momentum", m)
