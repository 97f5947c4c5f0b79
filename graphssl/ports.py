"""Port types: the typed edges of a pipeline graph.

A port type names what flows along an edge and its shape. ``*`` stands for the
leading batch dimensions: ``[B]`` for one view per image, ``[V, B]`` for V views
(multi-crop). Every port type is defined once here and imported by components.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PortType:
    name: str
    dtype: str  # "float", "bool" or "long"
    dims: tuple[str, ...]  # trailing dims after the leading "*" batch dims
    doc: str
    batched: bool = True  # False for scalars such as a loss

    def __str__(self) -> str:
        shape = ",".join((("*",) if self.batched else ()) + self.dims)
        return f"{self.name} {self.dtype}[{shape}]"

    def check(self, value: torch.Tensor) -> str | None:
        """Return a description of what is wrong with ``value``, or None."""
        if not isinstance(value, torch.Tensor):
            return f"expected a tensor, got {type(value).__name__}"
        kind = "bool" if value.dtype == torch.bool else ("float" if value.is_floating_point() else "long")
        if kind != self.dtype:
            return f"expected dtype {self.dtype}, got {value.dtype}"
        min_rank = len(self.dims) + (1 if self.batched else 0)
        if value.dim() < min_rank or (not self.batched and value.dim() != min_rank):
            return f"expected {self}, got shape {tuple(value.shape)}"
        return None


IMAGES = PortType("images", "float", ("C", "H", "W"), "images, normalised, channels first")
TOKEN_MASK = PortType("token_mask", "bool", ("N",), "patch-token mask on the encoder grid, True = masked")
TOKENS = PortType("tokens", "float", ("N", "D"), "patch tokens in grid order (row-major)")
VECTOR = PortType("vector", "float", ("D",), "one feature vector per image, e.g. the [CLS] token")
LOGITS = PortType("logits", "float", ("K",), "unnormalised scores over K classes or prototypes")
TOKEN_LOGITS = PortType("token_logits", "float", ("N", "K"), "per-token scores over K classes, codes or prototypes")
PROBS = PortType("probs", "float", ("K",), "a probability distribution over K prototypes per image")
TOKEN_PROBS = PortType("token_probs", "float", ("N", "K"), "per-token probability distributions over K")
PATCHES = PortType("patches", "float", ("N", "P"), "per-patch pixel values, P = p*p*C, grid order")
TOKEN_IDS = PortType("token_ids", "long", ("N",), "one discrete code id per patch token")
LOSS = PortType("loss", "float", (), "a scalar loss to minimise", batched=False)

ALL_PORT_TYPES = {
    t.name: t
    for t in (IMAGES, TOKEN_MASK, TOKENS, VECTOR, LOGITS, TOKEN_LOGITS, PROBS, TOKEN_PROBS, PATCHES, TOKEN_IDS, LOSS)
}
