"""The batch order: which images step s uses, a pure function of (seed, epoch, step, rank).

Every epoch is a fresh permutation fixed by the seed (as DistributedSampler
with per-epoch reshuffle); the global batch of a step is split between the
processes by rank, and the last partial batch of an epoch is dropped. A step
is therefore a data position: resuming at step s, or reading with any number
of loader workers, gives the same images.
"""
from __future__ import annotations

import torch


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """long[n]: the image order of ``epoch``."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g)


class BatchOrder:
    """Index batches of a training set of ``n`` images; caches the current epoch's permutation."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self._epoch, self._perm = -1, None

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def indices(self, step: int) -> torch.Tensor:
        """long[batch_size]: this process's image indices at ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(self.seed, epoch, self.n)
        start = (i * self.world_size + self.rank) * self.batch_size
        return self._perm[start: start + self.batch_size]


class StepBatches(torch.utils.data.Sampler):
    """A DataLoader batch sampler: for step = start, start + 1, ... the list [(step, index), ...]."""

    def __init__(self, order: BatchOrder, start_step: int, end_step: int | None = None):
        self.order, self.start, self.end = order, start_step, end_step

    def __iter__(self):
        step = self.start
        while self.end is None or step < self.end:
            yield [(step, int(i)) for i in self.order.indices(step)]
            step += 1

    def __len__(self) -> int:
        if self.end is None:
            raise TypeError("an endless batch order has no length")
        return max(0, self.end - self.start)
