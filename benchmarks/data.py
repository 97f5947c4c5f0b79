"""Data loading at ImageNet-like sizes: graphssl's streaming path vs the official recipes' loaders.

A generated folder of JPEGs, 300-500 px per side (mixed aspect ratios), 10
classes, ROOT/train/CLASS/*.jpg. At one CPU budget, ``--workers`` W loader
processes plus one main thread (default W: this machine's CPUs), two
comparisons:

  dino  -- graphssl: image_folder streamed by loader workers that cut
           2 x 224 + 10 x 96 views (dino.yaml's scales: 0.4-1, 0.05-0.4) from the
           full-resolution decode, then ``augment.multicrop``'s batched colour,
           grayscale, blur and solarize ops on ``--device`` (on a CPU: in the
           main thread, one torch thread); official: torchvision ``ImageFolder``
           + DINO's per-image PIL ``DataAugmentationDINO`` (benchmarks/augment.py)
           in a DataLoader with W workers (its main thread only collects).
  mae   -- one 224 px RandomResizedCrop (scale 0.2-1) + flip: graphssl's worker
           crop + ``augment.crop`` vs ImageFolder + torchvision's transforms.

Each side gets the same W + 1 processes and threads and uses them as it best
can: graphssl runs with W and with W - 1 workers plus its main thread (which
does graphssl's batched work on a CPU; ``data.workers``' default leaves it a
CPU), the official loader with W and W + 1 workers (its main thread only
collects batches). graphssl's faster split is compared with the official's
faster one; every split is in ``splits``. ``graphssl_loader`` is graphssl's loader alone with W workers (the
batched ops left to an accelerator). Rounds alternate the variants
(``_common.interleave``); each round is a fresh DataLoader over the next
``--batches`` batches for every variant (workers start in the round for all), so
a round holds the loader's start and fill; the default 8 batches of 32 keep
those to a fraction of it. images/s counts source images. With ``--device cuda``
the ops run on the GPU and the official loader's batches are copied to it
(pinned), as training does. Then ``scaling``: time from ``Data(...)`` to the
first training batch and the main process's peak memory, each in a fresh
process, for the folder and for a folder 4x as large. Writes
benchmarks/results/data.json.

    python benchmarks/data.py [--images 400] [--batch-size 32] [--batches 8] [--rounds 5] [--workers W] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, RoundSampler, command, environment, interleave, median, paired_ratio, write_result  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_folder(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """n ImageNet-like JPEGs (sides 300-500 px) under root/train/cK/, and 2 per class under root/val/."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", 2 * classes)):
        for i in range(count):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = rng.integers(300, 501, 2)
            small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((int(w), int(h)), Image.BICUBIC)
            img.save(folder / f"{i:06d}.jpg", quality=90)
    return root


def build(root: Path, pipeline: str, overrides: list[str], workers: int, batch_size: int, node_type: str,
          device: str = "cpu"):
    """(StreamingData, the augment node's module on ``device``) as `graphssl run` builds them."""
    from graphssl.build import load_data, make_context, prepare

    prepared = prepare(ROOT / "pipelines" / pipeline, ["data.dataset=image_folder", f"data.root={root}", "data.image_size=224",
                                                       f"data.batch_size={batch_size}", f"data.workers={workers}",
                                                       "data.normalize=imagenet", f"device={device}", *overrides])
    data = load_data(prepared, torch.device(device))
    node = next(n for n in prepared.spec.nodes.values() if n.type_name == node_type and n.call is None)
    module = node.cls(node.config, make_context(prepared, data, torch.device(device))).to(device)
    return data, module


def graphssl_round(data, module, batches: int, workers: int):
    """One round: a fresh loader with ``workers`` over the next ``batches`` steps, each batch through the
    augment node (``module`` None: the loader alone, the batched ops left to an accelerator)."""
    from torch.utils.data import DataLoader

    from graphssl.data.sampler import StepBatches
    from graphssl.data.stream import collate_views

    cursor = [0]

    def run() -> None:
        start = cursor[0]
        cursor[0] += batches
        loader = DataLoader(data._dataset(), batch_sampler=StepBatches(data.order, start, start + batches),
                            num_workers=workers, collate_fn=collate_views, prefetch_factor=4 if workers else None,
                            pin_memory=data.device.type == "cuda")
        with torch.no_grad():
            for cpu in loader:
                images = data._deliver(cpu)["images"]
                if module is not None:
                    module(images=images)
    return run


