"""Run hooks: what the runner and the trainer call at each run, stage, step and evaluation.

Tracking (the ``Tracking`` interface below; MLflow in graphssl.mlflow_tracking), console
progress (graphssl.console) and checkpoints (graphssl.checkpoint) are hooks; the defaults do nothing, so a hook
overrides only what it needs. Node-level hooks live with the executor
(``graphssl.executor.NodeHook``).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from graphssl.plan import Plan, Stage
    from graphssl.train import Trainer


class RunHook:
    """Called around a stage's training; every method is optional."""

    def on_stage_start(self, stage: "Stage", trainer: "Trainer", resumed: dict[str, Any] | None) -> None:
        """Before the first step (or the first step after ``--resume``, with the checkpoint's state)."""

    def on_step_start(self, trainer: "Trainer", step: int) -> None:
        pass

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, Any]) -> None:
        """``metrics`` may hold device tensors: read them only when needed (reading synchronises)."""

    def on_eval_start(self, trainer: "Trainer", step: int, evaluators: list[str], initial: bool) -> None:
        pass

    def on_eval(self, trainer: "Trainer", step: int, results: dict[str, dict[str, float]]) -> None:
        pass

    def on_checkpoint(self, trainer: "Trainer", path: Path, next_step: int) -> None:
        pass

    def on_stage_end(self, stage: "Stage", trainer: "Trainer", status: str, modules: Path | None,
                     final: dict[str, float]) -> None:
        """After the stage: ``status`` FINISHED, KILLED or FAILED; ``modules``: the trained modules file."""


class Hooks(RunHook):
    """Several hooks called in order, as one."""

    def __init__(self, hooks: list[RunHook]):
        self.hooks = list(hooks)

    def __iter__(self):
        return iter(self.hooks)


def _fan_out(name: str):
    def call(self, *args, **kwargs):
        for hook in self.hooks:
            getattr(hook, name)(*args, **kwargs)
    call.__name__ = name
    return call


for _name in [n for n in vars(RunHook) if n.startswith("on_")]:
    setattr(Hooks, _name, _fan_out(_name))


class Tracking(RunHook):
    """Where runs are recorded; this base records nothing."""

    uri = ""

    def start_run(self, plan: "Plan", run_name: str | None, tags: dict[str, str]) -> str:
        return ""

    def resume_run(self, plan: "Plan", run_id: str) -> None:
        pass

    def finished_stage(self, stage: str) -> str | None:
        """The run of a stage that finished earlier in the current (resumed) run, if any."""
        return None

    def find_reusable(self, stage: "Stage") -> str | None:
        """A finished run of a stage with the same fingerprint, if the store has one."""
        return None

    def fetch_modules(self, stage_run: str, stage: str, folder: Path) -> Path | None:
        return None

    def mark_reused(self, stage: "Stage", stage_run: str) -> dict[str, float]:
        """Record that ``stage`` reuses ``stage_run``; returns that run's final evaluation."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint needs to continue the current stage's runs."""
        return {}

    def tag_stage(self, tags: dict[str, Any]) -> None:
        pass

    def end_run(self, status: str, final: dict[str, float], step: int, pending_dir: Path | None = None) -> None:
        pass

    def where(self, run_id: str) -> list[str]:
        """Lines that say how to open the run."""
        return []
