"""From a pipeline file to a finished, tracked run: every stage trained (or reused),
checkpointed, resumable, under one or several processes.

Validation and construction live in :mod:`graphssl.build`; this module adds
training, MLflow tracking, checkpoints, signals and distribution.
"""
from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import torch
import yaml
from torch import nn

from graphssl.build import (Prepared, build_modules, check_plan, dry_run, load_data, make_context,  # noqa: F401
                            prepare, prepare_loaded, resolve_device, seed_everything)  # (re-exported)
from graphssl.checkpoint import CheckpointError, CheckpointHook, full_state, restore
from graphssl.checkpoint import load as load_checkpoint
from graphssl.checkpoint import run_dir as checkpoint_run_dir
from graphssl.distributed import World, barrier, broadcast, parameter_checksums, teardown
from graphssl.distributed import setup as setup_world
from graphssl.errors import PipelineError
from graphssl.executor import Executor
from graphssl.flops import node_params, run_params
from graphssl.hooks import ConsoleHook, TrackingHook
from graphssl.optim import build_optimizer
from graphssl.stages import ModuleLoader, Plan, Stage, plan_pipeline, save_modules
from graphssl.tracking import NullTracker, Tracker, flatten
from graphssl.train import NonFiniteLoss, Trainer


def find_reusable(tracker: Tracker, stage: Stage) -> str | None:
    """A finished run of a stage with the same fingerprint, if the store has one."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`graphssl.fingerprint` = '{stage.fingerprint}' and attributes.status = 'FINISHED'",
        max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def evaluation_metrics(tracker: Tracker, run_id: str, stage: Stage) -> dict[str, float]:
    """The final evaluation a finished stage run logged (for a reused stage)."""
    logged = tracker.client.get_run(run_id).data.metrics
    names = {node.config.metric + suffix for node in stage.prepared.spec.nodes.values()
             if node.role == "evaluator" for suffix in ("", "_init")}
    return {k: v for k, v in logged.items() if k in names}


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


def train_stage(stage: Stage, plan: Plan, tracker: Tracker, run_id: str, artifacts: dict[str, Path], ckpt_dir: Path,
                device: torch.device, log=print, resume: dict | None = None,
                should_stop=lambda: False, parent_run_id: str | None = None,
                world: World = World()) -> tuple[Path, dict[str, float]]:
    """Train one stage under the MLflow run ``run_id``; returns its modules file and final evaluation.

    With ``resume`` (a training state this stage wrote), training continues
    from its step in the same MLflow runs.
    """
    prepared = stage.prepared
    cfg = prepared.cfg
    seed_everything(cfg.seed)
    data = load_data(prepared, device, world=world)
    modules = build_modules(prepared, make_context(prepared, data, device, ModuleLoader(plan, stage.name, artifacts, device)))
    if world.distributed:  # same initial weights everywhere, different augmentations per rank
        torch.manual_seed(cfg.seed + 1000003 * world.rank)
    if cfg.train.compile:
        for module in modules.values():
            if any(True for _ in module.parameters()):
                module.compile()
    executor = Executor(prepared.spec, modules)
    optimizer = build_optimizer(modules, cfg.train, device)
    forward = None
    if world.distributed and cfg.train.fsdp:
        shard_modules(prepared, modules)
        optimizer = build_optimizer(modules, cfg.train, device)  # over the sharded parameters
    elif world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(executor, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=bool(prepared.unused_parameters))

    if resume is not None:
        node_runs = resume["node_runs"]
        for node_run in node_runs.values():
            tracker.client.update_run(node_run, "RUNNING")
    else:
        node_runs = {}
        for name, node in prepared.spec.nodes.items():
            node_runs[name] = tracker.create_run(name, {"graphssl.node": name, "graphssl.component": node.type_name,
                                                        **({"graphssl.call": node.call} if node.call else {})}, parent=run_id)
            params = flatten(node.config.model_dump(mode="json")) if node.config is not None else {}
            if prepared.flops is not None:
                params.update(node_params(prepared.flops, name, world.size))
            if params:
                tracker.log_params(node_runs[name], params)
        params = flatten({k: v for k, v in prepared.loaded.raw.items()})
        if prepared.flops is not None:  # the counted cost, and the steps a budget resolved to
            params.update(run_params(prepared.flops, world.size, device))
        if prepared.budget is not None:
            params["train.steps"] = str(cfg.train.steps)
        tracker.log_params(run_id, params)
        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / "pipeline.yaml"
            resolved.write_text(yaml.safe_dump(prepared.loaded.raw, sort_keys=False))
            tracker.log_artifact(run_id, resolved)
            from graphssl.picture import draw_graph

            draw_graph(prepared.spec, Path(tmp) / "graph.png", title=cfg.name)
            tracker.log_artifact(run_id, Path(tmp) / "graph.png")

    final: dict[str, float] = dict(resume["final"]) if resume else {}
    state_path = ckpt_dir / f"{stage.name}.state.pt"
    meta = {"stage": stage.name, "fingerprint": stage.fingerprint, "run_id": run_id, "node_runs": node_runs,
            "final": final, "parent_run_id": parent_run_id or run_id}
    checkpoints = CheckpointHook(state_path, cfg.train.checkpoint_every, meta)
    hooks = [TrackingHook(tracker, run_id, node_runs, cfg.train.log_every, cfg.train.flush_seconds),
             ConsoleHook(cfg.train.steps, cfg.train.log_every)]
    trainer = Trainer(cfg, executor, optimizer, data, (hooks if world.main else []) + [checkpoints], world, forward,
                      flops_per_step=prepared.flops.total * world.size if prepared.flops is not None else None)
    status = "FAILED"
    try:
        if resume is not None:
            start = restore(trainer, resume)
            log(f"stage {stage.name}: resuming at step {start}/{cfg.train.steps}")
        else:
            start = 0
            for metrics in trainer.evaluate(0, suffix="_init").values():
                final.update(metrics)
        try:
            finished = trainer.fit(start, should_stop)
        except NonFiniteLoss as e:
            node, value = next(iter(e.bad.items()))
            tracker.set_tags(run_id, {"graphssl.failure": "non-finite loss", "graphssl.failure.step": e.step,
                                      "graphssl.failure.node": node, "graphssl.failure.value": value})
            kept = f"; the last good checkpoint is {state_path}" if state_path.exists() else ""
            raise NonFiniteLoss(e.step, e.losses, note=kept) from None
        if not finished:
            checkpoints.save(trainer, trainer.step)
            status = "KILLED"
            raise Stopped(trainer.step, state_path)
        for metrics in trainer.evaluate(cfg.train.steps - 1).values():
            final.update(metrics)
        checkpoints.save(trainer, cfg.train.steps)
        modules_path = ckpt_dir / f"{stage.name}.modules.pt"
        sharded = cfg.train.fsdp and world.distributed
        checksums = [] if sharded else parameter_checksums(executor, world)  # shards differ by design
        states = full_state(trainer)[0] if sharded else None
        if world.main:
            save_modules(modules, prepared, modules_path, states)
            tracker.log_artifact(run_id, modules_path, "model")
            tracker.log_artifact(run_id, state_path, "checkpoints")
            if world.distributed and checksums:
                in_sync = len(set(checksums)) == 1
                tracker.set_tags(run_id, {"graphssl.world_size": world.size, "graphssl.global_batch": trainer.global_batch,
                                          "graphssl.ranks_in_sync": str(in_sync).lower(),
                                          "graphssl.param_checksums": ",".join(f"{c:.10e}" for c in checksums)})
                if not in_sync:
                    log(f"warning: the {world.size} processes ended with different parameters: {checksums}")
        barrier(world)
        status = "FINISHED"
    finally:
        if not tracker.flush():
            dumped = tracker.dump_pending(ckpt_dir / "pending_metrics.jsonl")
            log(f"warning: the tracking store is unreachable; {dumped} holds the metrics it did not receive")
        for node_run in node_runs.values():
            tracker.end_run(node_run, status)
    return modules_path, final


def shard_modules(prepared: Prepared, modules: dict[str, nn.Module]) -> None:
    """FSDP2: shard each module's ``fsdp_units()`` (encoder blocks), then the module itself."""
    from torch.distributed.fsdp import fully_shard

    owners = [n for n, node in prepared.spec.nodes.items() if node.role == "owner"]
    if owners:
        raise PipelineError([prepared.loaded.problem("train.fsdp", f"FSDP2 sharding does not support modules that keep copies "
                                                                   f"of others yet ({', '.join(owners)}); use DDP (train.fsdp=false)")],
                            prepared.source)
    for module in modules.values():
        if not any(p.requires_grad for p in module.parameters()):
            continue
        for unit in getattr(module, "fsdp_units", lambda: [])():
            fully_shard(unit)
        fully_shard(module)


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


