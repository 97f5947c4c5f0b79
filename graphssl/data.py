"""Datasets held in memory as uint8 tensors, and a resumable batch order.

Fashion-MNIST (and MNIST) are read from IDX files: Debian's
``dataset-fashion-mnist`` installs them under /usr/share/datasets/fashion-mnist/;
torchvision downloads them where the network allows. ``image_folder`` reads
ROOT/train/CLASS/* and ROOT/test/CLASS/* (or ROOT/val). Images are resized once
at load, kept as uint8, and turned into normalised float batches on the device.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from graphssl.config import DataConfig

DEFAULT_ROOTS = {
    "fashion_mnist": ["/usr/share/datasets/fashion-mnist", "~/.cache/graphssl/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist", "~/.cache/graphssl/mnist"],
    "cifar10": ["~/.cache/graphssl/cifar10"],
}
HOW_TO_GET = {
    "fashion_mnist": "install it with `apt-get install dataset-fashion-mnist`, or set data.root to a folder with the IDX files",
    "mnist": "set data.root to a folder with MNIST's IDX files (train-images-idx3-ubyte[.gz], ...), or run where torchvision can download it",
    "cifar10": "run where torchvision can download CIFAR-10, or set data.root to a folder holding cifar-10-batches-py",
    "image_folder": "set data.root to a folder with train/CLASS/*.png|jpg and test/CLASS/* (or val/)",
}
NORMALIZE = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


class DatasetMissing(Exception):
    """The dataset files were not found; the message says where we looked and how to get them."""


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8[N, C, S, S], already at the pipeline's image size
    labels: torch.Tensor  # long[N]

    def __len__(self) -> int:
        return len(self.labels)


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


def _load_image_folder(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    root = Path(cfg.root or "").expanduser()
    names = ["train"] if split == "train" else ["test", "val"]
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if not cfg.root or folder is None:
        raise DatasetMissing(f"image_folder: no {'/'.join(names)} folder under {root}; {HOW_TO_GET['image_folder']}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((folder / cls).iterdir()):
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
                continue
            img = Image.open(path).convert("RGB" if cfg.channels == 3 else "L")
            img = img.resize((cfg.image_size, cfg.image_size), Image.BICUBIC)
            t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            images.append(t.reshape(img.size[1], img.size[0], -1).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetMissing(f"image_folder: no images in {folder}; {HOW_TO_GET['image_folder']}")
    return torch.stack(images), torch.tensor(labels)


def load_split(cfg: DataConfig, split: str, limit: int | None = None) -> ImageSet:
    """The ``split`` ("train" or "test") as uint8 images at cfg.image_size."""
    if cfg.dataset in ("fashion_mnist", "mnist"):
        images, labels = _load_idx_dataset(cfg, split)
    elif cfg.dataset == "cifar10":
        images, labels = _load_cifar10(cfg, split)
    else:
        images, labels = _load_image_folder(cfg, split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if images.shape[-1] != cfg.image_size or images.shape[-2] != cfg.image_size:
        resized = F.interpolate(images.float(), size=(cfg.image_size, cfg.image_size), mode="bicubic", align_corners=False, antialias=True)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return ImageSet(images.contiguous(), labels)


class Data:
    """Training batches and labelled evaluation sets for one pipeline run."""

    def __init__(self, cfg: DataConfig, device: torch.device, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.train = load_split(cfg, "train", cfg.limit)
        if len(self.train) < cfg.batch_size * world_size:
            raise DatasetMissing(f"data.batch_size {cfg.batch_size} x {world_size} processes is more than the "
                                 f"{len(self.train)} training images")
        self._eval_cache: dict[tuple[str, int], ImageSet] = {}
        if cfg.normalize == "dataset":
            pixels = self.train.images[:10000].float() / 255
            mean = pixels.mean(dim=(0, 2, 3))
            std = pixels.std(dim=(0, 2, 3))
            if cfg.channels == 3 and len(mean) == 1:
                mean, std = mean.repeat(3), std.repeat(3)
        else:
            mean, std = (torch.tensor(v[: cfg.channels] if cfg.channels == 3 else v[:1]) for v in NORMALIZE[cfg.normalize])
        self.mean = tuple(float(v) for v in mean)  # per channel, what inputs are normalised with
        self.std = tuple(float(v) for v in std)
        self._mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // (self.cfg.batch_size * self.world_size)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8[B,c,S,S] -> float[B,C,S,S] on the device, channel-replicated and normalised."""
        x = images.to(self.device, non_blocking=True).float().div_(255)
        if x.shape[1] != self.cfg.channels:
            x = x.expand(-1, self.cfg.channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        return (x - self._mean) / self._std

    def batch_indices(self, step: int) -> torch.Tensor:
        """This process's indices at ``step``, as a DistributedSampler with per-epoch reshuffle.

        Every epoch is a fresh permutation fixed by the seed (so a step is a
        data position, and resuming is exact); the global batch at ``step`` is
        split between the processes by rank.
        """
        epoch, i = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        perm = torch.randperm(len(self.train), generator=g)
        b = self.cfg.batch_size
        start = (i * self.world_size + self.rank) * b
        return perm[start: start + b]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return {"images": self.to_input(self.train.images[self.batch_indices(step)])}

    def batches(self, start_step: int = 0):
        """The batches of steps ``start_step``, ``start_step + 1``, ... (what the trainer iterates)."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    def eval_set(self, split: str, limit: int) -> ImageSet:
        """The first ``limit`` images of a labelled split (uint8, not normalised)."""
        key = (split, limit)
        if key not in self._eval_cache:
            if split == "train" and len(self.train) >= limit:
                self._eval_cache[key] = ImageSet(self.train.images[:limit], self.train.labels[:limit])
            else:
                self._eval_cache[key] = load_split(self.cfg, split, limit)
        return self._eval_cache[key]
