"""Executor and tracking overhead on the default MAE pipeline.

Three variants train the *same* modules on the same batches, interleaved in
one process so machine noise hits all of them alike:
  hand     -- a hand-written PyTorch loop calling the modules directly;
  graph    -- graphssl's Trainer.train_step (executor, schedules, hooks list empty);
  tracked  -- graph plus the MLflow tracking plugin (node timers and statistics at log steps) writing to a
              temporary SQLite store.
Writes benchmarks/results/overhead.json with the median step times and
  step_time_ratio = graph / hand            (target <= 1.03)
  tracking_overhead = tracked / graph - 1   (target <= 0.02)

    python benchmarks/overhead.py [--steps-per-round 10] [--rounds 7] [key=value overrides]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, THREADS_HELP, command, environment, interleave, median, paired_ratio,  # noqa: E402
                     set_threads, write_result)

from graphssl.build import build_trainer
from graphssl.component import Progress
from graphssl.mlflow_tracking import MlflowTracking
from graphssl.optim import clip_gradients, set_lr_and_wd
from graphssl.plan import plan_pipeline
from graphssl.schedules import value_at, warmup_cosine_lr
from graphssl.train import Trainer

ROOT = Path(__file__).resolve().parent.parent

def hand_step(m: dict, data, optimizer, trainer: Trainer, step: int) -> None:
    """MAE written by hand against the same modules: what a user would write without graphssl."""
    cfg = trainer.cfg.train
    lr = warmup_cosine_lr(step, cfg.steps, trainer.peak_lr, trainer.warmup_steps, cfg.min_lr)
    set_lr_and_wd(optimizer, lr, value_at(cfg.weight_decay, Progress(step, cfg.steps)))
    images = data.batch(step)["images"]
    view = m["view"](images=images)["images"]
    mask = m["mask"](images=view)["mask"]
    enc = m["encoder"](images=view, mask=mask)
    pred = m["decoder"](cls=enc["cls"], patches=enc["patches"], mask=mask)["pred"]
    with torch.no_grad():
        target = m["target"](images=view)["target"]
    loss = m["loss"](pred=pred, target=target, mask=mask)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad is not None:
        clip_gradients(trainer.params, cfg.clip_grad, cfg.clip_mode)
    optimizer.step()
    float(loss.detach())  # the hand loop reads its loss too (to print it)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=str(ROOT / "pipelines/mae.yaml"))
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--out", default=str(RESULTS / "overhead.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    set_threads(args.threads)
    env = environment("cpu")

    plan = plan_pipeline(args.pipeline, ["device=cpu", *args.overrides])
    stage = plan.last
    prepared = stage.prepared
    device = torch.device("cpu")
    plain = build_trainer(stage, plan, device)
    executor, optimizer, data = plain.executor, plain.optimizer, plain.data
    modules = executor.components()
    with tempfile.TemporaryDirectory() as tmp:
        tracking = MlflowTracking(f"sqlite:///{tmp}/bench.db", "overhead")
        tracking.start_run(plan, "bench", {})
        tracked = Trainer(prepared.cfg, executor, optimizer, data, hooks=[tracking])
        tracked.hooks.on_stage_start(stage, tracked, None)

        def tracked_step(s: int) -> None:
            tracked.hooks.on_step_start(tracked, s)
            tracked.hooks.on_step_end(tracked, s, tracked.train_step(s))
        step = [0]  # one step counter shared by the variants: schedules advance as in one run

        def advancing(fn):
            def run() -> None:
                fn(step[0])
                step[0] += 1
            return run

        variants = {
            "hand": advancing(lambda s: hand_step(modules, data, optimizer, plain, s)),
            "graph": advancing(plain.train_step),
            "tracked": advancing(tracked_step),
        }
        executor.train()
        for fn in variants.values():  # warm-up
            fn()
        times = interleave(variants, args.rounds, args.steps_per_round, device, log=lambda line: print(line, flush=True))
        tracking.tracker.flush()

    # per-round ratios cancel slow drifts of the machine better than ratios of medians
    graph_ratio = paired_ratio(times["graph"], times["hand"])
    tracking = paired_ratio(times["tracked"], times["graph"]) - 1
    result = {
        "benchmark": "overhead",
        "command": command(),
        "environment": env,
        "settings": {"pipeline": Path(args.pipeline).name, "overrides": args.overrides,
                     "batch_size": prepared.cfg.data.batch_size, "rounds": args.rounds,
                     "steps_per_round": args.steps_per_round, "log_every": prepared.cfg.train.log_every},
        "median_step_s": {k: round(median(v), 5) for k, v in times.items()},
        "step_time_ratio": round(graph_ratio, 4),
        "tracking_overhead": round(tracking, 4),
        "targets": {"step_time_ratio": "<= 1.03", "tracking_overhead": "<= 0.02"},
        "pass": graph_ratio <= 1.03 and tracking <= 0.02,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
