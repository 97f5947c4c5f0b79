"""Streamed datasets (image folders, WebDataset shards): decoded per batch by DataLoader workers.

Memory grows with the batch, not the dataset: a folder is listed and shards
are indexed at start, images are decoded only when a batch needs them. The
batch of step s is :class:`~graphssl.data.sampler.BatchOrder`'s, and each
image's crops are drawn from a random stream of (seed, step, image index), so
batches do not depend on the number of workers and resuming is exact.

The augmenters that read ``batch.images`` tell, through their crop plan
(``plan_crops``), which views they cut; the workers cut those views from the
full-resolution decode (:mod:`graphssl.data.views`) and the batch carries
them as ``images.precut``; the augmenters then run only their batched colour,
blur and solarize ops on the training device. ``batch.images`` itself is the
evaluation transform at ``data.image_size`` when another node reads it (and
a zero-size-in-memory placeholder otherwise). Augment nodes with identical
crop plans receive the same views.
"""
from __future__ import annotations

import sys
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from graphssl.config import DataConfig
from graphssl.data.common import (EVAL_SEED, BadImage, DatasetMissing, ImageSet, TrainingSet, channel_statistics,
                                  default_workers, fixed_normalization, own_generator)
from graphssl.data.decode import decode
from graphssl.data.sampler import BatchOrder, StepBatches
from graphssl.data.sources import Source, folder_sources, shard_sources
from graphssl.data.subsets import random_subset, stratified_subset
from graphssl.data.views import centre_view, cut_views, sample_rng
from graphssl.ops.crops import CropPlan

STATS_IMAGES = 1000  # normalize: dataset reads its statistics from this many random training images
SUBSTITUTE_STRIDE = 7919  # a skipped training image is replaced by the image this many positions on
EVAL_BATCH = 128


def crop_plans(spec, image_size: int) -> tuple[tuple[CropPlan, ...], bool]:
    """(the crop plans of the nodes that read batch.images, whether any other node reads batch.images)."""
    if spec is None:
        return (), True
    plans, needs_images = [], False
    for node in spec.nodes.values():
        for refs in node.inputs.values():
            if ("batch", "images") not in (refs if isinstance(refs, list) else [refs]):
                continue
            config = node.config if node.call is None else getattr(spec.nodes.get(node.call), "config", None)
            if hasattr(node.cls, "plan_crops") and config is not None:
                plan = node.cls.plan_crops(config, image_size)
                if plan not in plans:
                    plans.append(plan)
            else:
                needs_images = True
    return tuple(plans), needs_images


class Decoder:
    """Decodes one source image under the ``on_bad_image`` rule (picklable: it travels to the workers)."""

    def __init__(self, source: Source, channels: int, on_bad_image: str):
        self.source, self.channels, self.on_bad_image = source, channels, on_bad_image

    def __call__(self, i: int):
        """A PIL image, or None when it cannot be decoded and bad images are skipped."""
        try:
            return decode(self.source.read(i), self.channels, self.source.name(i))
        except BadImage:
            if self.on_bad_image == "error":
                raise
            return None
        except OSError as e:  # unreadable file (vanished, permissions)
            if self.on_bad_image == "error":
                raise BadImage(f"cannot read image {self.source.name(i)}: {e}") from None
            return None


class TrainViews(Dataset):
    """Item (step, position) -> the crop plans' views (and the evaluation view) of one training image."""

    def __init__(self, decoder: Decoder, positions: torch.Tensor, plans: tuple[CropPlan, ...], with_image: bool,
                 image_size: int, eval_crop: float, seed: int):
        self.decoder, self.positions, self.plans = decoder, positions.tolist(), plans
        self.with_image, self.image_size, self.eval_crop, self.seed = with_image, image_size, eval_crop, seed

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        step, pos = item
        skipped = []
        for attempt in range(20):
            index = self.positions[(pos + attempt * SUBSTITUTE_STRIDE) % len(self.positions)]
            img = self.decoder(index)
            if img is not None:
                break
            skipped.append(self.decoder.source.name(index))
        else:
            raise BadImage(f"20 images in a row could not be decoded (first: {skipped[0]})")
        rng = sample_rng(self.seed, step, index)
        views = [cut_views(img, plan, rng) for plan in self.plans]
        image = centre_view(img, self.image_size, self.eval_crop) if self.with_image else None
        return {"views": views, "image": image, "skipped": skipped}


