"""Training throughput (images/s) and peak memory of every shipped pipeline at one fixed config.

Every stage of every pipelines/*.yaml is built as ``graphssl run`` builds it
(modules, AdamW, ``Trainer``; no tracking hooks) with the same overrides:
``data.batch_size``, ``data.limit``, ``device``, ``train.precision``, and
optionally one encoder size for every ``encoder.vit`` node (``--arch``,
``--depth``, ``--embed-dim``). Node sizes are otherwise as shipped. The stages
are then timed in one process, in rounds of ``--steps-per-round`` training
steps (``Trainer.train_step``), the order alternating each round, so the
machine's drift hits all of them alike. A later stage of a staged pipeline
(BEiT, EVA) loads untrained modules of the earlier one: its speed does not
depend on their weights.

images/s = source images per training step / median seconds per step (a
multi-crop step counts its batch once, however many views it makes).

Peak memory:
- CUDA: from the caching allocator, per stage: the bytes its weights,
  buffers, optimiser state and gradients hold after a warm-up step, plus the
  largest increase of allocated bytes during one of its timed rounds
  (activations and temporaries). Other stages' tensors are not counted.
- CPU: torch has no allocator counters on CPU, and a process's peak RSS only
  grows, so each stage is measured in a fresh subprocess (``--memory probe``):
  it imports everything and records its RSS (the baseline: Python, torch,
  timm, graphssl), builds the stage and loads its data (RSS ``built_mb``
  above the baseline), resets the kernel's high-water mark
  (/proc/self/clear_refs) and trains ``--warmup`` + ``--steps-per-round``
  steps. Reported: ``peak_memory_mb`` = high-water mark - baseline (data,
  weights, optimiser state, gradients, activations of this stage),
  ``training_mb`` = high-water mark - RSS after building (what training adds:
  optimiser state, gradients, activations) and the whole process's
  ``process_peak_mb``. The allocator keeps some freed memory, so these are
  upper bounds of what was live.

    python benchmarks/throughput.py                       # every pipeline, CPU, batch 32
    python benchmarks/throughput.py --pipelines mae dino --rounds 5
    python benchmarks/throughput.py --device cuda --precision bf16 --arch vit_small_patch16_224 \\
        --depth 12 --embed-dim 384 --batch-size 256 --out benchmarks/results/gpu_vit_small.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, ROOT, THREADS_HELP, build_benches, command, encoder_overrides, environment,  # noqa: E402
                     interleave, median, peak_rss_kib, pipeline_files, reset_peak_rss, rss_kib, set_threads, write_result)

MIB = 2 ** 20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipelines", nargs="*", default=None, help="names (mae) or paths; default: every pipelines/*.yaml")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data-limit", type=int, default=None, help="training images loaded (default: 4 batches)")
    p.add_argument("--data-root", default=None, help="data.root for every pipeline (a folder with the dataset files)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps-per-round", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per stage before the rounds")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="train.compile=true (torch.compile every module)")
    p.add_argument("--arch", default=None, help="timm arch for every encoder.vit (e.g. vit_small_patch16_224)")
    p.add_argument("--depth", type=int, default=None, help="blocks of every encoder.vit")
    p.add_argument("--embed-dim", type=int, default=None, help="width of every encoder.vit (also vars.width)")
    p.add_argument("--num-heads", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--memory", default="auto", choices=["auto", "none"],
                   help="auto: CUDA allocator counters on cuda, a fresh subprocess per stage on cpu; none: skip")
    p.add_argument("--out", default=str(RESULTS / "throughput.json"))
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: memory of one stage
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every pipeline")
    return p.parse_args(argv)


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def overrides_for(path: Path, args: argparse.Namespace, device: torch.device) -> list[str]:
    limit = args.data_limit or 4 * args.batch_size
    out = [f"device={device.type}", f"data.batch_size={args.batch_size}", f"data.limit={limit}",
           f"train.precision={args.precision}", f"train.compile={str(args.compile).lower()}"]
    if args.data_root:
        out.append(f"data.root={args.data_root}")
    out += encoder_overrides(path, args.arch, args.depth, args.embed_dim, args.num_heads)
    return out + list(args.overrides)


def probe(args: argparse.Namespace) -> None:
    """Child process: the memory of one stage (see the module docstring); prints one JSON line."""
    set_threads(args.threads)
    device = resolve_device(args.device)
    path = Path(args.pipelines[0])
    baseline = rss_kib()
    bench = build_benches(path, overrides_for(path, args, device), device, warmup=0, only_stage=args.probe)[0]
    built = rss_kib()
    exact = reset_peak_rss()
    for _ in range(args.warmup + args.steps_per_round):
        bench.step()
    peak = peak_rss_kib()
    print("PROBE " + json.dumps({
        "peak_memory_mb": round((peak - baseline) / 1024, 1),
        "built_mb": round((built - baseline) / 1024, 1),
        "training_mb": round((peak - built) / 1024, 1) if exact else None,
        "process_peak_mb": round(peak / 1024, 1),
        "baseline_mb": round(baseline / 1024, 1),
    }))


def memory_probe(path: Path, label: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", label, "--pipelines", str(path),
           "--batch-size", str(args.batch_size), "--steps-per-round", str(args.steps_per_round),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device, "--precision", args.precision]
    if args.data_limit:
        cmd += ["--data-limit", str(args.data_limit)]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    if args.compile:
        cmd.append("--compile")
    for flag, value in (("--arch", args.arch), ("--depth", args.depth), ("--embed-dim", args.embed_dim),
                        ("--num-heads", args.num_heads)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += list(args.overrides)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            return {**json.loads(line[6:]), "method": "subprocess peak RSS (VmHWM) above its baseline"}
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.probe:
        probe(args)
        return {}
    device = resolve_device(args.device)
    torch.manual_seed(0)
    env = environment(device)
    benches, errors, skipped, sources = [], {}, {}, {}
    for path in pipeline_files(args.pipelines):
        try:
            built = build_benches(path, overrides_for(path, args, device), device, args.warmup)
        except Exception as e:  # report and go on with the other pipelines
            message = f"{type(e).__name__}: {e}".strip()[:2000]
            if "pretrained weights" in message:  # e.g. eva_clip.yaml's CLIP teacher, offline
                skipped[path.name] = message
                print(f"{path.name}: skipped, its pretrained weights are not available here", file=sys.stderr)
                continue
            errors[path.name] = message
            print(f"{path.name}: cannot build: {message}", file=sys.stderr)
            traceback.print_exc()
            continue
        for bench in built:
            sources[bench.label] = path
            print(f"built {bench.label}: {sum(p.numel() for p in bench.trainer.params) / 1e6:.2f} M trainable parameters",
                  flush=True)
        benches += built

    by_label = {b.label: b for b in benches}
    step_peak: dict[str, int] = {b.label: 0 for b in benches}
    start_alloc: dict[str, int] = {}

    def round_start(label: str) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            start_alloc[label] = torch.cuda.memory_allocated(device)

    def round_end(label: str) -> None:
        if device.type == "cuda":
            step_peak[label] = max(step_peak[label], torch.cuda.max_memory_allocated(device) - start_alloc[label])

    times = interleave({b.label: b.step for b in benches}, args.rounds, args.steps_per_round, device,
                       on_round_start=round_start, on_round_end=round_end)

    results = {}
    for label, bench in by_label.items():
        step_s = median(times[label])
        results[label] = {
            "images_per_s": round(bench.batch_size / step_s, 2),
            "median_step_s": round(step_s, 4),
            "step_s_per_round": [round(t, 4) for t in times[label]],
            "trainable_params_m": round(sum(p.numel() for p in bench.trainer.params) / 1e6, 3),
            "pipeline_file": relative(sources[label]),
        }
    static_bytes = {b.label: b.static_bytes for b in benches}
    benches.clear()  # free the timed stages before measuring memory in subprocesses
    by_label.clear()
    built = bench = None
    mode = "none" if args.memory == "none" else ("cuda" if device.type == "cuda" else "probe")
    if mode == "probe":
        for label in results:
            print(f"memory of {label} (fresh process) ...", flush=True)
            results[label]["memory"] = memory_probe(sources[label], label, args)
            results[label]["peak_memory_mb"] = results[label]["memory"].get("peak_memory_mb")
    elif mode == "cuda":
        for label in results:
            static = static_bytes.get(label) or 0
            results[label]["peak_memory_mb"] = round((static + step_peak[label]) / MIB, 1)
            results[label]["memory"] = {"static_mb": round(static / MIB, 1), "step_peak_mb": round(step_peak[label] / MIB, 1),
                                        "method": "CUDA allocator: own tensors after warm-up + peak increase in a round"}

    result = {
        "benchmark": "throughput",
        "command": command(),
        "environment": env,
        "settings": {"batch_size": args.batch_size, "data_limit": args.data_limit or 4 * args.batch_size,
                     "rounds": args.rounds, "steps_per_round": args.steps_per_round, "warmup_steps": args.warmup,
                     "precision": args.precision, "compile": args.compile, "arch": args.arch, "depth": args.depth,
                     "embed_dim": args.embed_dim, "num_heads": args.num_heads, "overrides": args.overrides,
                     "memory": mode},
        "definition": "images/s = batch size / median seconds per training step (forward, backward, AdamW, hooks); "
                      "multi-crop views are not counted as extra images",
        "pipelines": results,
        "errors": errors,
        "skipped": skipped,
    }
    print(f"\n{'pipeline':<22} {'images/s':>10} {'step ms':>9} {'params M':>9} {'peak MB':>9}")
    for label, r in results.items():
        peak = r.get("peak_memory_mb")
        print(f"{label:<22} {r['images_per_s']:>10.1f} {r['median_step_s'] * 1000:>9.0f} {r['trainable_params_m']:>9.2f} "
              f"{peak if peak is not None else '-':>9}")
    for name, msg in errors.items():
        print(f"{name}: ERROR {msg.splitlines()[0] if msg else ''}")
    for name in skipped:
        print(f"{name}: skipped (needs pretrained weights that are not available here)")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome.get("errors") else 0)