def official_round(root: Path, transform, batch_size: int, batches: int, workers: int, device: torch.device):
    """One round of the official loader; on an accelerator each batch's views are copied to it, as training does."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(root / "train"), transform)
    sampler = RoundSampler(len(dataset), batches * batch_size)
    cuda = device.type == "cuda"

    def run() -> None:
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                            prefetch_factor=4 if workers else None, pin_memory=cuda)
        for views, _ in loader:
            if cuda:
                for v in views if isinstance(views, list) else [views]:
                    v.to(device, non_blocking=True)
    return run


def first_step(root: str, workers: int, device: str) -> dict:
    """In this (fresh) process: seconds from Data(...) to the first training batch, and peak memory."""
    from _common import _status_kib

    start = time.perf_counter()
    data, module = build(Path(root), "dino.yaml", ["nodes.crops.global_size=224", "nodes.crops.local_size=96",
                                                   "vars.n_local=10"], workers, 32, "augment.multicrop", device)
    batch = next(data.batches(0))
    module(images=batch["images"])
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": (_status_kib("VmHWM") or 0) / 1024,
            "images": len(data.train_source)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=400, help="images in the folder (the scaling test uses 4x as many too)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=8, help="batches per round and variant")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="W: graphssl runs with W and W - 1 "
                   "workers, the official loader with W and W + 1")
    p.add_argument("--growth", type=int, default=4, help="the scaling test's folder is this many times larger")
    p.add_argument("--device", default="cpu", help="where graphssl's batched ops run (cpu, cuda); the official "
                   "loader's batches are copied there")
    p.add_argument("--first-step", help=argparse.SUPPRESS)  # internal: measure one folder in this process
    p.add_argument("--out", default=str(RESULTS / "data.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.first_step:
        print(json.dumps(first_step(args.first_step, args.workers, args.device)))
        return {}
    splits = sorted({args.workers, max(0, args.workers - 1)}, reverse=True)
    official_splits = [args.workers, args.workers + 1]

    from torchvision import transforms

    from augment import DataAugmentationDINO

    device = torch.device(args.device)
    env = environment(args.device)
    result: dict = {"command": command(), "machine": env,
                    "settings": {"images": args.images, "batch_size": args.batch_size, "batches": args.batches,
                                 "rounds": args.rounds, "official_workers": official_splits, "graphssl_workers": splits,
                                 "main_threads": 1}}
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "small", args.images)
        dino_data, dino_crops = build(root, "dino.yaml", ["nodes.crops.global_size=224", "nodes.crops.local_size=96",
                                                          "vars.n_local=10"], args.workers, args.batch_size,
                                      "augment.multicrop", args.device)
        c = dino_crops.config
        dino_recipe = DataAugmentationDINO(224, 96, c.global_scale, c.local_scale, 10, MEAN, STD)
        mae_data, mae_crop = build(root, "mae.yaml", [], args.workers, args.batch_size, "augment.crop", args.device)
        mae_recipe = transforms.Compose([
            transforms.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        per_round = args.batches * args.batch_size
        for name, data, module, recipe in (("dino", dino_data, dino_crops, dino_recipe), ("mae", mae_data, mae_crop, mae_recipe)):
            print(f"{name}: graphssl ({' or '.join(map(str, splits))} workers + the main thread) vs official "
                  f"({' or '.join(map(str, official_splits))} workers)")
            variants = {f"graphssl_{w}w": graphssl_round(data, module, args.batches, w) for w in splits}
            variants["graphssl_loader"] = graphssl_round(data, None, args.batches, args.workers)
            for w in official_splits:
                variants[f"official_{w}w"] = official_round(root, recipe, args.batch_size, args.batches, w, device)
            times = interleave(variants, args.rounds, 1, device)
            official = min(official_splits, key=lambda w: median(times[f"official_{w}w"]))
            base = times[f"official_{official}w"]
            by_split = {f"graphssl_{w}_workers": {"images_per_s": per_round / median(times[f"graphssl_{w}w"]),
                                                  "speedup": paired_ratio(base, times[f"graphssl_{w}w"])}
                        for w in splits}
            by_split.update({f"official_{w}_workers": {"images_per_s": per_round / median(times[f"official_{w}w"])}
                             for w in official_splits})
            best = max(splits, key=lambda w: by_split[f"graphssl_{w}_workers"]["speedup"])
            result[name] = {
                "graphssl_images_per_s": by_split[f"graphssl_{best}_workers"]["images_per_s"],
                "graphssl_workers": best,
                "graphssl_loader_images_per_s": per_round / median(times["graphssl_loader"]),
                "official_images_per_s": per_round / median(base),
                "official_workers": official,
                "speedup": by_split[f"graphssl_{best}_workers"]["speedup"],
                "speedup_loader_only": paired_ratio(base, times["graphssl_loader"]),
                "splits": by_split,
                "round_seconds": times,
            }
        big = make_folder(Path(tmp) / "big", args.images * args.growth, seed=1)
        scaling = {}
        for label, folder in (("small", root), ("big", big)):
            out = subprocess.run([sys.executable, __file__, "--first-step", str(folder), "--workers", str(splits[-1]),
                                  "--device", args.device],
                                 capture_output=True, text=True, check=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            scaling[label] = json.loads(out.stdout.strip().splitlines()[-1])
        scaling["first_step_ratio"] = scaling["big"]["seconds"] / scaling["small"]["seconds"]
        scaling["peak_memory_ratio"] = scaling["big"]["peak_rss_mib"] / scaling["small"]["peak_rss_mib"]
        result["scaling"] = scaling
    write_result(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k in ("dino", "mae", "scaling")}, indent=1, default=str)[:3000])
    return result


if __name__ == "__main__":
    main()
