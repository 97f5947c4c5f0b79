"""Generated image folders and shards for the data tests (JPEGs/PNGs of mixed sizes, in tmp folders)."""
from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def image(w: int, h: int, seed: int, colour: tuple[int, int, int] | None = None) -> Image.Image:
    """A smooth random image (a gradient plus blobs), optionally tinted by a class colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x / w, y / h, (x + y) / (w + h)], -1) * 255 * rng.uniform(0.3, 1.0, 3)
    if colour is not None:
        base = 0.5 * base + 0.5 * np.array(colour)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))


def make_folder(root: Path, classes: int = 3, per_class: int = 6, test_per_class: int = 3, sizes=(40, 90),
                seed: int = 0, ext: str = "jpg", test_name: str = "test") -> Path:
    """ROOT/train/cK/*.jpg and ROOT/<test_name>/cK/*.jpg, sizes drawn in ``sizes`` for each side."""
    rng = random.Random(seed)
    colours = [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(classes)]
    for split, n in (("train", per_class), (test_name, test_per_class)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = image(rng.randint(*sizes), rng.randint(*sizes), rng.randrange(10**9), colours[c])
                img.save(folder / f"{i:04d}.{ext}")
    return root


def make_shards(folder: Path, out: Path, split: str = "train", per_shard: int = 5) -> str:
    """Pack ROOT/split/CLASS/* into WebDataset tars (key.jpg + key.cls = class name); returns a brace spec."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted((folder / split).glob("*/*"))
    shards = [files[i: i + per_shard] for i in range(0, len(files), per_shard)]
    for s, chunk in enumerate(shards):
        with tarfile.open(out / f"{split}-{s:04d}.tar", "w") as tar:
            for path in chunk:
                key = f"{path.parent.name}_{path.stem}"
                for name, payload in ((f"{key}{path.suffix}", path.read_bytes()), (f"{key}.cls", path.parent.name.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(out / f"{split}-{{0000..{len(shards) - 1:04d}}}.tar")
