"""From a pipeline file to a finished run: every stage trained (or reused), tracked,
checkpointed and resumable, under one or several processes.

Validation and construction live in :mod:`graphssl.plan` and :mod:`graphssl.build`;
MLflow lives in the tracking plugin (:mod:`graphssl.mlflow_tracking`). This module is
the loop over a plan's stages and what surrounds a stage's training.
"""
from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import torch

from graphssl.build import build_trainer, resolve_device
from graphssl.checkpoint import CheckpointError, CheckpointHook, full_state, latest_checkpoints, restore
from graphssl.checkpoint import load as load_checkpoint
from graphssl.checkpoint import run_dir as checkpoint_run_dir
from graphssl.console import ConsoleHook, evaluation_table
from graphssl.distributed import World, barrier, broadcast, parameter_checksums, teardown
from graphssl.distributed import setup as setup_world
from graphssl.artifacts import save_modules
from graphssl.hooks import Hooks, Tracking
from graphssl.mlflow_tracking import MlflowTracking
from graphssl.plan import Plan, Stage, check_plan, plan_pipeline
from graphssl.train import NonFiniteLoss


def provenance(source: str) -> dict[str, str]:
    """Package versions and the git commit of the pipeline file, so a run can be repeated exactly."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    tags = {"graphssl.python": platform.python_version()}
    for package in ("graphssl", "torch", "timm", "mlflow", "pydantic", "omegaconf", "networkx"):
        try:
            tags[f"graphssl.version.{package}"] = version(package)
        except PackageNotFoundError:
            pass
    try:
        folder = str(Path(source).resolve().parent)
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain"], capture_output=True, text=True, timeout=5)
            tags["graphssl.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


class Stopped(Exception):
    """Training was stopped by a signal after a checkpoint was written."""

    def __init__(self, step: int, checkpoint: Path):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"stopped after step {step}; checkpoint {checkpoint}")


class GracefulStop:
    """SIGTERM or Ctrl-C: finish the current step, write a checkpoint, mark the run KILLED."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        def request(signum, frame):
            if self.requested:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            self.requested = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, request)
            except ValueError:  # not in the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def __call__(self) -> bool:
        return self.requested


def train_stage(stage: Stage, plan: Plan, tracking: Tracking, trained: dict[str, Path], run_id: str, folder: Path,
                device: torch.device, log=print, resume: dict | None = None, should_stop=lambda: False,
                world: World = World()) -> tuple[Path, dict[str, float]]:
    """Train one stage; returns its trained modules file (in ``folder``) and its final evaluation.

    With ``resume`` (a checkpoint this stage wrote), training continues from its step in the same runs.
    """
    cfg = stage.prepared.cfg
    trainer = build_trainer(stage, plan, device, world, trained)
    ckpt_dir = checkpoint_run_dir(run_id)
    meta = {"stage": stage.name, "fingerprint": stage.fingerprint, "run_id": run_id, "final": {}}
    checkpoints = CheckpointHook(ckpt_dir, stage.name, cfg.train.checkpoint_every, cfg.train.keep_checkpoints, meta)
    hooks = [tracking, ConsoleHook(cfg.train.steps, cfg.train.log_every)] if world.main else []
    trainer.hooks = Hooks(hooks + [checkpoints])
    trainer.hooks.on_stage_start(stage, trainer, resume)
    meta["tracking"] = tracking.checkpoint_state()
    final: dict[str, float] = meta["final"]
    status, modules = "FAILED", None
    try:
        if resume is not None:
            start = restore(trainer, resume)
            final.update(resume["final"])
            log(f"stage {stage.name}: resuming at step {start}/{cfg.train.steps}")
        else:
            start = 0
            for metrics in trainer.evaluate(0, suffix="_init").values():
                final.update(metrics)
        try:
            finished = trainer.fit(start, should_stop)
        except NonFiniteLoss as e:
            node, value = next(iter(e.bad.items()))
            tracking.tag_stage({"graphssl.failure": "non-finite loss", "graphssl.failure.step": e.step,
                                "graphssl.failure.node": node, "graphssl.failure.value": value})
            kept = latest_checkpoints(ckpt_dir).get(stage.name) if ckpt_dir.is_dir() else None
            raise NonFiniteLoss(e.step, e.losses, note=f"; the last good checkpoint is {kept}" if kept else "") from None
        if not finished:
            path = checkpoints.save(trainer, trainer.step)
            status = "KILLED"
            raise Stopped(trainer.step, path)
        for metrics in trainer.evaluate(cfg.train.steps - 1).values():
            final.update(metrics)
        modules = _save_trained(stage, trainer, folder, world)
        if world.distributed and not cfg.train.fsdp:  # shards differ by design
            checksums = parameter_checksums(trainer.executor, world)
            in_sync = len(set(checksums)) == 1
            tracking.tag_stage({"graphssl.world_size": world.size, "graphssl.ranks_in_sync": str(in_sync).lower(),
                                "graphssl.param_checksums": ",".join(f"{c:.10e}" for c in checksums)})
            if not in_sync:
                log(f"warning: the {world.size} processes ended with different parameters: {checksums}")
        status = "FINISHED"
    finally:
        trainer.hooks.on_stage_end(stage, trainer, status, modules, final)
    return modules, final


