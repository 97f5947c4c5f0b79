"""Resumable training state: written atomically, restored exactly.

A checkpoint holds every node's module state (EMA copies, centers and
codebooks included), the optimiser, the RNG states, the next step (the batch
order is a function of seed and step, so that is the data position), the
evaluation so far and the tracking plugin's run ids to continue. It holds only
tensors and plain values, and is read with ``torch.load(weights_only=True)``.

Checkpoints are written every ``train.checkpoint_every`` steps and when a run is
stopped, as ``checkpoints/RUN_ID/STAGE.stepN.state.pt``; the newest
``train.keep_checkpoints`` of a stage are kept.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from graphssl.hooks import RunHook
from graphssl.io import WriteError, atomic_write
from graphssl.names import identifier_problem, run_id_problem

CHECKPOINT_ROOT = "checkpoints"


class CheckpointError(Exception):
    pass


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically; a failed write (a full disk, ...) leaves the previous one intact."""
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except WriteError as e:
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no earlier checkpoint exists"
        raise CheckpointError(f"{e}; {kept}") from None


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's state, read without running any code it might carry, and checked for its shape
    (a crafted file's stage or run id must not name a folder outside ``checkpoints/``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        reason = "it holds objects other than tensors and plain values" if "weights_only" in str(e) else str(e).splitlines()[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {reason}") from None
    problem = state_problem(state)
    if problem:
        raise CheckpointError(f"cannot use checkpoint {path}: {problem}")
    return state


def state_problem(state: Any) -> str | None:
    """What is wrong with a loaded checkpoint's structure, or None (the tensors are checked when loaded)."""
    if not isinstance(state, dict):
        return "it is not a graphssl checkpoint"
    missing = [k for k in ("step", "stage", "run_id", "fingerprint", "modules", "optimizer", "rng") if k not in state]
    if missing:
        return f"it is not a graphssl checkpoint (no {', '.join(missing)})"
    if not isinstance(state["step"], int) or state["step"] < 0:
        return f"its step {state['step']!r} is not a step"
    return identifier_problem(state["stage"], "its stage name") or run_id_problem(state["run_id"])


def checkpoint_path(folder: Path, stage: str, next_step: int) -> Path:
    return folder / f"{stage}.step{next_step}.state.pt"


def latest_checkpoints(folder: Path) -> dict[str, Path]:
    """The newest checkpoint of each stage in ``folder``: {stage: path}."""
    newest: dict[str, tuple[int, Path]] = {}
    for path in folder.glob("*.state.pt"):
        stage, _, step = path.name.removesuffix(".state.pt").rpartition(".step")
        if stage and step.isdigit() and int(step) >= newest.get(stage, (-1, path))[0]:
            newest[stage] = (int(step), path)
    return {stage: path for stage, (_, path) in newest.items()}


def run_dir(run_id: str) -> Path:
    """``checkpoints/RUN_ID``: a run id never names a folder elsewhere."""
    problem = run_id_problem(run_id)
    if problem:
        raise CheckpointError(f"no checkpoints for {problem}")
    return Path(CHECKPOINT_ROOT) / run_id


def gathered_rng(world) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (collective under torchrun)."""
    from graphssl.distributed import all_gather_objects

    return all_gather_objects(rng_state(), world)


def restore(trainer, state: dict[str, Any]) -> int:
    """Load a training state into a freshly built trainer; returns the step to continue from."""
    load_full_state(trainer, state["modules"], state["optimizer"])
    ranks = state["rng"]
    if len(ranks) != trainer.world.size:
        raise CheckpointError(f"the checkpoint was written by {len(ranks)} processes; resume it with as many")
    set_rng_state(ranks[trainer.world.rank])
    return int(state["step"])


class CheckpointHook(RunHook):
    """Saves the training state every ``every`` steps (and on demand), keeping the newest ``keep``;
    every rank calls it, rank 0 writes. Never from a non-finite state."""

    def __init__(self, folder: Path, stage: str, every: int | None, keep: int, meta: dict[str, Any]):
        self.folder, self.stage, self.every, self.keep, self.meta = folder, stage, every, keep, meta

    def save(self, trainer, next_step: int) -> Path:
        trainer.check_finite(parameters=True)
        rng = gathered_rng(trainer.world)
        modules, optimizer = full_state(trainer)
        path = checkpoint_path(self.folder, self.stage, next_step)
        if trainer.world.main:
            check_finite_state(trainer, {"modules": modules, "optimizer": optimizer})
            state = {"step": next_step, "modules": modules, "optimizer": optimizer, "rng": rng, **self.meta}
            save_atomic(state, path)
            self._prune()
        trainer.hooks.on_checkpoint(trainer, path, next_step)
        return path

    def _prune(self) -> None:
        mine = sorted((int(p.name.removesuffix(".state.pt").rpartition(".step")[2]), p)
                      for p in self.folder.glob(f"{self.stage}.step*.state.pt")
                      if p.name.removesuffix(".state.pt").rpartition(".step")[2].isdigit())
        for _, old in mine[:-self.keep]:
            old.unlink(missing_ok=True)

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if self.every and (step + 1) % self.every == 0 and step + 1 < trainer.cfg.train.steps:
            self.save(trainer, step + 1)


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a nested state that hold a NaN or an infinity."""
    if isinstance(state, torch.Tensor):
        return [prefix] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [name for k, v in items for name in non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]


def check_finite_state(trainer, state: dict[str, Any]) -> None:
    """Refuse to write a checkpoint with a non-finite tensor (the optimiser's moments too): the previous one stays."""
    bad = non_finite_tensors(state)
    if bad:
        from graphssl.train import NonFiniteLoss

        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteLoss(trainer.step, {bad[0]: float("nan")},
                            note=f" (not finite in the training state: {shown}; no checkpoint written)")


def full_state(trainer) -> tuple[dict, dict]:
    """Module and optimiser state as whole tensors (gathered from every rank when FSDP shards them)."""
    if not trainer.cfg.train.fsdp or not trainer.world.distributed:
        return trainer.executor.state_dict(), trainer.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(trainer.executor, trainer.optimizer, options=options)


def load_full_state(trainer, modules: dict, optimizer: dict) -> None:
    if not trainer.cfg.train.fsdp or not trainer.world.distributed:
        trainer.executor.load_state_dict(modules)
        trainer.optimizer.load_state_dict(optimizer)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(trainer.executor, trainer.optimizer, model_state_dict=modules, optim_state_dict=optimizer,
                   options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
