"""The training loop around the executor: schedules, backward, optimiser, per-step hooks."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from graphssl.component import Component, Evaluator, Progress, has_hook
from graphssl.config import PipelineConfig
from graphssl.distributed import World, any_rank, barrier
from graphssl.executor import Executor
from graphssl.hooks import Hooks, RunHook
from graphssl.optim import clip_gradients, set_lr_and_wd
from graphssl.schedules import scaled_lr, value_at, warmup_cosine_lr
from graphssl.spec import ModuleRef


class NonFiniteLoss(Exception):
    """A loss (or, at a checkpoint, a parameter) became NaN or infinite: the run stops, the last good checkpoint is kept."""

    def __init__(self, step: int, losses: dict[str, float], note: str = ""):
        self.step = step
        self.losses = losses
        self.bad = {k: v for k, v in losses.items() if not math.isfinite(v)} or losses
        super().__init__(f"non-finite loss at step {step}: " + ", ".join(f"{k}={v}" for k, v in self.bad.items()) + note)


class Trainer:
    def __init__(self, cfg: PipelineConfig, executor: Executor, optimizer: torch.optim.Optimizer, data,
                 hooks: list[RunHook] = (), world: World = World(), forward: nn.Module | None = None,
                 flops_per_step: int | None = None):
        self.cfg = cfg
        self.flops_per_step = flops_per_step  # counted FLOPs of one step of all processes (graphssl.flops)
        self.executor = executor
        self.world = world
        self.forward = forward or executor  # DistributedDataParallel(executor) under torchrun
        self.optimizer = optimizer
        self.data = data
        self.hooks = Hooks(list(hooks))
        self.global_batch = cfg.data.batch_size * world.size
        self.peak_lr = scaled_lr(cfg.train.lr, self.global_batch, cfg.train.lr_scaling)
        warmup = cfg.train.warmup
        self.warmup_steps = int(warmup) if warmup >= 1 else round(warmup * cfg.train.steps)
        modules = executor.components()
        self.evaluators = {n: m for n, m in modules.items() if isinstance(m, Evaluator)}
        comps = [m for m in modules.values() if isinstance(m, Component)]
        self._before = [c for c in comps if has_hook(c, "before_step")]
        self._before_opt = [c for c in comps if has_hook(c, "before_optimizer_step")]
        self._after = [c for c in comps if has_hook(c, "after_step")]
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.step = 0
        # losses of the steps not yet checked for finiteness (checked every step on a CPU, where reading
        # a value is free; on a GPU at log steps and before every checkpoint, to keep the device busy)
        self._unchecked: list[tuple[int, dict[str, torch.Tensor]]] = []
        self._check_every_step = data.device.type == "cpu"

    def resolve(self, name: str) -> nn.Module:
        """A module by node name, or an owner's copy by "owner.node"."""
        return ModuleRef.parse(name).resolve(self.executor.components())

    def evaluate(self, step: int, suffix: str = "", force: bool = True) -> dict[str, dict[str, float]]:
        """Run the evaluators that are due (rank 0 evaluates on the whole evaluation set; others wait)."""
        results = {}
        every = {n: type(ev).every(ev.config) or self.cfg.eval.every for n, ev in self.evaluators.items()}
        due = [(n, ev) for n, ev in self.evaluators.items() if force or (every[n] and (step + 1) % every[n] == 0)]
        if not due:
            return results
        self.hooks.on_eval_start(self, step, [n for n, _ in due], initial=suffix == "_init")
        # Sharded (FSDP) modules need every rank in their forward; otherwise rank 0 evaluates alone.
        if self.world.main or self.cfg.train.fsdp:
            for name, ev in due:
                metrics = ev.evaluate(self.resolve, self.data, self.cfg.eval.limit)
                results[name] = {k + suffix: v for k, v in metrics.items()}
        barrier(self.world)
        if not self.world.main:
            results = {}
        if results:
            self.hooks.on_eval(self, step, results)
        return results

    def train_step(self, step: int, batch: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor | float]:
        cfg = self.cfg.train
        progress = Progress(step, cfg.steps, self.data.steps_per_epoch)
        lr = warmup_cosine_lr(step, cfg.steps, self.peak_lr, self.warmup_steps, cfg.min_lr, cfg.lr_convention)
        wd = value_at(cfg.weight_decay, progress)
        set_lr_and_wd(self.optimizer, lr, wd)
        for c in self._before:
            c.before_step(progress)
        start = time.perf_counter()
        if batch is None:
            batch = self.data.batch(step)
        with torch.autocast(self.data.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            losses = self.forward(batch)
            total = self.executor.total_loss(losses)
        named = {n if p == "loss" else f"{n}.{p}": v.detach() for (n, p), v in losses.items()}
        self._unchecked.append((step, {"loss": total.detach(), **named}))
        if self._check_every_step:
            self.check_finite()
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

    def check_finite(self, parameters: bool = False) -> None:
        """Raise NonFiniteLoss for the first unchecked step whose loss is not finite (one device read);
        with ``parameters``, also when a trainable parameter is (before a checkpoint is written)."""
        if self._unchecked:
            totals = torch.stack([losses["loss"].float() for _, losses in self._unchecked])
            finite = torch.isfinite(totals)
            if not bool(finite.all()):
                step, losses = self._unchecked[int((~finite).nonzero()[0])]
                self._unchecked.clear()
                raise NonFiniteLoss(step, {k: float(v) for k, v in losses.items() if k != "loss" or len(losses) == 1})
            self._unchecked.clear()
        if parameters and self.params:
            finite = torch.stack([torch.isfinite(p.detach()).all() for p in self.params])
            if not bool(finite.all()):
                name = next(n for n, p in self.executor.named_parameters() if not bool(torch.isfinite(p.detach()).all()))
                raise NonFiniteLoss(self.step, {name: float("nan")}, note=" (a parameter became non-finite)")

    def fit(self, start_step: int = 0, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Train from ``start_step``; returns False if ``should_stop`` ended it early."""
        self.executor.train()
        steps, log_every = self.cfg.train.steps, self.cfg.train.log_every
        batches = self.data.batches(start_step)
        for step in range(start_step, steps):
            self.step = step
            self.hooks.on_step_start(self, step)
            waited = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - waited
            metrics = self.train_step(step, batch)
            metrics["data_wait_s"] = waited
            if (step + 1) % log_every == 0 or step + 1 == steps:
                self.check_finite()
            self.hooks.on_step_end(self, step, metrics)
            if step + 1 < steps:
                self.evaluate(step, force=False)
            self.step = step + 1
            if any_rank(should_stop(), self.world) and step + 1 < steps:
                return False
        return True
