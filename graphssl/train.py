"""The training loop around the executor: schedules, backward, optimiser, per-step hooks."""
from __future__ import annotations

import math
import time
from typing import Callable, Protocol

import torch
from torch import nn

from graphssl.component import Component, Progress, has_hook
from graphssl.config import PipelineConfig
from graphssl.distributed import World, any_rank, barrier
from graphssl.executor import Executor
from graphssl.optim import clip_gradients, set_lr_and_wd
from graphssl.schedules import scaled_lr, value_at, warmup_cosine_lr


class NonFiniteLoss(Exception):
    """A loss became NaN or infinite: the run stops (the last good checkpoint is kept)."""

    def __init__(self, step: int, losses: dict[str, float], note: str = ""):
        self.step = step
        self.losses = losses
        self.bad = {k: v for k, v in losses.items() if not math.isfinite(v)} or losses
        super().__init__(f"non-finite loss at step {step}: " + ", ".join(f"{k}={v}" for k, v in self.bad.items()) + note)


class Hook(Protocol):
    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, torch.Tensor | float]) -> None: ...
    def on_eval(self, trainer: "Trainer", step: int, results: dict[str, dict[str, float]]) -> None: ...


class Trainer:
    def __init__(self, cfg: PipelineConfig, executor: Executor, optimizer: torch.optim.Optimizer, data,
                 hooks: list = (), world: World = World(), forward: nn.Module | None = None,
                 flops_per_step: int | None = None):
        self.cfg = cfg
        self.flops_per_step = flops_per_step  # counted FLOPs of one step of all processes (graphssl.flops)
        self.executor = executor
        self.world = world
        self.forward = forward or executor  # DistributedDataParallel(executor) under torchrun
        world_size = world.size
        self.optimizer = optimizer
        self.data = data
        self.hooks = list(hooks)
        self.global_batch = cfg.data.batch_size * world_size
        self.peak_lr = scaled_lr(cfg.train.lr, self.global_batch, cfg.train.lr_scaling)
        warmup = cfg.train.warmup
        self.warmup_steps = int(warmup) if warmup >= 1 else round(warmup * cfg.train.steps)
        modules = executor.components()
        self.evaluators = {n: m for n, m in modules.items() if getattr(m, "role", "") == "evaluator"}
        comps = [m for m in modules.values() if isinstance(m, Component)]
        self._before = [c for c in comps if has_hook(c, "before_step")]
        self._before_opt = [c for c in comps if has_hook(c, "before_optimizer_step")]
        self._after = [c for c in comps if has_hook(c, "after_step")]
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.step = 0

    def resolve(self, name: str) -> nn.Module:
        """A module by node name, or an owner's copy by "owner.node"."""
        modules = self.executor.components()
        if name in modules:
            return modules[name]
        owner, _, target = name.partition(".")
        return modules[owner].copy_of(target)

    def evaluate(self, step: int, suffix: str = "", force: bool = True) -> dict[str, dict[str, float]]:
        """Run the evaluators that are due (rank 0 evaluates on the whole evaluation set; others wait)."""
        results = {}
        due = [(n, ev) for n, ev in self.evaluators.items()
               if force or ((ev.config.every or self.cfg.eval.every) and (step + 1) % (ev.config.every or self.cfg.eval.every) == 0)]
        if not due:
            return results
        # Sharded (FSDP) modules need every rank in their forward; otherwise rank 0 evaluates alone.
        if self.world.main or self.cfg.train.fsdp:
            for name, ev in due:
                metrics = ev.evaluate(self.resolve, self.data, self.cfg.eval.limit)
                results[name] = {k + suffix: v for k, v in metrics.items()}
        barrier(self.world)
        if not self.world.main:
            results = {}
        for hook in self.hooks:
            if results and hasattr(hook, "on_eval"):
                hook.on_eval(self, step, results)
        return results

    def train_step(self, step: int) -> dict[str, torch.Tensor | float]:
        cfg = self.cfg.train
        progress = Progress(step, cfg.steps, self.data.steps_per_epoch)
        lr = warmup_cosine_lr(step, cfg.steps, self.peak_lr, self.warmup_steps, cfg.min_lr)
        wd = value_at(cfg.weight_decay, progress)
        set_lr_and_wd(self.optimizer, lr, wd)
        for c in self._before:
            c.before_step(progress)
        start = time.perf_counter()
        batch = self.data.batch(step)
        with torch.autocast(self.data.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            losses = self.forward(batch)
            total = self.executor.total_loss(losses)
        if not torch.isfinite(total):
            raise NonFiniteLoss(step, {n if p == "loss" else f"{n}.{p}": float(v.detach()) for (n, p), v in losses.items()})
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.clip_grad is not None:
            clip_gradients(self.params, cfg.clip_grad, cfg.clip_mode)
        for c in self._before_opt:
            c.before_optimizer_step(progress)
        self.optimizer.step()
        for c in self._after:
            c.after_step(progress)
        seconds = time.perf_counter() - start
        metrics: dict[str, torch.Tensor | float] = {"loss": total.detach()}
        for (node, port), value in losses.items():
            metrics[f"loss/{node}" if port == "loss" else f"loss/{node}.{port}"] = value.detach()
        metrics.update({"lr": lr, "weight_decay": wd, "step_time_s": seconds, "images_per_s": self.global_batch / seconds})
        if self.flops_per_step:  # the compute axis: cumulative counted FLOPs after this step
            metrics["train_flops"] = float((step + 1) * self.flops_per_step)
        return metrics

    def fit(self, start_step: int = 0, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Train from ``start_step``; returns False if ``should_stop`` ended it early."""
        self.executor.train()
        for step in range(start_step, self.cfg.train.steps):
            self.step = step
            log_now = (step + 1) % self.cfg.train.log_every == 0 or step + 1 == self.cfg.train.steps
            self.executor.collect_stats = log_now
            metrics = self.train_step(step)
            for hook in self.hooks:
                hook.on_step_end(self, step, metrics)
            if step + 1 < self.cfg.train.steps:
                self.evaluate(step, force=False)
            self.step = step + 1
            if any_rank(should_stop(), self.world) and step + 1 < self.cfg.train.steps:
                return False
        return True
