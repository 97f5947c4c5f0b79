"""Console progress: a rich bar on a terminal, plain lines in logs; the summary at the end of a run."""
from __future__ import annotations

import atexit
import os
import sys
import time

from graphssl.hooks import RunHook




class ConsoleHook(RunHook):
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

    def on_eval_start(self, trainer, step: int, evaluators: list[str], initial: bool) -> None:
        when = "before training" if initial else f"after step {step + 1}"
        limit = trainer.cfg.eval.limit if trainer is not None else None
        size = f" on {limit} + {limit} images" if limit else ""
        self._print(f"evaluating {', '.join(evaluators)} {when}{size} ...")

    def on_eval(self, trainer, step: int, results: dict[str, dict[str, float]]) -> None:
        shown = ", ".join(f"{k}={v:.4f}" for metrics in results.values() for k, v in metrics.items())
        initial = all(k.endswith("_init") for metrics in results.values() for k in metrics)
        self._print(f"eval {'before training' if initial else f'after step {step + 1}'}: {shown}")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def evaluation_table(final: dict[str, float]) -> list[str]:
    """Every evaluator's value at initialisation and at the end, side by side (``final``: evaluator metrics)."""
    names = sorted({k.removesuffix("_init") for k in final})
    if not names:
        return []
    width = max(len(n) for n in names)
    lines = [f"  {'metric':<{width}}  {'at init':>8}  {'at end':>8}  {'change':>8}"]
    for name in names:
        init, end = final.get(f"{name}_init"), final.get(name)
        change = f"{end - init:+8.4f}" if init is not None and end is not None else f"{'-':>8}"
        fmt = lambda v: f"{v:8.4f}" if v is not None else f"{'-':>8}"  # noqa: E731
        lines.append(f"  {name:<{width}}  {fmt(init)}  {fmt(end)}  {change}")
    return lines
