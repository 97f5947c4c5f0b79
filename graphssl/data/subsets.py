"""Seeded, class-stratified subsets: every class in proportion to its size (and at least once)."""
from __future__ import annotations

import torch


def stratified_subset(labels: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    """long[min(limit, N)] sorted indices into ``labels`` (long[N]); None or limit >= N: every index.

    Each class gets a share of ``limit`` proportional to its size (largest
    remainders round), every class at least one image when ``limit`` allows;
    the images of a class are a seeded random choice.
    """
    n = len(labels)
    if limit is None or limit >= n:
        return torch.arange(n)
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * limit / n
    quota = exact.floor().long()
    left = limit - int(quota.sum())
    if left > 0:
        quota[(exact - quota).argsort(descending=True)[:left]] += 1
    if limit >= len(classes):  # every class at least once: take from the largest quotas
        for c in (quota == 0).nonzero().flatten().tolist():
            quota[quota.argmax()] -= 1
            quota[c] = 1
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[:q]])
    return torch.cat(chosen).sort().values


def random_subset(n: int, limit: int, seed: int) -> torch.Tensor:
    """long[min(limit, n)] sorted indices drawn uniformly without replacement."""
    if limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
