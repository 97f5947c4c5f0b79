"""ColorJitter, batched: per-image factors and op orders, applied as a list of steps (blends and one hue shift).

torchvision's ColorJitter draws brightness, contrast, saturation ~ U[max(0, 1-v),
1+v] and hue ~ U[-v, v] per call, and applies the four ops in a random order
(``randperm(4)``). Batched, every image has its own factors and order:
:func:`jitter_steps` turns them into at most seven steps that each run once over
the batch (the blends before each image's hue, the hue shift, the blends after),
and :func:`run_steps_` applies them. Images are float[n,C,H,W] in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from graphssl.ops.augment import blend_, hue_, on_images_


@dataclass
class JitterStep:
    """One pass over the batch: a blend (op long[n] in 0-2, factor float[n]) on the images ``on`` (bool[n]),
    or, with ``op`` None, the hue shift ``factor`` on every image."""

    op: torch.Tensor | None
    factor: torch.Tensor
    on: torch.Tensor | None = None

    def take(self, index) -> "JitterStep":
        return JitterStep(None if self.op is None else self.op[index], self.factor[index],
                          None if self.on is None else self.on[index])


def draw_jitter(n: int, device: torch.device, brightness: float = 0.4, contrast: float = 0.4,
                saturation: float = 0.2, hue: float = 0.1, prob: float = 0.8,
                random_order: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """ColorJitter's draws for n images: (jittered bool[n], factors float[n,4], order long[n,4] or None).

    Images not jittered get neutral factors. With ``random_order`` each image gets its
    own order of the four ops.
    """
    on = torch.rand(n, device=device) < prob

    def factor(v: float, centre: float) -> torch.Tensor:
        lo = max(0.0, centre - v) if centre == 1.0 else -v
        f = torch.empty(n, device=device).uniform_(lo, centre + v)
        return torch.where(on, f, torch.full_like(f, centre))

    factors = torch.stack([factor(brightness, 1.0), factor(contrast, 1.0), factor(saturation, 1.0),
                           factor(hue, 0.0)], dim=1)
    order = torch.rand(n, 4, device=device).argsort(dim=1) if random_order else None
    return on, factors, order


def jitter_steps(factors: torch.Tensor, order: torch.Tensor | None = None,
                 active: tuple[bool, ...] = (True, True, True, True)) -> list[JitterStep]:
    """The steps that apply brightness, contrast, saturation, hue with ``factors`` float[n,4], image i in the
    order ``order[i]`` (long[n,4]: the op index at each position; None = 0, 1, 2, 3). Ops flagged inactive
    are skipped.

    Hue (the costly op) runs once per image; the blends run one step per position: first
    the three positions before each image's hue, then hue, then the three after it. At
    each position only the images whose op there falls on that side of their hue (and
    is active) take the step.
    """
    if order is None:
        steps = [JitterStep(torch.full_like(factors[:, 0], k, dtype=torch.long), factors[:, k]) for k in range(3)
                 if active[k]]
        return steps + ([JitterStep(None, factors[:, 3])] if active[3] else [])
    if not active[3]:  # hue inactive: its position does not matter
        order = torch.cat([order[order != 3].view(-1, 3), order[:, :1].new_full((order.shape[0], 1), 3)], dim=1)
    hue_pos = order.argsort(dim=1)[:, 3]
    enabled = torch.tensor(list(active[:3]) + [False], device=factors.device)
    stages = (("before", range(0, 3)), ("after", range(1, 4))) if active[3] else (("before", range(0, 3)),)
    steps = []
    for stage, positions in stages:
        for position in positions:
            side = position < hue_pos if stage == "before" else position > hue_pos
            op = order[:, position]
            blend = op.clamp(max=2)  # 3 (hue) only where ``side`` is False
            steps.append(JitterStep(blend, factors.gather(1, blend[:, None])[:, 0], side & enabled[op]))
        if stage == "before" and active[3]:
            steps.append(JitterStep(None, factors[:, 3]))
    return steps


def run_steps_(x: torch.Tensor, steps: list[JitterStep], gather: bool | None = None) -> torch.Tensor:
    """x after ``steps``, in place; a blend touches only its images (gathered on a CPU: gather=None picks by
    device; otherwise the others are kept by ``torch.where``, without a host synchronisation)."""
    gather = x.is_cpu if gather is None else gather
    for s in steps:
        if s.op is None:
            x = hue_(x, s.factor)
        elif s.on is None:
            x = blend_(x, s.op, s.factor)
        else:
            x = on_images_(x, s.on, lambda sub, i, s=s: blend_(sub, s.op[i], s.factor[i]), gather)
    return x


def jitter_in_order(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor | None = None,
                    active: tuple[bool, ...] = (True, True, True, True), gather: bool | None = None) -> torch.Tensor:
    """x (left as it was) with the four ops applied in each image's order; see :func:`jitter_steps`."""
    return run_steps_(x.clone(), jitter_steps(factors, order, active), gather)


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 hue: float = 0.1, prob: float = 0.8, random_order: bool = True) -> torch.Tensor:
    """torchvision's ColorJitter applied to each image with probability ``prob`` (see :func:`draw_jitter`);
    ops whose strength is 0 are skipped. x is left as it was."""
    on, factors, order = draw_jitter(x.shape[0], x.device, brightness, contrast, saturation, hue, prob, random_order)
    steps = jitter_steps(factors, order, (brightness > 0, contrast > 0, saturation > 0, hue > 0))
    gather = x.is_cpu
    return on_images_(x.clone(), on, lambda sub, i: run_steps_(sub, [s.take(i) for s in steps], gather), gather)

