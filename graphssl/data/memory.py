"""Small datasets held in memory as uint8 tensors: Fashion-MNIST, MNIST, CIFAR-10.

Fashion-MNIST (and MNIST) are read from IDX files: Debian's
``dataset-fashion-mnist`` installs them under /usr/share/datasets/fashion-mnist/;
torchvision downloads them where the network allows. Images are resized once
at load, kept as uint8, and turned into normalised float batches on the device;
augmenters crop the batch on the device. Image folders and shards stream
instead (:mod:`graphssl.data.stream`).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from graphssl.config import DataConfig
from graphssl.data.common import (EVAL_SEED, NORMALIZE, DatasetMissing, ImageSet, TrainingSet, chunks,  # noqa: F401
                                  fixed_normalization)
from graphssl.data.sampler import BatchOrder
from graphssl.data.subsets import stratified_subset

DEFAULT_ROOTS = {
    "fashion_mnist": ["/usr/share/datasets/fashion-mnist", "~/.cache/graphssl/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist", "~/.cache/graphssl/mnist"],
    "cifar10": ["~/.cache/graphssl/cifar10"],
}
HOW_TO_GET = {
    "fashion_mnist": "install it with `apt-get install dataset-fashion-mnist`, or set data.root to a folder with the IDX files",
    "mnist": "set data.root to a folder with MNIST's IDX files (train-images-idx3-ubyte[.gz], ...), or run where torchvision can download it",
    "cifar10": "run where torchvision can download CIFAR-10, or set data.root to a folder holding cifar-10-batches-py",
}


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) into a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            for candidate in (d / name, d / "raw" / name, d / "FashionMNIST" / "raw" / name, d / "MNIST" / "raw" / name):
                if candidate.exists():
                    return candidate
    return None


def _search_dirs(cfg: DataConfig) -> list[Path]:
    roots = [cfg.root] if cfg.root else DEFAULT_ROOTS.get(cfg.dataset, [])
    return [Path(r).expanduser() for r in roots]


def source_files(cfg: DataConfig) -> tuple[Path | None, list[Path]]:
    """The folder a dataset was read from and its files (for the input's digest)."""
    if cfg.dataset in ("fashion_mnist", "mnist"):
        dirs = _search_dirs(cfg) + ([Path(DEFAULT_ROOTS[cfg.dataset][-1]).expanduser()] if cfg.root is None else [])
        stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
        files = [f for f in (_find_idx(dirs, s) for s in stems) if f is not None]
        return (files[0].parent if files else None), files
    root = Path(cfg.root or DEFAULT_ROOTS.get(cfg.dataset, [""])[0]).expanduser()
    if cfg.dataset == "cifar10":
        root = root / "cifar-10-batches-py"
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return root, files


def _load_idx_dataset(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    dirs = _search_dirs(cfg)
    img_path = _find_idx(dirs, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        downloaded = _torchvision_download(cfg)
        if downloaded is not None:
            return _load_idx_dataset(cfg.model_copy(update={"root": str(downloaded)}), split)
        looked = ", ".join(str(d) for d in dirs) or "(no folder)"
        raise DatasetMissing(f"{cfg.dataset}: no {prefix}-images-idx3-ubyte[.gz] found in {looked}; {HOW_TO_GET[cfg.dataset]}")
    return read_idx(img_path)[:, None], read_idx(lbl_path).long()


def _torchvision_download(cfg: DataConfig) -> Path | None:
    """Try torchvision's download (works only where the network allows); None if it cannot."""
    if cfg.root is not None:
        return None
    try:
        import torchvision.datasets as tvd

        target = Path(DEFAULT_ROOTS[cfg.dataset][-1]).expanduser()
        cls = {"fashion_mnist": tvd.FashionMNIST, "mnist": tvd.MNIST}[cfg.dataset]
        cls(str(target), train=True, download=True)
        cls(str(target), train=False, download=True)
        return target
    except Exception:  # offline: report the missing files instead
        return None


def _load_cifar10(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision.datasets as tvd

    root = Path(cfg.root or DEFAULT_ROOTS["cifar10"][0]).expanduser()
    try:
        ds = tvd.CIFAR10(str(root), train=split == "train", download=cfg.root is None)
    except Exception as e:
        raise DatasetMissing(f"cifar10: not found in {root} ({e}); {HOW_TO_GET['cifar10']}") from None
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)


def load_split(cfg: DataConfig, split: str, limit: int | None = None) -> ImageSet:
    """The ``split`` ("train" or "test") as uint8 images at cfg.image_size."""
    if cfg.dataset in ("fashion_mnist", "mnist"):
        images, labels = _load_idx_dataset(cfg, split)
    else:
        images, labels = _load_cifar10(cfg, split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
        resized = F.interpolate(images.float(), size=(cfg.image_size, cfg.image_size), mode="bicubic", align_corners=False, antialias=True)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return ImageSet(images.contiguous(), labels)


class MemoryData(TrainingSet):
    """Training batches and labelled evaluation sets of an in-memory dataset.

    ``data.limit`` keeps the first N training images (these files store their
    images in random order); evaluation sets are seeded class-stratified subsets.
    """

    streamed = False
    labelled = True

    def __init__(self, cfg: DataConfig, device: torch.device, seed: int = 0, rank: int = 0, world_size: int = 1,
                 spec=None):
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.train = load_split(cfg, "train", cfg.limit)
        if len(self.train) < cfg.batch_size * world_size:
            raise DatasetMissing(f"data.batch_size {cfg.batch_size} x {world_size} processes is more than the "
                                 f"{len(self.train)} training images")
        self.order = BatchOrder(len(self.train), cfg.batch_size, seed, rank, world_size)
        self._splits: dict[str, ImageSet] = {"train": self.train}
        if cfg.normalize == "dataset":  # these files are in random order: the first 10k are a random sample
            pixels = self.train.images[:10000].float() / 255
            mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3))
            if cfg.channels == 3 and len(mean) == 1:
                mean, std = mean.repeat(3), std.repeat(3)
            mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        else:
            mean, std = fixed_normalization(cfg.normalize, cfg.channels)
        self._normalize_with(mean, std, device)
        self.skipped: list[str] = []

    @property
    def num_classes(self) -> int:
        return int(self.train.labels.max()) + 1

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8[B,c,S,S] -> float[B,C,S,S] on the device, channel-replicated and normalised."""
        x = images.to(self.device, non_blocking=True).float().div_(255)
        if x.shape[1] != self.cfg.channels:
            x = x.expand(-1, self.cfg.channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        return (x - self._mean) / self._std

    def batch_indices(self, step: int) -> torch.Tensor:
        """This process's indices at ``step`` (see :mod:`graphssl.data.sampler`)."""
        return self.order.indices(step)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return {"images": self.to_input(self.train.images[self.batch_indices(step)])}

    def batches(self, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of step start_step, start_step + 1, ..."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    def split(self, split: str) -> ImageSet:
        if split not in self._splits:
            self._splits[split] = load_split(self.cfg, split)
        return self._splits[split]

    def eval_set(self, split: str, limit: int | None) -> ImageSet:
        """A seeded class-stratified subset of ``limit`` images of a labelled split (None: all; uint8, not normalised)."""
        s = self.split(split)
        keep = stratified_subset(s.labels, limit, EVAL_SEED)
        return ImageSet(s.images[keep], s.labels[keep])

    def eval_batches(self, split: str, limit: int | None, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8[b,C,S,S], long[b]) batches of :meth:`eval_set`."""
        s = self.eval_set(split, limit)
        for part in chunks(len(s), batch_size):
            yield s.images[part], s.labels[part]
