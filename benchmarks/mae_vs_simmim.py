"""MAE's visible-only encoder vs SimMIM's full-token encoder on the same ViT.

pipelines/mae.yaml and pipelines/simmim.yaml are built as shipped, with the
same encoder size for both (``--depth``, default 12 blocks of vit_tiny: 192
wide, patch 4, 32 px, 64 patch tokens), the same batch and data. MAE masks
75% of the tokens at random and its encoder sees only the 16 visible ones
(+ [CLS]); SimMIM masks 60% in 8 px cells and its encoder sees all 64 (+ [CLS]),
the masked ones replaced by a mask token. Four variants are timed in one
process, in rounds whose order alternates:

  mae_step / simmim_step        -- a whole training step (Trainer.train_step:
                                   augmentation, masking, encoder, decoder/head,
                                   loss, backward, AdamW);
  mae_encoder / simmim_encoder  -- the encoder alone, forward + backward of a
                                   scalar of its outputs, on fixed images and masks.

Ratios are medians over rounds of per-round ratios (MAE / SimMIM):
step_time_ratio (expected well under 0.5 when the encoder dominates) and
encoder_time_ratio. Next to them, the counted FLOPs of one training step and
of the encoder node (graphssl.flops, as `graphssl check` counts them; forward,
backward and updates) give flops_ratio and encoder_flops_ratio: what the time
ratios should approach where time follows the matrix products.
Writes benchmarks/results/mae_vs_simmim.json.

    python benchmarks/mae_vs_simmim.py [--depth 12] [--batch-size 64] [--rounds 7] [--steps-per-round 3]
    python benchmarks/mae_vs_simmim.py --count-only   # the counts alone, added to the existing result file

Counts do not depend on the machine: ``--count-only`` adds them to a result
file made with the same sizes (its timings kept; ``flops_command`` says how).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, ROOT, THREADS_HELP, build_benches, command, encoder_overrides, environment,  # noqa: E402
                     interleave, median, node_of, paired_ratio, set_threads, write_result)


def encoder_step(encoder: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor, precision: str):
    def run() -> None:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = encoder(images=images, mask=mask)
            loss = out["patches"].float().square().mean() + out["cls"].float().square().mean()
        loss.backward()
        for p in encoder.parameters():
            p.grad = None
    return run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=12, help="encoder blocks, the same for both")
    p.add_argument("--arch", default=None, help="timm arch for both encoders (default: as shipped, vit_tiny)")
    p.add_argument("--embed-dim", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--out", default=str(RESULTS / "mae_vs_simmim.json"))
    p.add_argument("--count-only", action="store_true", help="count FLOPs only and add them to the existing --out file")
    args = p.parse_args(argv)
    from graphssl.plan import check_plan, plan_pipeline

    set_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    common = [f"device={device.type}", f"data.batch_size={args.batch_size}", f"data.limit={4 * args.batch_size}",
              f"train.precision={args.precision}"]
    flops, encoder_flops, overrides = {}, {}, {}
    for name in ("mae", "simmim"):
        path = ROOT / "pipelines" / f"{name}.yaml"
        overrides[name] = common + encoder_overrides(path, args.arch, args.depth, args.embed_dim)
        plan = plan_pipeline(path, overrides[name])
        check_plan(plan, device)  # the dry run counts one training step
        prepared = next(iter(plan.stages.values())).prepared
        flops[name] = prepared.flops.total
        encoder_flops[name] = prepared.flops.of_node(node_of(prepared.spec, "encoder.vit").name)
    counts = {"counted_flops_per_step": flops, "counted_encoder_flops_per_step": encoder_flops,
              "flops_ratio": round(flops["mae"] / flops["simmim"], 4),
              "encoder_flops_ratio": round(encoder_flops["mae"] / encoder_flops["simmim"], 4)}
    print(f"counted FLOPs per step: MAE {flops['mae'] / 1e9:.2f} G, SimMIM {flops['simmim'] / 1e9:.2f} G "
          f"(ratio {counts['flops_ratio']:.3f}; encoders {counts['encoder_flops_ratio']:.3f})")
    if args.count_only:
        result = json.loads(Path(args.out).read_text())
        made = result["settings"]
        if (made["batch_size"], made["depth"], made["precision"]) != (args.batch_size, args.depth, args.precision):
            raise SystemExit(f"{args.out} was made with other sizes ({made}); rerun without --count-only")
        result.update(counts, flops_command=command())
        write_result(args.out, result)
        return result

    benches, encoders, inputs = {}, {}, {}
    for name in ("mae", "simmim"):
        bench = build_benches(ROOT / "pipelines" / f"{name}.yaml", overrides[name], device)[0]
        benches[name] = bench
        spec, modules = bench.trainer.executor.spec, bench.trainer.executor.components()
        encoder = modules[node_of(spec, "encoder.vit").name]
        masker = modules[node_of(spec, "mask.random" if name == "mae" else "mask.random_coarse").name]
        encoders[name] = encoder
        with torch.no_grad():
            images = bench.trainer.data.batch(0)["images"]
            view = modules[node_of(spec, "augment.crop").name](images=images)["images"]
            mask = masker(images=view)["mask"]
        inputs[name] = (view, mask)
        vit = encoder.vit
        print(f"{name}: encoder {type(vit).__name__} depth {len(vit.blocks)} width {vit.embed_dim}, "
              f"{int((~mask).sum(1).float().mean())} visible of {mask.shape[1]} tokens, "
              f"mask_mode {encoder.config.mask_mode}", flush=True)

    variants = {
        "mae_step": benches["mae"].step,
        "simmim_step": benches["simmim"].step,
        "mae_encoder": encoder_step(encoders["mae"], *inputs["mae"], args.precision),
        "simmim_encoder": encoder_step(encoders["simmim"], *inputs["simmim"], args.precision),
    }
    for name in ("mae_encoder", "simmim_encoder"):  # warm-up (the steps were warmed up when built)
        variants[name]()
    times = interleave(variants, args.rounds, args.steps_per_round, device)

    step_ratio = paired_ratio(times["mae_step"], times["simmim_step"])
    encoder_ratio = paired_ratio(times["mae_encoder"], times["simmim_encoder"])
    enc_cfg = {k: getattr(encoders["mae"].config, k) for k in ("arch", "patch_size")}
    vit = encoders["mae"].vit
    result = {
        "benchmark": "mae_vs_simmim",
        "command": command(),
        "environment": env,
        "settings": {"batch_size": args.batch_size, "rounds": args.rounds, "steps_per_round": args.steps_per_round,
                     "precision": args.precision, **enc_cfg, "depth": len(vit.blocks), "embed_dim": vit.embed_dim,
                     "image_size": benches["mae"].trainer.cfg.data.image_size,
                     "mae": {"mask": "mask.random ratio 0.75", "mask_mode": "drop",
                             "encoder_tokens": int((~inputs["mae"][1]).sum(1)[0]) + 1},
                     "simmim": {"mask": "mask.random_coarse ratio 0.6", "mask_mode": "replace",
                                "encoder_tokens": inputs["simmim"][1].shape[1] + 1}},
        "median_s": {k: round(median(v), 5) for k, v in times.items()},
        "s_per_round": {k: [round(t, 5) for t in v] for k, v in times.items()},
        "step_time_ratio": round(step_ratio, 4),
        "encoder_time_ratio": round(encoder_ratio, 4),
        **counts,
        "target": {"step_time_ratio": "< 0.5"},
        "pass": step_ratio < 0.5,
    }
    print(f"MAE / SimMIM: training step {step_ratio:.3f} in time, {counts['flops_ratio']:.3f} in counted FLOPs; "
          f"encoder forward+backward {encoder_ratio:.3f} in time, {counts['encoder_flops_ratio']:.3f} in counted FLOPs")
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