def _save_trained(stage: Stage, trainer, folder: Path, world: World) -> Path:
    """The stage's trained modules, written once: every process has them (rank 0's file under FSDP)."""
    sharded = trainer.cfg.train.fsdp and world.distributed
    path = folder / f"{stage.name}.modules.pt"
    if not sharded:
        save_modules(trainer.executor.components(), stage.prepared, path)
        return path
    states = full_state(trainer)[0]  # gathered on rank 0
    if world.main:
        save_modules(trainer.executor.components(), stage.prepared, path, states)
    barrier(world)
    return Path(broadcast(str(path), world))


def find_resume_state(resume: str) -> tuple[str, dict[str, dict]]:
    """(run id, {stage: newest checkpoint}) from a run id or a checkpoint folder or file."""
    path = Path(resume)
    folder = path if path.is_dir() else path.parent if path.exists() else checkpoint_run_dir(resume)
    found = latest_checkpoints(folder) if folder.is_dir() else {}
    if path.is_file():
        found = {load_checkpoint(path)["stage"]: path}
    if not found:
        raise CheckpointError(f"--resume {resume}: no checkpoint (*.state.pt) in {folder}")
    states = {stage: load_checkpoint(p) for stage, p in found.items()}
    return next(iter(states.values()))["run_id"], states


def run(path: str | Path, overrides: list[str] = (), tracking_uri: str | None = None, experiment: str | None = None,
        run_name: str | None = None, force: bool = False, resume: str | None = None, log=print,
        register: str | None = None, system_metrics: bool = False) -> str:
    """Train every stage of a pipeline (reusing unchanged ones that later stages need); returns the run id.

    ``resume``: a run id (or a checkpoint folder/file) whose newest checkpoints to continue from;
    ``register``: a registered-model name for the trained encoder; ``system_metrics``: MLflow's, on the run.
    """
    plan = plan_pipeline(path, overrides)
    first = next(iter(plan.stages.values())).prepared
    resolve_device(first.cfg.device)  # a clear error when cuda is asked for and missing
    world, device = setup_world(first.cfg.device)
    if not world.main:
        log = lambda *args, **kwargs: None  # noqa: E731 - rank 0 speaks for all
    torch.use_deterministic_algorithms(first.cfg.deterministic)
    for stage in plan.stages.values():
        for w in stage.prepared.warnings:
            log(w.format(plan.source))
    check_plan(plan, device, world)
    for name, stage in plan.stages.items():
        if stage.prepared.budget is not None:
            log(f"stage {name}: {stage.prepared.budget.describe()}")

    tracking = (MlflowTracking(tracking_uri, experiment or "graphssl", log, register, system_metrics)
                if world.main else Tracking())
    states: dict[str, dict] = {}
    if resume:
        run_id, states = broadcast(find_resume_state(resume) if world.main else None, world)
        for name, state in states.items():
            if name not in plan.stages or plan.stages[name].fingerprint != state["fingerprint"]:
                raise CheckpointError(f"--resume {resume}: stage {name!r} of that run had another config; "
                                      "resume with the same pipeline and overrides")
        tracking.resume_run(plan, run_id)
        log(f"resuming run {run_id} ({plan.name})")
    else:
        run_id = broadcast(tracking.start_run(plan, run_name, provenance(plan.source)), world)
        log(f"run {run_id} ({plan.name}) -> {tracking.uri}")
    status, final = "FAILED", {}
    with tempfile.TemporaryDirectory() as tmp, GracefulStop() as stop:
        trained: dict[str, Path] = {}
        try:
            for name, stage in plan.stages.items():
                state = states.get(name)
                earlier = broadcast(tracking.finished_stage(name) if resume and world.main and state is None else None, world)
                reusable = None
                if not (force or state or earlier) and plan.is_needed(name):
                    reusable = broadcast(tracking.find_reusable(stage) if world.main else None, world)
                if earlier or reusable:
                    trained[name] = _fetch(tracking, earlier or reusable, name, Path(tmp), world)
                    if reusable:
                        log(f"stage {name}: unchanged config and inputs, reusing run {reusable} (use --force to retrain)")
                        final = tracking.mark_reused(stage, reusable)
                    continue
                if state is None:
                    log(f"stage {name}: training ({stage.prepared.cfg.train.steps} steps)")
                trained[name], final = train_stage(stage, plan, tracking, trained, run_id, Path(tmp), device, log,
                                                   state, stop, world)
            status = "FINISHED"
        except (Stopped, KeyboardInterrupt) as e:
            status = "KILLED"
            if isinstance(e, Stopped):
                log(f"{e}; continue with: graphssl run {plan.source} --resume {run_id}")
            raise
        finally:
            tracking.end_run(status, final, plan.last.prepared.cfg.train.steps - 1, checkpoint_run_dir(run_id))
            teardown()
    for line in evaluation_table(final) + tracking.where(run_id):
        log(line)
    return run_id


def _fetch(tracking: Tracking, stage_run: str, stage: str, folder: Path, world: World) -> Path:
    """An earlier stage run's modules file, downloaded by rank 0 and shared with the other processes."""
    path = tracking.fetch_modules(stage_run, stage, folder) if world.main else None
    barrier(world)
    return Path(broadcast(str(path), world))
