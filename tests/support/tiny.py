"""Tiny tensors of a port type, for tests that feed components without a graph."""
from __future__ import annotations

from typing import Mapping

import torch

from graphssl.ports import PortType


def example_value(t: PortType, lead: tuple[int, ...], sizes: Mapping[str, int], names: tuple[str, ...] | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A random tensor of port type ``t`` with leading dims ``lead`` and the named dims' ``sizes`` (for tests)."""
    shape = (lead if t.batched else ()) + tuple(sizes[n] for n in (names or t.dims))
    if t.dtype == "bool":
        return torch.rand(shape, generator=generator) < 0.5
    if t.dtype == "long":
        return torch.randint(0, sizes.get("K", 2), shape, generator=generator)
    return torch.randn(shape, generator=generator)
