"""What every data path shares: errors, normalisation constants, labelled image sets, statistics."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

NORMALIZE = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
EVAL_SEED = 0  # evaluation subsets are the same for every run (and every method), whatever the run's seed


class DatasetMissing(Exception):
    """The dataset files were not found; the message says where we looked and how to get them."""


class BadImage(Exception):
    """An image file that cannot be decoded (``data.on_bad_image: error``); the message names the file."""


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8[N, C, S, S], already at the pipeline's image size
    labels: torch.Tensor  # long[N]

    def __len__(self) -> int:
        return len(self.labels)


def channel_statistics(batches: Iterable[torch.Tensor], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8[b,c,H,W] batches (accumulated in float64, never all at once).

    One-channel images used as three channels get their statistics repeated.
    """
    total = total_sq = None
    count = 0
    for images in batches:
        x = images.double().div_(255)
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += x.numel() // x.shape[1]
    if total is None:
        raise DatasetMissing("no images to compute the dataset's statistics from (normalize: dataset)")
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).mul(count / max(1, count - 1)).sqrt()
    if channels == 3 and len(mean) == 1:
        mean, std = mean.repeat(3), std.repeat(3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def fixed_normalization(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = NORMALIZE[name]
    return tuple(mean[:channels] if channels == 3 else mean[:1]), tuple(std[:channels] if channels == 3 else std[:1])


def chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def default_workers() -> int:
    """Loader workers per process: the CPUs this process may use, shared with the other local processes, less one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(16, cpus // max(1, local) - 1))


def own_generator() -> torch.Generator:
    """A DataLoader's own generator: creating its iterator would otherwise draw from the global RNG (which the
    training graph uses, and checkpoints restore), so a resumed run would drift from an uninterrupted one."""
    return torch.Generator().manual_seed(0)


class TrainingSet:
    """What both data paths share: a batch order over the training images (``self.order``, a
    :class:`graphssl.data.sampler.BatchOrder`) and the per-channel input normalisation."""

    def _normalize_with(self, mean, std, device: torch.device) -> None:
        self.mean, self.std = tuple(mean), tuple(std)  # per channel, what inputs are normalised with
        self._mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    @property
    def train_images(self) -> int:
        """How many training images a run reads (after ``data.limit``)."""
        return self.order.n
