"""graphssl vs lightly: the same MAE and DINO trained with lightly's building blocks.

For MAE and for DINO, two training runs on the same data (one epoch over the
first steps x batch Fashion-MNIST training images, 32 px RGB), with the same timm
backbone config (the shipped pipeline's encoder.vit node), batch size and number of steps:

  graphssl -- pipelines/mae.yaml / pipelines/dino.yaml as shipped (batched
              augmentation on the training device, Trainer.train_step);
  lightly  -- the method written as lightly's examples write it, from
              lightly's parts: MaskedVisionTransformerTIMM + MAEDecoderTIMM +
              random_token_mask (MAE); DINOProjectionHead + DINOLoss +
              update_momentum (DINO); lightly's MAETransform / DINOTransform on
              PIL images in a torch DataLoader with ``--workers`` processes.
              Hyperparameters are read from the same YAML files (lr and its
              scaling, warm-up, cosine decay, betas, weight decay and its
              schedule, clipping, mask ratio, decoder size, crop sizes and
              scales, prototypes, temperatures, EMA momentum), so the runs
              differ in implementation only. Per lightly's DINO example, the
              student runs once per view; DINO's teacher is the student's copy
              and runs without drop path (eval mode), as in DINO.

The four runs are interleaved in ``--rounds`` chunks each (order alternating),
so machine drift hits all alike; images/s = batch size x chunk steps / chunk
seconds (data loading included), median over chunks, and
``images_per_s_ratio`` = graphssl / lightly (median of per-chunk ratios).
After the budget, k-NN top-1 (k 20, T 0.07, graphssl's knn_predict) on the
same features: MAE the mean patch token of the encoder, DINO the teacher's
[CLS]; bank = the first ``--eval-limit`` training images, queries = the first
``--eval-limit`` test images. Writes benchmarks/results/peer.json.

Needs lightly (``pip install -e '.[bench]'``); without it the JSON says so.

    python benchmarks/peer.py [--mae-steps 100] [--mae-batch-size 64] [--dino-steps 40] [--dino-batch-size 32]
                              [--rounds 5] [--workers 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, ROOT, THREADS_HELP, PILImages, RoundSampler, build_benches, command,  # noqa: E402
                     environment, median, node_of, paired_ratio, set_threads, write_result)
from _lightly_models import Features, LightlyDINO, LightlyMAE, LightlyRun, scheduled, timm_vit  # noqa: E402


def lightly_version() -> tuple[str | None, str | None]:
    try:
        import lightly
        from lightly.loss import DINOLoss  # noqa: F401
        from lightly.models.modules import DINOProjectionHead, MAEDecoderTIMM, MaskedVisionTransformerTIMM  # noqa: F401
        from lightly.transforms import DINOTransform, MAETransform  # noqa: F401
    except Exception as e:  # not installed, or incompatible with this torch
        return None, f"{type(e).__name__}: {e}"
    return lightly.__version__, None


def knn_top1(features: nn.Module, data, feature: str, limit: int) -> float:
    from graphssl.components.eval.knn import extract_features, knn_predict

    bank, queries = data.eval_set("train", limit), data.eval_set("test", limit)
    bank_f = extract_features(features, bank.images, data.to_input, feature)
    query_f = extract_features(features, queries.images, data.to_input, feature)
    classes = int(max(bank.labels.max(), queries.labels.max())) + 1
    pred = knn_predict(bank_f, bank.labels, query_f, classes, 20, 0.07)
    return float((pred == queries.labels).float().mean())


# ----------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mae-steps", type=int, default=100, help="training steps of each MAE run")
    p.add_argument("--mae-batch-size", type=int, default=64)
    p.add_argument("--dino-steps", type=int, default=30, help="training steps of each DINO run (8 views: costly on CPU)")
    p.add_argument("--dino-batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="timed chunks per run (steps / rounds steps each)")
    p.add_argument("--eval-limit", type=int, default=1000, help="k-NN bank and query images")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                   help="DataLoader workers of the lightly runs, one run per value (0: augmentation in the training "
                        "process, the same CPU budget as graphssl's one process)")
    p.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    p.add_argument("--methods", nargs="+", default=["mae", "dino"], choices=["mae", "dino"])
    p.add_argument("--out", default=str(RESULTS / "peer.json"))
    args = p.parse_args(argv)
    set_threads(args.threads)
    device = torch.device("cpu")
    env = environment(device)
    version, error = lightly_version()
    env["lightly"] = version
    result = {"benchmark": "peer", "command": command(), "environment": env}
    if version is None:
        result["error"] = f"lightly is not usable here ({error}); install it with pip install -e '.[bench]'"
        print(result["error"])
        write_result(args.out, result)
        return result
    from lightly.transforms import DINOTransform, MAETransform
    from torch.utils.data import DataLoader

    runs, info = {}, {}
    for method in args.methods:
        steps, b = (args.mae_steps, args.mae_batch_size) if method == "mae" else (args.dino_steps, args.dino_batch_size)
        chunk = -(-steps // args.rounds)
        steps = chunk * args.rounds
        images = steps * b  # one epoch: every step sees new images
        path = ROOT / "pipelines" / f"{method}.yaml"
        overrides = ["device=cpu", f"data.batch_size={b}", f"data.limit={images}", f"train.steps={steps}",
                     f"eval.limit={args.eval_limit}"]
        torch.manual_seed(0)
        bench = build_benches(path, overrides, device, warmup=0)[0]
        trainer = bench.trainer
        cfg, data, spec = trainer.cfg, trainer.data, trainer.executor.spec

        def conf(type_name: str):
            return node_of(spec, type_name).config

        normalize = {"mean": list(data.mean), "std": list(data.std)}

        def lightly_model() -> tuple[nn.Module, object]:
            """The lightly model (seeded: every variant starts from the same weights) and its transform."""
            torch.manual_seed(0)
            if method == "mae":
                enc, dec, mask, view = conf("encoder.vit"), conf("head.mae_decoder"), conf("mask.random"), conf("augment.crop")
                model = LightlyMAE(timm_vit(enc, cfg.data.image_size), enc.patch_size, mask.ratio, dec.embed_dim,
                                   dec.depth, dec.num_heads, conf("target.patch_pixels").norm_pix)
                return model, MAETransform(input_size=cfg.data.image_size, min_scale=view.scale[0], normalize=normalize)
            enc, head, crops = conf("encoder.vit"), conf("head.dino"), conf("augment.multicrop")
            post, loss_cfg, teacher = conf("post.center_sharpen"), conf("loss.dino"), conf("teacher.ema")
            temp = post.teacher_temp
            model = LightlyDINO(timm_vit(enc, cfg.data.image_size), head.out_dim, head.hidden_dim, head.bottleneck_dim,
                                head.norm_last_layer, int(head.freeze_last_layer_epochs * data.steps_per_epoch),
                                scheduled(temp), round(getattr(temp, "over", 1.0) * steps), loss_cfg.student_temp,
                                post.center_momentum, scheduled(teacher.momentum), steps, crops.n_global)
            mc = trainer.executor.components()[node_of(spec, "augment.multicrop").name]
            blur, sol = list(crops.blur_prob), list(crops.solarize_prob)
            transform = DINOTransform(global_crop_size=mc.global_size, global_crop_scale=crops.global_scale,
                                      local_crop_size=mc.local_size, local_crop_scale=crops.local_scale,
                                      n_local_views=crops.n_local, hf_prob=crops.flip_prob, cj_prob=crops.jitter_prob,
                                      cj_strength=1.0, cj_bright=crops.brightness, cj_contrast=crops.contrast,
                                      cj_sat=crops.saturation, cj_hue=crops.hue, random_gray_scale=crops.grayscale_prob,
                                      gaussian_blur=(blur[0], blur[1], blur[2]), sigmas=crops.blur_sigma,
                                      solarization_prob=sol[1], normalize=normalize)
            return model, transform

        feature = conf("eval.knn").feature
        lightly_runs = {}
        for w in args.workers:
            model, transform = lightly_model()
            dataset = PILImages(data.train.images, transform)
            loader = DataLoader(dataset, batch_size=b, sampler=RoundSampler(len(dataset), chunk * b, seed=1),
                                num_workers=w, persistent_workers=w > 0, drop_last=True)
            lightly_runs[w] = LightlyRun(model, loader, cfg.train, b, steps)
            runs[f"{method}_lightly_{w}w"] = lightly_runs[w].run_chunk

        def graphssl_chunk(bench=bench, chunk=chunk):
            bench.trainer.executor.train()
            for _ in range(chunk):
                bench.step()

        runs[f"{method}_graphssl"] = graphssl_chunk
        first = next(iter(lightly_runs.values()))
        print(f"{method}: k-NN at initialisation ...", flush=True)
        init = {"graphssl": next(iter(trainer.evaluate(0).values()))["knn_top1"],
                "lightly": knn_top1(Features(first.model.features), data, feature, args.eval_limit)}
        enc = conf("encoder.vit")
        backbone = (f"timm {enc.arch}, depth {enc.depth}, width {enc.embed_dim or 'as the arch'}, patch {enc.patch_size}, "
                    f"{cfg.data.image_size} px (as pipelines/{method}.yaml)")
        info[method] = {"bench": bench, "lightly": lightly_runs, "data": data, "feature": feature, "steps": steps,
                        "batch_size": b, "chunk": chunk, "images": images, "init": init, "backbone": backbone,
                        "graphssl_params_m": round(sum(p.numel() for p in trainer.params) / 1e6, 3),
                        "lightly_params_m": round(sum(p.numel() for p in first.params) / 1e6, 3)}
        print(f"{method}: graphssl {info[method]['graphssl_params_m']} M, lightly {info[method]['lightly_params_m']} M "
              f"trainable parameters; {steps} steps of {b} images, {images} images; k-NN at init {init}", flush=True)

    times: dict[str, list[float]] = {k: [] for k in runs}
    rounds = args.rounds
    per_chunk = {name: info[name.split("_")[0]]["chunk"] * info[name.split("_")[0]]["batch_size"] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
        print(f"chunk {r + 1}/{rounds}: " + ", ".join(f"{k}={per_chunk[k] / v[-1]:.0f} img/s" for k, v in times.items()),
              flush=True)

    for method, m in info.items():
        g_times = times[f"{method}_graphssl"]
        bench, per_image = m["bench"], m["chunk"] * m["batch_size"]
        print(f"{method}: k-NN evaluation ...", flush=True)
        g_knn = next(iter(bench.trainer.evaluate(m["steps"] - 1).values()))["knn_top1"]
        out = {
            "settings": {k: m[k] for k in ("steps", "batch_size", "chunk", "images", "backbone")},
            "graphssl": {"images_per_s": round(per_image / median(g_times), 1), "knn_top1": round(g_knn, 4),
                         "knn_top1_init": round(m["init"]["graphssl"], 4),
                         "final_loss": round(float(bench.last_metrics["loss"]), 4),
                         "trainable_params_m": m["graphssl_params_m"]},
            "lightly": {},
            "chunk_seconds": {"graphssl": [round(t, 3) for t in g_times]},
        }
        for w, lrun in m["lightly"].items():
            l_times = times[f"{method}_lightly_{w}w"]
            l_knn = knn_top1(Features(lrun.model.features), m["data"], m["feature"], args.eval_limit)
            out["lightly"][f"{w}_workers"] = {
                "images_per_s": round(per_image / median(l_times), 1), "knn_top1": round(l_knn, 4),
                "knn_top1_init": round(m["init"]["lightly"], 4), "final_loss": round(lrun.last_loss, 4),
                "trainable_params_m": m["lightly_params_m"],
                "images_per_s_ratio": round(paired_ratio(l_times, g_times), 3)}  # graphssl / lightly, per chunk
            out["chunk_seconds"][f"lightly_{w}w"] = [round(t, 3) for t in l_times]
        ratios = {k: v["images_per_s_ratio"] for k, v in out["lightly"].items()}
        out["images_per_s_ratio"] = min(ratios.values())  # against the faster lightly setting
        result[method] = out
        print(f"{method}: graphssl {out['graphssl']}, lightly {out['lightly']}", flush=True)
    result["settings"] = {"rounds": args.rounds, "eval_limit": args.eval_limit, "lightly_workers": args.workers,
                          "threads": torch.get_num_threads()}
    result["target"] = {"images_per_s_ratio": ">= 1.0 (against the faster lightly setting)"}
    result["pass"] = all(result[m]["images_per_s_ratio"] >= 1.0 for m in info)
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
