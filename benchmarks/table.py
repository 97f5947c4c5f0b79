"""Print the README's benchmark tables (markdown) from benchmarks/results/*.json.

    python benchmarks/table.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def env_line(r: dict) -> str:
    e = r["environment"]
    where = e.get("gpu") or f"{e['cpu_count']} CPUs, {e['torch_threads']} torch thread(s)"
    load_avg = e.get("load_average_at_start")
    busy = f", load average {load_avg[0]:.1f} at start" if load_avg else ""
    return f"torch {e['torch']}, {where}{busy}"


def throughput(r: dict, title: str) -> list[str]:
    s = r["settings"]
    size = (f"{s['arch'] or 'shipped'} encoders" + (f", depth {s['depth']}" if s["depth"] else "")
            + (f", width {s['embed_dim']}" if s["embed_dim"] else ""))
    out = [f"**{title}** (`{r['command']}`; batch {s['batch_size']}, {s['precision']}, {size}; "
           f"{s['rounds']} rounds x {s['steps_per_round']} steps; {env_line(r)})", "",
           "| pipeline (stage) | images/s | ms/step | trainable params (M) | peak memory (MB) |", "|---|---:|---:|---:|---:|"]
    for label, p in r["pipelines"].items():
        peak = p.get("peak_memory_mb")
        out.append(f"| {label} | {p['images_per_s']:.1f} | {p['median_step_s'] * 1000:.0f} | {p['trainable_params_m']:.2f} | "
                   f"{peak if peak is not None else '-'} |")
    for name, msg in r.get("errors", {}).items():
        out.append(f"| {name} | error: {msg.splitlines()[0][:80] if msg else ''} | | | |")
    for name in r.get("skipped", {}):
        out.append(f"| {name} | skipped: needs pretrained weights not available offline | | | |")
    return out


def data_loading(r: dict, where: str) -> list[str]:
    s = r["settings"]
    workers = " or ".join(map(str, s["graphssl_workers"]))
    official = " or ".join(map(str, s["official_workers"]))
    out = [f"**Data loading** (`{r['command']}`; {s['images']} JPEGs of 300-500 px, batch {s['batch_size']}, "
           f"{s['rounds']} rounds x {s['batches']} batches; official: {official} workers, graphssl: "
           f"{workers} workers + the main thread, each side's faster; {env_line({'environment': r['machine']})})", "",
           f"| pipeline | graphssl, views + batched ops on the {where} (images/s) | graphssl's loader alone (images/s) | "
           "official recipe's loader (images/s) | graphssl is faster by | target |", "|---|---:|---:|---:|---:|---|"]
    for name, label, target in (("dino", "DINO 2x224 + 10x96", ">= 1.5x"), ("mae", "MAE 1x224", ">= 1.0x")):
        x = r[name]
        g, o = x["graphssl_workers"], x["official_workers"]
        def workers(n: int) -> str:
            return f"{n} worker{'' if n == 1 else 's'}"

        others = ", ".join(f"{v['speedup']:.2f}x with {workers(int(k.split('_')[1]))}" for k, v in x["splits"].items()
                           if k.startswith("graphssl") and k != f"graphssl_{g}_workers")
        out.append(f"| {label} | {x['graphssl_images_per_s']:.0f} ({workers(g)}) | "
                   f"{x['graphssl_loader_images_per_s']:.0f} | {x['official_images_per_s']:.0f} ({workers(o)}) | "
                   f"**{x['speedup']:.2f}x** ({others}; loader alone {x['speedup_loader_only']:.2f}x) | {target} |")
    sc = r["scaling"]
    out += ["", f"With a folder {sc['big']['images'] // sc['small']['images']}x as large: time to the first step "
                f"**{sc['first_step_ratio']:.2f}x** (target <= 1.5x), peak memory **{sc['peak_memory_ratio']:.2f}x** "
                "(target <= 1.25x)."]
    return out


def main() -> None:
    lines: list[str] = []
    r = load("throughput")
    if r:
        lines += throughput(r, "Throughput") + [""]
    r = load("mae_vs_simmim")
    if r:
        s = r["settings"]
        lines += [f"**MAE vs SimMIM** (`{r['command']}`; {s['arch']} depth {s['depth']}, width {s['embed_dim']}, "
                  f"patch {s['patch_size']}, {s['image_size']} px, batch {s['batch_size']}; {env_line(r)})", "",
                  "| | MAE (0.75, visible-only) | SimMIM (0.6, mask token) | MAE / SimMIM | target |", "|---|---:|---:|---:|---|",
                  f"| encoder tokens | {s['mae']['encoder_tokens']} | {s['simmim']['encoder_tokens']} | | |",
                  f"| training step (ms) | {r['median_s']['mae_step'] * 1000:.0f} | {r['median_s']['simmim_step'] * 1000:.0f} | "
                  f"**{r['step_time_ratio']:.2f}** | < 0.5 |",
                  f"| encoder forward + backward (ms) | {r['median_s']['mae_encoder'] * 1000:.0f} | "
                  f"{r['median_s']['simmim_encoder'] * 1000:.0f} | **{r['encoder_time_ratio']:.2f}** | |"]
        if "flops_ratio" in r:  # counted by graphssl.flops, as graphssl check prints them
            f, e = r["counted_flops_per_step"], r["counted_encoder_flops_per_step"]
            lines += [f"| training step, counted GFLOP | {f['mae'] / 1e9:.1f} | {f['simmim'] / 1e9:.1f} | "
                      f"**{r['flops_ratio']:.2f}** | |",
                      f"| encoder forward + backward, counted GFLOP | {e['mae'] / 1e9:.1f} | {e['simmim'] / 1e9:.1f} | "
                      f"**{r['encoder_flops_ratio']:.2f}** | |"]
        lines.append("")
    r = load("overhead")
    if r:
        s, ms = r["settings"], r["median_step_s"]
        lines += [f"**Executor and tracking overhead** (`{r['command']}`; {s['pipeline']} as shipped, batch "
                  f"{s['batch_size']}, {s['rounds']} rounds x {s['steps_per_round']} steps; {env_line(r)})", "",
                  "| variant | ms/step | ratio | target |", "|---|---:|---:|---|",
                  f"| hand-written PyTorch loop, same modules | {ms['hand'] * 1000:.0f} | | |",
                  f"| graphssl executor (`Trainer.train_step`) | {ms['graph'] * 1000:.0f} | "
                  f"**{r['step_time_ratio']:.3f}** x the loop | <= 1.03 |",
                  f"| executor + MLflow tracking (log every {s['log_every']} steps) | {ms['tracked'] * 1000:.0f} | "
                  f"**{r['tracking_overhead'] * 100:+.1f}%** on the executor | <= 2% |", ""]
    r = load("augment")
    if r:
        s = r["settings"]
        ips = r["images_per_s"]
        lines += [f"**DINO multi-crop** (`{r['command']}`; 2x{s['views']['global'][1]} px + {s['views']['local'][0]}x"
                  f"{s['views']['local'][1]} px views, batch {s['batch_size']}; {env_line(r)})", "",
                  "| CPU cores | graphssl `augment.multicrop`, batched tensor ops (images/s) | "
                  "torchvision + PIL per image in a DataLoader (images/s) | batched is faster by |", "|---:|---:|---:|---:|"]
        for w in s["cpu_budgets"]:
            lines.append(f"| {w} | {ips[f'batched_{w}t']:.0f} ({w} torch thread(s)) | {ips[f'pil_{w}w']:.0f} ({w} worker(s)) | "
                         f"**{r['speedup_vs'][f'{w}_cpu']:.2f}x** |")
        lines += ["", f"Target: at least 3x at every budget: {'met' if r['pass'] else 'missed'} ({r['speedup']:.2f}x).", ""]
    r = load("peer")
    if r:
        if "error" in r:
            lines += [f"**graphssl vs lightly**: not measured: {r['error']}", ""]
        else:
            lines += [f"**graphssl vs lightly {r['environment']['lightly']}** (`{r['command']}`; {env_line(r)}; "
                      f"k-NN on {r['settings']['eval_limit']} + {r['settings']['eval_limit']} images)", "",
                      "| method | steps x batch | run | images/s | graphssl / this | k-NN top-1 at init | k-NN top-1 after |",
                      "|---|---|---|---:|---:|---:|---:|"]
            for m in ("mae", "dino"):
                if m not in r:
                    continue
                x = r[m]
                budget = f"{x['settings']['steps']} x {x['settings']['batch_size']}"
                g = x["graphssl"]
                lines.append(f"| {m.upper()} | {budget} | graphssl | {g['images_per_s']:.1f} | | {g['knn_top1_init']:.3f} | "
                             f"{g['knn_top1']:.3f} |")
                for key, v in x["lightly"].items():
                    workers = key.split("_")[0]
                    where = "augmentation in the training process" if workers == "0" else f"DataLoader, {workers} workers"
                    lines.append(f"| {m.upper()} | {budget} | lightly ({where}) | {v['images_per_s']:.1f} | "
                                 f"**{v['images_per_s_ratio']:.2f}** | {v['knn_top1_init']:.3f} | {v['knn_top1']:.3f} |")
            lines.append("")
    for name, where in (("data", "CPU"), ("gpu_data", "GPU")):
        r = load(name)
        if r:
            lines += data_loading(r, where) + [""]
    for name in ("gpu_vit_small", "gpu_vit_base"):
        r = load(name)
        if r:
            lines += throughput(r, f"GPU, {name[4:].replace('_', '-')}") + [""]
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main()
