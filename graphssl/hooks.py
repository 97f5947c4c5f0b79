"""Hooks around the trainer: MLflow tracking and console progress (a rich bar on a terminal, plain lines otherwise)."""
from __future__ import annotations

import atexit
import os
import sys
import time

from graphssl.tracking import Tracker


class TrackingHook:
    """Records parent-run metrics every step and node-run metrics every ``log_every`` steps; writes them in
    batches at most every ``flush_seconds`` (each write is a store transaction per run), at checkpoints, at the
    last step and after every evaluation. The runner flushes whatever is left when the run ends, however it ends."""

    def __init__(self, tracker: Tracker, parent: str, node_runs: dict[str, str], log_every: int,
                 flush_seconds: float = 10.0):
        self.tracker = tracker
        self.parent = parent
        self.node_runs = node_runs
        self.log_every = log_every
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
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
            if "train_flops" in metrics:  # the compute axis, in every node run too
                t.metric(run, "train_flops", metrics["train_flops"], step)
            for port in node.cls.outputs:
                key = f"loss/{name}" if port == "loss" else f"loss/{name}.{port}"
                if key in metrics:
                    t.metric(run, "loss" if port == "loss" else port, metrics[key], step)
        every = trainer.cfg.train.checkpoint_every
        due = step + 1 == trainer.cfg.train.steps or (every and (step + 1) % every == 0)  # the store keeps up with checkpoints
        if due or time.monotonic() - self._last_flush >= self.flush_seconds:
            t.flush()
            self._last_flush = time.monotonic()

    def on_eval(self, trainer, step: int, results: dict[str, dict[str, float]]) -> None:
        for node, metrics in results.items():
            for key, value in metrics.items():
                self.tracker.metric(self.parent, key, value, step)
                if node in self.node_runs:
                    self.tracker.metric(self.node_runs[node], key, value, step)
            logged = not (step + 1) % self.log_every or step + 1 == trainer.cfg.train.steps  # on_step_end logged it
            if node in self.node_runs and trainer.flops_per_step and not logged and not all(k.endswith("_init") for k in metrics):
                self.tracker.metric(self.node_runs[node], "train_flops", (step + 1) * trainer.flops_per_step, step)
        self.tracker.flush()
        self._last_flush = time.monotonic()


class ConsoleHook:
    """Progress on the console: a rich progress bar (step, loss, images/s, time left) on a terminal,
    one plain line every ``log_every`` steps otherwise (logs, CI, pipes)."""

    def __init__(self, total_steps: int, log_every: int, stream=None, fancy: bool | None = None):
        self.total = total_steps
        self.log_every = log_every
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.first_step: int | None = None
        if fancy is None:
            fancy = _is_terminal(self.stream) and os.environ.get("TERM") != "dumb"
        self.fancy = fancy
        self._bar = None
        self._task = None

    # -- the rich bar (terminals) -------------------------------------------------
    def _open_bar(self, step: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = Console(file=self.stream)
        self._bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                             TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                             transient=False, auto_refresh=False)
        self._task = self._bar.add_task("train", total=self.total, completed=step, info="")
        self._bar.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Stop the bar (restores the cursor); called at the last step and at exit."""
        if self._bar is not None:
            self._bar.refresh()
            self._bar.stop()
            self._bar = None

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    # -- hooks -------------------------------------------------------------------
    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if self.first_step is None:
            self.first_step, self.start = step, time.perf_counter()
            if self.fancy:
                self._open_bar(step)
        log_now = not (step + 1) % self.log_every or step + 1 == self.total
        if self._bar is not None:
            # reading the loss synchronises with the device: only every log_every steps
            fields = {"info": self.summary(metrics, short=True)} if log_now else {}
            self._bar.update(self._task, completed=step + 1, **fields)
            self._bar.refresh()
            if step + 1 == self.total:
                self.close()
            return
        if not log_now:
            return
        done = step + 1 - self.first_step
        elapsed = time.perf_counter() - self.start
        left = elapsed / max(done, 1) * (self.total - step - 1)
        print(f"step {step + 1}/{self.total}  {self.summary(metrics)}  left {left:.0f}s", file=self.stream, flush=True)

    @staticmethod
    def summary(metrics: dict, short: bool = False) -> str:
        """loss (and its parts when there are several), lr, images/s."""
        parts = {k.removeprefix("loss/"): v for k, v in metrics.items() if k.startswith("loss/")}
        losses = " (" + " ".join(f"{k}={float(v):.4f}" for k, v in parts.items()) + ")" if len(parts) > 1 else ""
        lr = "" if short else f"  lr={metrics['lr']:.2e}"
        return f"loss={float(metrics['loss']):.4f}{losses}{lr}  {float(metrics['images_per_s']):.0f} img/s"

    def on_eval(self, trainer, step: int, results: dict[str, dict[str, float]]) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for metrics in results.values() for k, v in metrics.items())
        initial = all(k.endswith("_init") for metrics in results.values() for k in metrics)
        self._print(f"eval {'before training' if initial else f'after step {step + 1}'}: {shown}")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
