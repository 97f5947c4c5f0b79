"""Resumable training state: written atomically, restored exactly.

A checkpoint holds every node's module state (EMA copies, centers and
codebooks included), the optimiser, the RNG states, the next step (the batch
order is a function of seed and step, so that is the data position), the
evaluation so far and the MLflow run ids to continue.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

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
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A failed write (disk full, ...) removes the temporary file and leaves the
    previous checkpoint at ``path`` intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {path}: {e}; {kept}") from None


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def run_dir(run_id: str) -> Path:
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


class CheckpointHook:
    """Saves the training state every ``every`` steps (and on demand); every rank calls it, rank 0 writes."""

    def __init__(self, path: Path, every: int | None, meta: dict[str, Any]):
        self.path, self.every, self.meta = path, every, meta

    def save(self, trainer, next_step: int) -> Path:
        rng = gathered_rng(trainer.world)
        modules, optimizer = full_state(trainer)
        if trainer.world.main:
            state = {"step": next_step, "modules": modules, "optimizer": optimizer, "rng": rng, **self.meta}
            save_atomic(state, self.path)
        return self.path

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        if self.every and (step + 1) % self.every == 0 and step + 1 < trainer.cfg.train.steps:
            self.save(trainer, step + 1)


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
