"""Training batches and evaluation sets: in memory (Fashion-MNIST, MNIST, CIFAR-10) or streamed (folders, shards).

``Data(cfg, device, seed, rank, world_size, spec)`` returns the right one; both offer
``batch(step)``, ``batches(start_step)``, ``steps_per_epoch``, ``eval_batches(split, limit)``,
``eval_set(split, limit)``, ``mean``/``std``, ``to_input`` and ``device``.
"""
from __future__ import annotations

from graphssl.data.common import NORMALIZE, BadImage, DatasetMissing, ImageSet
from graphssl.data.memory import MemoryData, load_split, read_idx
from graphssl.data.stream import StreamingData

STREAMED = ("image_folder", "shards")


class Data:
    """The data of one pipeline run: ``Data(...)`` is a MemoryData or a StreamingData (by ``cfg.dataset``)."""

    def __new__(cls, cfg, device, seed: int = 0, rank: int = 0, world_size: int = 1, spec=None):
        kind = StreamingData if cfg.dataset in STREAMED else MemoryData
        return kind(cfg, device, seed, rank, world_size, spec)


__all__ = ["Data", "DatasetMissing", "BadImage", "ImageSet", "NORMALIZE", "MemoryData", "StreamingData", "load_split",
           "read_idx"]
