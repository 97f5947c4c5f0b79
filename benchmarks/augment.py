"""DINO multi-crop: graphssl's batched tensor augmentation vs a per-image PIL pipeline.

Both make DINO's views of the same Fashion-MNIST images (32 px, RGB) with the
settings of pipelines/dino.yaml: 2 global crops (32 px, scale 0.4-1) and 6
local crops (16 px, scale 0.05-0.4), each flipped, colour-jittered (p 0.8),
greyed (p 0.2), blurred (p 1.0 / 0.1 / 0.5) and solarized (p 0 / 0.2 / 0),
then normalised.

Each CPU budget of w cores (``--workers``, default 1 and one per CPU) is
given to both:

  batched -- graphssl: the uint8 batch is indexed, turned into normalised
             floats (``Data.to_input``) and given to the ``augment.multicrop``
             node built from pipelines/dino.yaml, on the training device, in
             the training process, on w torch threads;
  pil     -- DINO's ``DataAugmentationDINO`` (torchvision transforms on PIL
             images, PIL's GaussianBlur and solarize) applied per image in a
             torch DataLoader with w worker processes, collated into the same
             8 view tensors.

Rounds alternate between the variants. One PIL round is one DataLoader epoch
over the round's ``--batches`` batches, with persistent workers: the workers
stop between rounds, so no variant runs while another is timed (each PIL
round pays its pipeline's fill time, as every epoch does). images/s counts
source images (each makes 8 views). Writes benchmarks/results/augment.json
with ``speedup_vs`` = batched images/s / PIL images/s at each budget (median
of per-round ratios) and ``speedup``, the smallest of them.

    python benchmarks/augment.py [--batch-size 64] [--batches 8] [--rounds 5] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import torch
from PIL import ImageFilter, ImageOps
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, ROOT, PILImages, RoundSampler, command, environment, median, node_of,  # noqa: E402
                     paired_ratio, sync, write_result)


# ----------------------------------------------------------------------------- DINO's per-image recipe

class GaussianBlur:
    """DINO utils.GaussianBlur: PIL blur with radius ~ U(0.1, 2) applied with probability p."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    """DINO utils.Solarization: PIL solarize (threshold 128) with probability p."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


class DataAugmentationDINO:
    """DINO main_dino.py's transform, at the sizes and scales of pipelines/dino.yaml."""

    def __init__(self, global_size, local_size, global_scale, local_scale, n_local, mean, std):
        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
        bicubic = transforms.InterpolationMode.BICUBIC
        self.global_transfo1 = transforms.Compose([
            transforms.RandomResizedCrop(global_size, scale=global_scale, interpolation=bicubic),
            flip_and_color_jitter, GaussianBlur(1.0), normalize])
        self.global_transfo2 = transforms.Compose([
            transforms.RandomResizedCrop(global_size, scale=global_scale, interpolation=bicubic),
            flip_and_color_jitter, GaussianBlur(0.1), Solarization(0.2), normalize])
        self.n_local = n_local
        self.local_transfo = transforms.Compose([
            transforms.RandomResizedCrop(local_size, scale=local_scale, interpolation=bicubic),
            flip_and_color_jitter, GaussianBlur(p=0.5), normalize])

    def __call__(self, image):
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops += [self.local_transfo(image) for _ in range(self.n_local)]
        return crops


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=8, help="batches per round and variant")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 2}),
                   help="DataLoader workers of the PIL pipeline; one variant per value (default: 1 and one per CPU)")
    p.add_argument("--images", type=int, default=2048, help="training images used")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=str(RESULTS / "augment.json"))
    args = p.parse_args(argv)

    from graphssl.build import load_data, make_context, prepare

    device = torch.device(args.device)
    env = environment(device)
    torch.manual_seed(0)
    random.seed(0)
    prepared = prepare(ROOT / "pipelines" / "dino.yaml", [f"device={device.type}", f"data.limit={args.images}",
                                                          f"data.batch_size={args.batch_size}"])
    data = load_data(prepared, device)
    node = node_of(prepared.spec, "augment.multicrop")
    crops = node.cls(node.config, make_context(prepared, data, device)).to(device)
    c = crops.config

    # the PIL pipeline sees the same images, and normalises with the same statistics
    mean, std = data.mean, data.std
    recipe = DataAugmentationDINO(crops.global_size, crops.local_size, c.global_scale, c.local_scale, c.n_local, mean, std)
    dataset = PILImages(data.train.images, recipe)
    per_round = args.batches * args.batch_size
    loaders = {f"pil_{w}w": DataLoader(dataset, batch_size=args.batch_size, sampler=RoundSampler(len(dataset), per_round, w),
                                       num_workers=w, persistent_workers=w > 0, drop_last=True)
               for w in args.workers}
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))
    cursor = [0]

    def batched_round(threads: int):
        def run() -> None:
            torch.set_num_threads(threads)
            batched(args.batches)
        return run

    def batched(batches: int) -> None:
        for _ in range(batches):
            idx = order[torch.arange(cursor[0], cursor[0] + args.batch_size) % len(order)]
            cursor[0] += args.batch_size
            with torch.no_grad():
                views = crops(images=data.to_input(data.train.images[idx]))
            assert views["global"].shape[:2] == (c.n_global, args.batch_size)

    def pil_round(loader: DataLoader):
        def run() -> None:
            n = 0
            for views in loader:
                n += 1
            assert n == args.batches and len(views) == c.n_global + c.n_local
        return run

    # Each CPU budget twice: graphssl's batched ops on w torch threads, PIL on w DataLoader workers.
    variants = {**{f"batched_{w}t": batched_round(w) for w in args.workers},
                **{name: pil_round(loader) for name, loader in loaders.items()}}
    for fn in variants.values():  # warm-up: first calls, worker start
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            sync(device)
            start = time.perf_counter()
            variants[name]()
            sync(device)
            times[name].append(per_round / (time.perf_counter() - start))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k}={v[-1]:.0f} img/s" for k, v in times.items()), flush=True)

    speedups = {f"{w}_cpu": round(paired_ratio(times[f"batched_{w}t"], times[f"pil_{w}w"]), 3) for w in args.workers}
    speedup = min(speedups.values())  # the smallest over the CPU budgets
    result = {
        "benchmark": "augment",
        "command": command(),
        "environment": env,
        "settings": {"batch_size": args.batch_size, "batches_per_round": args.batches, "rounds": args.rounds,
                     "cpu_budgets": args.workers, "images": len(dataset),
                     "views": {"global": [c.n_global, crops.global_size], "local": [c.n_local, crops.local_size]},
                     "recipe": "pipelines/dino.yaml crops node vs DINO's DataAugmentationDINO (torchvision + PIL)"},
        "images_per_s": {k: round(median(v), 1) for k, v in times.items()},
        "images_per_s_per_round": {k: [round(x, 1) for x in v] for k, v in times.items()},
        "speedup_vs": speedups,
        "speedup": round(speedup, 3),
        "target": {"speedup": ">= 3 at every CPU budget (w torch threads vs w DataLoader workers)"},
        "pass": speedup >= 3,
    }
    print(", ".join(f"{k} {v} img/s" for k, v in result["images_per_s"].items()) + f"; speedup {speedups}")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
