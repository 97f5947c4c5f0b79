"""Hooks around the trainer: MLflow tracking and console progress."""
from __future__ import annotations

import sys
import time

from graphssl.tracking import Tracker


class TrackingHook:
    """Writes parent-run metrics every step and node-run metrics every ``log_every`` steps, batched."""

    def __init__(self, tracker: Tracker, parent: str, node_runs: dict[str, str], log_every: int):
        self.tracker = tracker
        self.parent = parent
        self.node_runs = node_runs
        self.log_every = log_every
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        t = self.tracker
        for key, value in metrics.items():
            t.metric(self.parent, key, value, step)
        if (step + 1) % self.log_every and step + 1 != trainer.cfg.train.steps:
            return
        ex = trainer.executor
        for name, node in ex.spec.nodes.items():
            run = self.node_runs.get(name)
            if run is None:
                continue
            if name in ex.node_seconds:
                calls = ex.node_calls[name] - self._calls.get(name, 0)
                if calls:
                    ms = 1000 * (ex.node_seconds[name] - self._seconds.get(name, 0.0)) / calls
                    t.metric(run, "time_per_call_ms", ms, step)
                self._seconds[name], self._calls[name] = ex.node_seconds[name], ex.node_calls[name]
            for key, value in ex.stats.get(name, {}).items():
                t.metric(run, key, value, step)
            if node.call is None and name in ex.nodes:
                for key, value in ex.nodes[name].pop_metrics().items():
                    t.metric(run, key, value, step)
            for port in node.cls.outputs:
                key = f"loss/{name}" if port == "loss" else f"loss/{name}.{port}"
                if key in metrics:
                    t.metric(run, "loss" if port == "loss" else port, metrics[key], step)
        t.flush()

    def on_eval(self, trainer, step: int, results: dict[str, dict[str, float]]) -> None:
        for node, metrics in results.items():
            for key, value in metrics.items():
                self.tracker.metric(self.parent, key, value, step)
                if node in self.node_runs:
                    self.tracker.metric(self.node_runs[node], key, value, step)
        self.tracker.flush()


class ConsoleHook:
    """One plain line every ``log_every`` steps: step, losses, lr, images/s, time left."""

    def __init__(self, total_steps: int, log_every: int, stream=None):
        self.total = total_steps
        self.log_every = log_every
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.first_step: int | None = None

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if self.first_step is None:
            self.first_step, self.start = step, time.perf_counter()
        if (step + 1) % self.log_every and step + 1 != self.total:
            return
        done = step + 1 - self.first_step
        elapsed = time.perf_counter() - self.start
        left = elapsed / max(done, 1) * (self.total - step - 1)
        parts = {k.removeprefix("loss/"): v for k, v in metrics.items() if k.startswith("loss/")}
        losses = " (" + " ".join(f"{k}={float(v):.4f}" for k, v in parts.items()) + ")" if len(parts) > 1 else ""
        print(f"step {step + 1}/{self.total}  loss={float(metrics['loss']):.4f}{losses}  lr={metrics['lr']:.2e}  "
              f"{float(metrics['images_per_s']):.0f} img/s  left {left:.0f}s", file=self.stream, flush=True)

    def on_eval(self, trainer, step: int, results: dict[str, dict[str, float]]) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for metrics in results.values() for k, v in metrics.items())
        initial = all(k.endswith("_init") for metrics in results.values() for k in metrics)
        print(f"eval {'before training' if initial else f'after step {step + 1}'}: {shown}", file=self.stream, flush=True)