def collate_views(samples: list[dict]) -> dict:
    """Per plan, per view group: uint8[V,B,C,S,S]; the evaluation views uint8[B,C,S,S] (or None); skipped files."""
    precut = []
    for p in range(len(samples[0]["views"])):
        groups = []
        for g in range(len(samples[0]["views"][p])):
            stacked = torch.from_numpy(np.stack([s["views"][p][g] for s in samples], axis=1))  # [V,B,C,S,S]
            groups.append(stacked)
        precut.append(groups)
    images = None
    if samples[0]["image"] is not None:
        images = torch.from_numpy(np.stack([s["image"] for s in samples]))
    return {"precut": precut, "images": images, "skipped": [p for s in samples for p in s["skipped"]]}


class EvalImages(Dataset):
    """Item k -> (uint8[C,S,S] evaluation view, label) of the k-th chosen image, or None when skipped."""

    def __init__(self, decoder: Decoder, indices: torch.Tensor, image_size: int, eval_crop: float):
        self.decoder, self.indices = decoder, indices.tolist()
        self.image_size, self.eval_crop = image_size, eval_crop
        labels = decoder.source.labels
        self.labels = labels.tolist() if labels is not None else [-1] * len(decoder.source)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        index = self.indices[k]
        img = self.decoder(index)
        if img is None:
            return {"skipped": self.decoder.source.name(index)}
        return {"image": centre_view(img, self.image_size, self.eval_crop), "label": self.labels[index]}


def collate_eval(samples: list[dict]) -> dict:
    kept = [s for s in samples if "image" in s]
    return {"images": torch.from_numpy(np.stack([s["image"] for s in kept])) if kept else None,
            "labels": torch.tensor([s["label"] for s in kept], dtype=torch.long),
            "skipped": [s["skipped"] for s in samples if "skipped" in s]}