def find_resume_state(resume: str, tracker: Tracker, tmp: Path) -> tuple[str, Path]:
    """(parent run id, folder of its stage states) from a run id or a checkpoint path."""
    path = Path(resume)
    if path.exists():
        folder = path if path.is_dir() else path.parent
        states = sorted(folder.glob("*.state.pt"))
        if not states:
            raise CheckpointError(f"no *.state.pt checkpoint in {folder}")
        return load_checkpoint(states[0])["parent_run_id"], folder
    folder = checkpoint_run_dir(resume)
    if folder.is_dir() and any(folder.glob("*.state.pt")):
        return resume, folder
    try:
        downloaded = Path(tracker.client.download_artifacts(resume, "checkpoints", str(tmp)))
    except Exception:
        raise CheckpointError(f"--resume {resume}: no checkpoint folder {folder} and no checkpoint artifact in that run") from None
    return resume, downloaded


def run(path: str | Path, overrides: list[str] = (), tracking_uri: str | None = None, experiment: str | None = None,
        run_name: str | None = None, force: bool = False, resume: str | None = None, log=print) -> str:
    """Train every stage of a pipeline (reusing unchanged ones); returns the MLflow parent run id.

    ``resume``: a parent run id (or a checkpoint folder/file) whose last checkpoint to continue from.
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
            log(f"{f'stage {name}: ' if plan.staged else ''}{stage.prepared.budget.describe()}")

    tracker = Tracker(tracking_uri, experiment or "graphssl") if world.main else NullTracker()
    with tempfile.TemporaryDirectory() as tmp, GracefulStop() as stop:
        states: dict[str, dict] = {}
        if resume:
            parent, folder = broadcast(find_resume_state(resume, tracker, Path(tmp)) if world.main else None, world)
            for state_file in folder.glob("*.state.pt"):
                state = load_checkpoint(state_file)
                states[state["stage"]] = state
            for name, state in states.items():
                if name not in plan.stages or plan.stages[name].fingerprint != state["fingerprint"]:
                    raise CheckpointError(f"--resume {resume}: stage {name!r} of that run had another config; "
                                          "resume with the same pipeline and overrides")
            tracker.client.update_run(parent, "RUNNING")
            log(f"resuming run {parent} ({plan.name})")
        else:
            types = sorted({n.type_name for s in plan.stages.values() for n in s.prepared.spec.nodes.values()})
            tags = {"graphssl.pipeline": plan.name, "graphssl.components": ",".join(types),
                    **{f"graphssl.uses.{t}": "true" for t in types}}
            if not plan.staged:
                tags["graphssl.fingerprint"] = next(iter(plan.stages.values())).fingerprint
            tags.update(provenance(plan.source))
            parent = broadcast(tracker.create_run(run_name or plan.name, tags), world)
            if plan.staged and world.main:  # the whole resolved file, so the run can be repeated from the UI
                resolved = Path(tmp) / "pipeline.yaml"
                resolved.write_text(yaml.safe_dump(plan.loaded.raw, sort_keys=False))
                tracker.log_artifact(parent, resolved)
            log(f"run {parent} ({plan.name}) -> {tracker.uri}")
        ckpt_dir = checkpoint_run_dir(parent)
        status = "FAILED"
        artifacts: dict[str, Path] = {}
        try:
            final: dict[str, float] = {}
            for name, stage in plan.stages.items():
                state = states.get(name)
                if state is not None and state["step"] >= stage.prepared.cfg.train.steps and (ckpt_dir / f"{name}.modules.pt").exists():
                    artifacts[name], final = ckpt_dir / f"{name}.modules.pt", state["final"]
                    continue  # finished before the interruption
                if not plan.staged:
                    artifacts[name], final = train_stage(stage, plan, tracker, parent, artifacts, ckpt_dir, device, log,
                                                         state, stop, parent, world)
                    continue
                reusable = broadcast(None if (force or state or not world.main) else find_reusable(tracker, stage), world)
                if reusable:
                    ckpt_dir.mkdir(parents=True, exist_ok=True)
                    downloaded = None
                    if world.main:  # where MLflow puts a single file depends on the artifact store: use its answer
                        downloaded = tracker.client.download_artifacts(reusable, f"model/{name}.modules.pt", str(ckpt_dir))
                    barrier(world)
                    artifacts[name] = Path(broadcast(downloaded, world))
                    log(f"stage {name}: unchanged config and inputs, reusing run {reusable} (use --force to retrain)")
                    stage_run = tracker.create_run(f"{name} (reused)", {"graphssl.stage": name, "graphssl.reused_from": reusable},
                                                   parent=parent)
                    tracker.set_tags(parent, {f"graphssl.stage.{name}.run": reusable})
                    tracker.end_run(stage_run)
                    final = evaluation_metrics(tracker, reusable, stage) if world.main else {}
                    continue
                if state is not None:
                    stage_run = state["run_id"]
                    tracker.client.update_run(stage_run, "RUNNING")
                else:
                    log(f"stage {name}: training ({stage.prepared.cfg.train.steps} steps)")
                    stage_run = broadcast(tracker.create_run(name, {"graphssl.stage": name, "graphssl.fingerprint": stage.fingerprint,
                                                                    "graphssl.pipeline": plan.name}, parent=parent), world)
                stage_status = "FAILED"
                try:
                    artifacts[name], final = train_stage(stage, plan, tracker, stage_run, artifacts, ckpt_dir, device, log,
                                                         state, stop, parent, world)
                    stage_status = "FINISHED"
                except Stopped:
                    stage_status = "KILLED"
                    raise
                finally:
                    tracker.end_run(stage_run, stage_status)
                tracker.set_tags(parent, {f"graphssl.stage.{name}.run": stage_run})
            for key, value in final.items() if plan.staged else ():  # the last stage's evaluation is the pipeline's
                tracker.metric(parent, key, value, 0)
            tracker.flush()
            status = "FINISHED"
        except (Stopped, KeyboardInterrupt) as e:
            status = "KILLED"
            if isinstance(e, Stopped):
                log(f"{e}; continue with: graphssl run {plan.source} --resume {parent}")
            raise
        finally:
            tracker.end_run(parent, status)
            teardown()
    return parent
