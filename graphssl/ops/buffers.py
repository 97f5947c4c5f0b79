"""CPU output buffers reused from step to step, where no caching allocator keeps freed memory.

On a CPU every fresh tensor of tens of MB costs a page fault per 4 KB page the
first time it is written, which for the colour ops costs more than their
arithmetic (a GPU's caching allocator already reuses its memory). A pooled
buffer is handed out as a view, and handed out again only once that view and
everything made from it (further views, tensors autograd saved, references,
numpy arrays) are gone: when its storage's reference count is back to what the
pool alone holds. Not counted, so not to be kept from a pooled tensor: a bare
``Tensor.untyped_storage()`` object. A buffer moved to shared memory is never
handed out again.
"""
from __future__ import annotations

from collections import OrderedDict

import torch


def _probe_use_count():
    """torch's storage reference count, if it is there and counts a view (else nothing is reused)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    try:
        t = torch.empty(1)
        alone = count(t.untyped_storage()._cdata)
        view = t.view(1)
        works = count(t.untyped_storage()._cdata) == alone + 1
        del view
        return count if works and count(t.untyped_storage()._cdata) == alone else None
    except Exception:  # a changed private API: allocate fresh tensors as before
        return None


_storage_use_count = _probe_use_count()


def _holders(buffer: torch.Tensor) -> int:
    return _storage_use_count(buffer.untyped_storage()._cdata)


class BufferPool:
    """Uninitialised CPU tensors by shape and dtype: at most ``keep`` of each, for the ``shapes`` last used."""

    def __init__(self, keep: int = 2, shapes: int = 4):
        self.keep, self.shapes = keep, shapes
        self._held: OrderedDict[tuple, list[tuple[torch.Tensor, int]]] = OrderedDict()

    def empty(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor of ``shape`` whose contents are undefined: a free pooled buffer, else a new one."""
        if _storage_use_count is None:
            return torch.empty(shape, dtype=dtype)
        key = (tuple(shape), dtype)
        held = self._held.setdefault(key, [])
        self._held.move_to_end(key)
        while len(self._held) > self.shapes:  # batch shapes seen long ago: let their memory go
            self._held.popitem(last=False)
        for buffer, alone in held:
            if not buffer.is_shared() and _holders(buffer) == alone:
                return buffer.view(shape)
        buffer = torch.empty(shape, dtype=dtype)
        if len(held) < self.keep:
            held.append((buffer, _holders(buffer)))
            return buffer.view(shape)
        return buffer