class StreamingData(TrainingSet):
    """Training batches and evaluation sets of an image folder or WebDataset shards (same interface as MemoryData)."""

    streamed = True

    def __init__(self, cfg: DataConfig, device: torch.device, seed: int = 0, rank: int = 0, world_size: int = 1,
                 spec=None):
        self.cfg, self.device, self.seed = cfg, device, seed
        self.rank, self.world_size = rank, world_size
        if cfg.dataset == "shards":
            self.train_source, self.test_source = shard_sources(cfg.shards, cfg.test_shards)
        else:
            self.train_source, self.test_source = folder_sources(cfg.root)
        self.labelled = self.train_source.labels is not None and self.test_source is not None
        n = len(self.train_source)
        if cfg.limit is None:
            self.positions = torch.arange(n)
        elif self.train_source.labels is not None:
            self.positions = stratified_subset(self.train_source.labels, cfg.limit, seed)
        else:
            self.positions = random_subset(n, cfg.limit, seed)
        if len(self.positions) < cfg.batch_size * world_size:
            raise DatasetMissing(f"data.batch_size {cfg.batch_size} x {world_size} processes is more than the "
                                 f"{len(self.positions)} training images")
        self.order = BatchOrder(len(self.positions), cfg.batch_size, seed, rank, world_size)
        self.workers = default_workers() if cfg.workers is None else cfg.workers
        self.plans, self.needs_images = crop_plans(spec, cfg.image_size)
        self.skipped: list[str] = []
        self.skip_count = 0
        self._decoders = {"train": Decoder(self.train_source, cfg.channels, cfg.on_bad_image)}
        if self.test_source is not None:
            self._decoders["test"] = Decoder(self.test_source, cfg.channels, cfg.on_bad_image)
        if cfg.normalize == "dataset":
            chosen = self.positions[random_subset(len(self.positions), STATS_IMAGES, seed)]
            mean, std = channel_statistics((images for images, _ in self._eval_loader("train", chosen)), cfg.channels)
        else:
            mean, std = fixed_normalization(cfg.normalize, cfg.channels)
        self._normalize_with(mean, std, device)

    # ------------------------------------------------------------------ training
    @property
    def num_classes(self) -> int:
        return len(self.train_source.classes)

    def batch_indices(self, step: int) -> torch.Tensor:
        """Source indices of this process's images at ``step``."""
        return self.positions[self.order.indices(step)]

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8[B,C,S,S] -> float[B,C,S,S] on the device, normalised."""
        x = images.to(self.device, non_blocking=True).float().div_(255)
        return (x - self._mean) / self._std

    def _dataset(self) -> TrainViews:
        c = self.cfg
        return TrainViews(self._decoders["train"], self.positions, self.plans, self.needs_images or not self.plans,
                          c.image_size, c.eval_crop, self.seed)

    def _deliver(self, cpu: dict) -> dict[str, torch.Tensor]:
        self._note_skipped(cpu["skipped"])
        b = self.cfg.batch_size
        if cpu["images"] is not None:
            images = self.to_input(cpu["images"])
        else:  # no node reads the images themselves: a placeholder of the right shape that holds no memory
            images = torch.zeros((), device=self.device).expand(b, self.cfg.channels, self.cfg.image_size, self.cfg.image_size)
        images.precut = {plan: [g.to(self.device, non_blocking=True) for g in groups]
                         for plan, groups in zip(self.plans, cpu["precut"])}
        return {"images": images}

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of ``step``, decoded in this process (the dry run: only these images are decoded)."""
        dataset = self._dataset()
        return self._deliver(collate_views([dataset[(step, p)] for p in self.order.indices(step).tolist()]))

    def batches(self, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of step start_step, start_step + 1, ..., decoded ahead by ``data.workers`` processes."""
        w = self.workers
        cuda = self.device.type == "cuda"
        loader = DataLoader(self._dataset(), batch_sampler=StepBatches(self.order, start_step), num_workers=w,
                            collate_fn=collate_views, pin_memory=cuda, prefetch_factor=4 if w else None,
                            persistent_workers=w > 0, generator=own_generator())
        for cpu in loader:
            yield self._deliver(cpu)

    def _note_skipped(self, paths: list[str]) -> None:
        if not paths:
            return
        before = self.skip_count
        self.skip_count += len(paths)
        self.skipped += paths[: max(0, 5 - len(self.skipped))]
        if before == 0 or len(str(self.skip_count)) > len(str(before)):  # at 1, 10, 100, ... skipped files
            print(f"data: skipped {self.skip_count} image file(s) that cannot be decoded (data.on_bad_image: skip); "
                  f"first: {', '.join(self.skipped)}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ evaluation
    def _split(self, split: str) -> tuple[Source, torch.Tensor]:
        """(source, candidate indices) of a labelled split; the training split respects data.limit."""
        if not self.labelled:
            raise DatasetMissing("evaluation needs labelled splits (ROOT/train/CLASS/* and ROOT/test|val/CLASS/*, or "
                                 "data.shards and data.test_shards with .cls members); this dataset has none")
        if split == "train":
            return self.train_source, self.positions
        return self.test_source, torch.arange(len(self.test_source))

    def eval_indices(self, split: str, limit: int | None) -> torch.Tensor:
        """Source indices of the evaluation subset: seeded, class-stratified, the same for every run."""
        source, candidates = self._split(split)
        return candidates[stratified_subset(source.labels[candidates], limit, EVAL_SEED)]

    def _eval_loader(self, split: str, indices: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dataset = EvalImages(self._decoders[split], indices, self.cfg.image_size, self.cfg.eval_crop)
        w = min(self.workers, max(0, len(indices) // EVAL_BATCH))
        loader = DataLoader(dataset, batch_size=EVAL_BATCH, num_workers=w, collate_fn=collate_eval,
                            pin_memory=self.device.type == "cuda", generator=own_generator())
        for batch in loader:
            self._note_skipped(batch["skipped"])
            if batch["images"] is not None:
                yield batch["images"], batch["labels"]

    def eval_batches(self, split: str, limit: int | None, batch_size: int = EVAL_BATCH) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8[b,C,S,S], long[b]) batches of the evaluation subset: resized shorter side, centre crop."""
        return self._eval_loader(split, self.eval_indices(split, limit))

    def eval_set(self, split: str, limit: int | None) -> ImageSet:
        """The whole evaluation subset in memory (for small sets and tests; evaluators stream :meth:`eval_batches`)."""
        parts = list(self.eval_batches(split, limit))
        return ImageSet(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
