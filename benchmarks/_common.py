"""Helpers shared by the benchmark scripts.

- ``environment()``: what the numbers were measured on (torch, threads, CPUs, load);
- ``write_result()``: one small JSON file under benchmarks/results/;
- ``build_benches()``: every stage of a pipeline file built for training
  (modules, optimiser, ``Trainer`` without hooks), as ``graphssl run`` builds it;
- ``encoder_overrides()``: ``key=value`` overrides that resize every ``encoder.vit``;
- ``interleave()``: time several step functions in rounds, alternating their order,
  so that the machine's drift hits all of them alike;
- peak memory: ``rss_kib()``/``reset_peak_rss()`` (Linux /proc) and CUDA allocator counters.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


THREADS_HELP = ("torch intra-op threads (default 1; 0 = torch's default, one per CPU). On a shared, oversubscribed "
                "machine, OpenMP threads wait for each other at every parallel op and small ops run many times slower "
                "with 2 threads than with 1; one thread keeps the ratios stable")


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def environment(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    import timm
    import torchvision

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        env["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return env


def command() -> str:
    """The command line that produced a result, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in ["python", str(script), *sys.argv[1:]])


def write_result(path: str | Path, result: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]: cancels slow drifts better than a ratio of medians."""
    return statistics.median(x / y for x, y in zip(a, b))


# ----------------------------------------------------------------------------- pipelines

def pipeline_files(names: list[str] | None = None) -> list[Path]:
    """pipelines/*.yaml, or the named ones (a name or a path)."""
    if not names:
        return sorted((ROOT / "pipelines").glob("*.yaml"))
    out = []
    for n in names:
        p = Path(n)
        out.append(p if p.suffix in (".yaml", ".yml") and p.exists() else ROOT / "pipelines" / f"{n}.yaml")
    return out


def encoder_overrides(path: Path, arch: str | None = None, depth: int | None = None, embed_dim: int | None = None,
                      num_heads: int | None = None) -> list[str]:
    """Overrides that give every ``encoder.vit`` node of a pipeline (every stage) the same size.

    ``embed_dim`` also sets ``vars.width`` where the file has it (heads and decoders read it).
    """
    raw = yaml.safe_load(path.read_text())
    bodies = [("", raw.get("nodes") or {})]
    bodies += [(f"stages.{s}.", body.get("nodes") or {}) for s, body in (raw.get("stages") or {}).items()]
    out = []
    for prefix, nodes in bodies:
        for name, node in nodes.items():
            if not isinstance(node, dict) or node.get("type") != "encoder.vit":
                continue
            for key, value in (("arch", arch), ("depth", depth), ("embed_dim", embed_dim), ("num_heads", num_heads)):
                if value is not None:
                    out.append(f"{prefix}nodes.{name}.{key}={value}")
    if embed_dim is not None and "width" in (raw.get("vars") or {}):
        out.append(f"vars.width={embed_dim}")
    return out


def node_of(spec, type_name: str, prefix: str = ""):
    """The one node (not a call node) of a component type in a graph spec, e.g. "encoder.vit" or "loss.dino"."""
    found = [n for n in spec.nodes.values() if n.call is None and n.type_name == type_name]
    if len(found) != 1:
        raise LookupError(f"expected one {type_name} node, found {[n.name for n in found]}")
    return found[0]


@dataclass
class Bench:
    """One pipeline stage, built to train as ``graphssl run`` would, without tracking hooks."""

    label: str
    trainer: object
    batch_size: int
    static_bytes: int | None = None  # CUDA: weights, buffers, optimiser state and gradients of this stage
    step_index: int = 0
    last_metrics: dict = field(default_factory=dict)

    def step(self) -> None:
        self.last_metrics = self.trainer.train_step(self.step_index)
        self.step_index += 1


def build_benches(path: Path, overrides: list[str], device: torch.device, warmup: int = 1,
                  only_stage: str | None = None) -> list[Bench]:
    """Every stage of a pipeline; a later stage loads untrained modules of earlier ones.

    Each stage runs ``warmup`` training steps here (first-call costs, optimiser state).
    """
    from graphssl.build import build_trainer
    from graphssl.plan import plan_pipeline

    plan = plan_pipeline(path, overrides)
    benches = []
    for name, stage in plan.stages.items():
        label = f"{plan.name}.{name}" if len(plan.stages) > 1 else plan.name
        if only_stage is not None and label != only_stage:
            continue
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        trainer = build_trainer(stage, plan, device)
        trainer.executor.train()
        bench = Bench(label, trainer, stage.prepared.cfg.data.batch_size)
        for _ in range(warmup):
            bench.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            bench.static_bytes = torch.cuda.memory_allocated(device) - before
        benches.append(bench)
    return benches


# ----------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(steps: dict[str, Callable[[], None]], rounds: int, steps_per_round: int, device: torch.device,
               log: Callable[[str], None] = print, on_round_start: Callable[[str], None] | None = None,
               on_round_end: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Seconds per step of each function, one value per round; the order alternates each round."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if on_round_start:
                on_round_start(name)
            sync(device)
            start = time.perf_counter()
            for _ in range(steps_per_round):
                steps[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps_per_round)
            if on_round_end:
                on_round_end(name)
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{k}={v[-1] * 1000:.0f} ms" for k, v in times.items()))
    return times


class PILImages(torch.utils.data.Dataset):
    """uint8 images [N,1|3,S,S] as RGB PIL images (made once), each returned through ``transform``."""

    def __init__(self, images_uint8: torch.Tensor, transform):
        from PIL import Image

        def to_pil(img: torch.Tensor):
            if img.shape[0] == 1:
                return Image.fromarray(img[0].numpy(), mode="L").convert("RGB")
            return Image.fromarray(img.permute(1, 2, 0).numpy(), mode="RGB")

        self.images = [to_pil(img) for img in images_uint8]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i])


class RoundSampler(torch.utils.data.Sampler):
    """A DataLoader sampler whose every epoch yields the next ``count`` indices of one fixed random order.

    With persistent workers, one epoch = one timed round: the workers stop
    when the round's indices are used up, so they never run while another
    variant is being timed, and the next round continues the order.
    """

    def __init__(self, n: int, count: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=g).tolist()
        self.count, self.pos = count, 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for _ in range(self.count):
            yield self.order[self.pos % len(self.order)]
            self.pos += 1


# ----------------------------------------------------------------------------- memory

def _status_kib(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_kib() -> int | None:
    """Resident set size of this process now (Linux)."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> int | None:
    """High-water mark of the resident set since the start or the last ``reset_peak_rss()``."""
    return _status_kib("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: writing 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
