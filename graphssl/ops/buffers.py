"""CPU output buffers reused from step to step, where no caching allocator keeps freed memory.

On a CPU every fresh tensor of tens of MB costs a page fault per 4 KB page the
first time it is written, which for the colour ops costs more than their
arithmetic (a GPU's caching allocator already reuses its memory). A pooled
buffer is handed out as a view, and handed out again only once that view and
everything made from it (further views, tensors autograd saved, references) are
gone: when its storage's reference count is back to what the pool alone holds.
"""
from __future__ import annotations

import torch

# the storage's reference count; without it (a torch that lacks it) nothing is reused
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _holders(buffer: torch.Tensor) -> int:
    return _storage_use_count(buffer.untyped_storage()._cdata)


class BufferPool:
    """Uninitialised CPU tensors by shape and dtype, at most ``keep`` of each held for reuse."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._held: dict[tuple, list[tuple[torch.Tensor, int]]] = {}

    def empty(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor of ``shape`` whose contents are undefined: a free pooled buffer, else a new one."""
        if _storage_use_count is None:
            return torch.empty(shape, dtype=dtype)
        held = self._held.setdefault((tuple(shape), dtype), [])
        for buffer, alone in held:
            if _holders(buffer) == alone:
                return buffer.view(shape)
        buffer = torch.empty(shape, dtype=dtype)
        if len(held) < self.keep:
            held.append((buffer, _holders(buffer)))
            return buffer.view(shape)
        return buffer
