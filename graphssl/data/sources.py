"""Where streamed images come from: a folder listed once, or WebDataset tar shards indexed once.

Neither decodes an image: a folder is listed (paths and class names), a shard
is indexed by its tar headers (member offsets and sizes, plus the small
``.cls`` members). ``read(i)`` then returns one image's bytes (or path), so
any image can be read in any order: batches can be a pure function of the
step. Class ids are by name, shared by both splits: the training split's
sorted class names; a test class unknown to training is an error.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tarfile
from pathlib import Path
from typing import Iterator

import torch

from graphssl.data.common import DatasetMissing
from graphssl.data.decode import IMAGE_SUFFIXES

HOW_TO_GET = {
    "image_folder": "set data.root to a folder with train/CLASS/*.jpg|png and test/CLASS/* (or val/), "
                    "or to a folder of unlabeled images (pretraining only)",
    "shards": "set data.shards (and data.test_shards) to WebDataset tar files: a path, glob or brace spec, "
              "each sample an image (.jpg/.png/...) with its class in .cls",
}


class Source:
    """N images with optional labels; ``read(i)`` gives what :func:`graphssl.data.decode.decode` takes."""

    classes: list[str]
    labels: torch.Tensor | None  # long[N], ids into ``classes``; None when unlabeled

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> bytes | str:
        raise NotImplementedError

    def name(self, i: int) -> str:
        raise NotImplementedError


def class_ids(names: list[str], classes: list[str], where: str) -> torch.Tensor:
    """long[N] ids of class ``names`` in ``classes``; an unknown name is an error naming it."""
    lookup = {c: k for k, c in enumerate(classes)}
    unknown = sorted({n for n in names if n not in lookup})
    if unknown:
        raise DatasetMissing(f"{where}: class {unknown[0]!r} is not among the {len(classes)} training classes"
                             + (f" (also unknown: {', '.join(map(repr, unknown[1:6]))})" if len(unknown) > 1 else "")
                             + "; the test split may lack classes but not add new ones")
    return torch.tensor([lookup[n] for n in names], dtype=torch.long)


# ----------------------------------------------------------------------------- folders


def _image_paths(folder: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        yield from (os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES))


def _images_under(folder: Path) -> list[str]:
    return list(_image_paths(folder))


class FolderSource(Source):
    """ROOT/SPLIT/CLASS/**/IMAGE (labelled), or every image under a folder (unlabeled)."""

    def __init__(self, folder: Path, classes: list[str] | None = None, labelled: bool = True):
        self.folder = folder
        if labelled:
            names = sorted(d.name for d in folder.iterdir() if d.is_dir())
            self.classes = classes if classes is not None else names
            self.paths, label_names = [], []
            for cls in names:
                files = _images_under(folder / cls)
                self.paths += files
                label_names += [cls] * len(files)
            self.labels = class_ids(label_names, self.classes, str(folder))
        else:
            self.classes, self.paths, self.labels = [], _images_under(folder), None
        if not self.paths:
            raise DatasetMissing(f"image_folder: no images in {folder}; {HOW_TO_GET['image_folder']}")

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> str:
        return self.paths[i]

    def name(self, i: int) -> str:
        return self.paths[i]


def _train_folders(base: Path) -> list[Path]:
    """The folders whose images :func:`folder_sources` trains on (an unlabeled root, train/, or its classes)."""
    train_dir = base / "train"
    if not train_dir.is_dir():
        return [base]
    classes = sorted(d for d in train_dir.iterdir() if d.is_dir())
    return classes or [train_dir]


def count_train_images(root: str, at_most: int) -> int:
    """The training images :func:`folder_sources` finds under an existing ``root``, counted up to ``at_most``."""
    found = 0
    for folder in _train_folders(Path(root).expanduser()):
        for _ in _image_paths(folder):
            found += 1
            if found >= at_most:
                return found
    return found


def folder_sources(root: str | None) -> tuple[Source, Source | None]:
    """(train, test or None) of an image folder."""
    base = Path(root or "").expanduser()
    if not root or not base.is_dir():
        raise DatasetMissing(f"image_folder: no folder {base}; {HOW_TO_GET['image_folder']}")
    train_dir = base / "train"
    if not train_dir.is_dir():  # a folder of unlabeled images
        return FolderSource(base, labelled=False), None
    if not any(d.is_dir() for d in train_dir.iterdir()):
        return FolderSource(train_dir, labelled=False), None
    train = FolderSource(train_dir)
    test_dir = next((base / n for n in ("test", "val") if (base / n).is_dir()), None)
    return train, (FolderSource(test_dir, train.classes) if test_dir is not None else None)


# ----------------------------------------------------------------------------- shards


def shard_urls(spec: str) -> list[str]:
    """The shard files of a spec: brace expansion (webdataset's), "::"-joined lists, globs of local files."""
    from webdataset.shardlists import expand_urls

    urls = []
    for url in expand_urls(spec):
        local = os.path.expanduser(url)
        if any(ch in local for ch in "*?[") and "://" not in local and not local.startswith("pipe:"):
            urls += sorted(glob.glob(local))
        else:
            urls.append(local)
    return urls


def local_copy(url: str) -> str:
    """A local path of the shard: itself, or a cached copy of a URL / ``pipe:`` stream (read once with webdataset's gopen)."""
    if "://" not in url and not url.startswith("pipe:"):
        if not os.path.isfile(url):
            raise DatasetMissing(f"shards: no file {url}; {HOW_TO_GET['shards']}")
        return url
    from webdataset.gopen import gopen

    cache = Path(os.environ.get("GRAPHSSL_SHARD_CACHE", "~/.cache/graphssl/shards")).expanduser()
    target = cache / (hashlib.sha1(url.encode()).hexdigest()[:16] + ".tar")
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        try:
            with gopen(url, "rb") as stream, open(partial, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
        except Exception as e:
            partial.unlink(missing_ok=True)
            raise DatasetMissing(f"shards: cannot read {url}: {type(e).__name__}: {e}") from None
        os.replace(partial, target)  # atomic: processes reading the same URL agree on one copy
    return str(target)


def _split_name(member: str) -> tuple[str, str]:
    """(key, extension) of a tar member as webdataset groups samples: the key ends at the basename's first dot."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(member)
    return key or member, (ext or "").lower()


class ShardSource(Source):
    """Samples of WebDataset tar shards: one image member (.jpg, .png, ...) and an optional .cls per key."""

    def __init__(self, spec: str, classes: list[str] | None = None):
        urls = shard_urls(spec)
        if not urls:
            raise DatasetMissing(f"shards: {spec!r} names no files; {HOW_TO_GET['shards']}")
        self.files: list[str] = []
        self.entries: list[tuple[int, int, int, str]] = []  # (file, offset, size, name)
        label_names: list[str | None] = []
        image_exts = {s.lstrip(".") for s in IMAGE_SUFFIXES}
        for url in urls:
            path = local_copy(url)
            self.files.append(path)
            samples: dict[str, dict] = {}
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = _split_name(member.name)
                    sample = samples.setdefault(key, {})
                    if ext in image_exts and "image" not in sample:
                        sample["image"] = (member.offset_data, member.size, f"{url}:{member.name}")
                    elif ext == "cls":
                        sample["cls"] = tar.extractfile(member).read().decode().strip()
            for key, sample in samples.items():
                if "image" in sample:
                    offset, size, name = sample["image"]
                    self.entries.append((len(self.files) - 1, offset, size, name))
                    label_names.append(sample.get("cls"))
        if not self.entries:
            raise DatasetMissing(f"shards: no image samples in {spec!r}; {HOW_TO_GET['shards']}")
        labelled = all(n is not None for n in label_names)
        if labelled:
            names = sorted(set(label_names), key=lambda n: (int(n), n) if n.lstrip("-").isdigit() else (float("inf"), n))
            self.classes = classes if classes is not None else names
            self.labels = class_ids(label_names, self.classes, spec)
        else:
            self.classes, self.labels = [], None

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, i: int) -> bytes:
        file, offset, size, _ = self.entries[i]
        with open(self.files[file], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def name(self, i: int) -> str:
        return self.entries[i][3]


def shard_sources(train_spec: str | None, test_spec: str | None) -> tuple[Source, Source | None]:
    if not train_spec:
        raise DatasetMissing(f"shards: data.shards is not set; {HOW_TO_GET['shards']}")
    train = ShardSource(train_spec)
    return train, (ShardSource(test_spec, train.classes) if test_spec and train.labels is not None else None)
