"""Validation and construction: from a pipeline file to built modules, checked end to end.

prepare_loaded(): validate every section and the graph (no tensors);
build_modules():  construct the modules in dependency order;
dry_run():        one training step on a real batch (the per-process batch): every node's inputs and
                  outputs checked against its port types (graphssl.shapes), its FLOPs counted
                  (graphssl.flops); a train.budget then sets train.steps;
build_trainer():  everything a stage trains with (data, modules, optimiser, DDP or FSDP), no hooks.
An invalid pipeline raises PipelineError before anything is trained or logged.
Planning (graphssl.plan) sits above this module, module files (graphssl.artifacts) below it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from graphssl.artifacts import ModuleLoader
from graphssl.budget import ResolvedBudget, apply_budget
from graphssl.component import BuildContext, Owner, Progress, ShardUnits, has_hook
from graphssl.config import LoadedPipeline, PipelineConfig, validate_sections
from graphssl.loading import load_yaml
from graphssl.data import Data, DatasetMissing
from graphssl.distributed import World
from graphssl.errors import PipelineError, Problem
from graphssl.executor import Executor, NodeError
from graphssl.flops import StepCounter, StepFlops
from graphssl.graph import GraphSpec, build_graph
from graphssl.instrument import ShapeTrace
from graphssl.shapes import PortChecks, PortTypeError

if TYPE_CHECKING:
    from graphssl.plan import Plan, Stage
    from graphssl.train import Trainer


@dataclass
class Prepared:
    loaded: LoadedPipeline
    cfg: PipelineConfig
    spec: GraphSpec
    warnings: list[Problem] = field(default_factory=list)
    unused_parameters: list[str] = field(default_factory=list)  # trainable but gradient-free (found by the dry run)
    flops: StepFlops | None = None  # one training step of one process, counted by the dry run
    budget: ResolvedBudget | None = None  # how train.budget set train.steps (in the dry run)

    @property
    def source(self) -> str:
        return self.loaded.path


def prepare_loaded(loaded: LoadedPipeline) -> Prepared:
    """Validate a single-stage pipeline body; raise every problem at once."""
    cfg, problems = validate_sections(loaded)
    nodes = loaded.raw.get("nodes")
    objective = loaded.raw.get("objective")
    spec = None
    if isinstance(nodes, dict):
        spec, graph_problems = build_graph(loaded, nodes, objective if isinstance(objective, dict) else {})
        # node bodies are validated per component, not by the section schema
        problems = [p for p in problems if not p.path.startswith((f"{loaded.prefix}nodes.", "nodes."))] + graph_problems
    if problems or cfg is None or spec is None:
        raise PipelineError(problems, loaded.path)
    return Prepared(loaded, cfg, spec, spec.warnings)


def prepare(path: str | Path, overrides: list[str] = ()) -> Prepared:
    """Validate a single-stage pipeline file (see stages.plan_pipeline for any pipeline)."""
    return prepare_loaded(load_yaml(path, list(overrides)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError([Problem("device", "device is cuda but no CUDA device is available (use cpu or auto)")])
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def make_context(prepared: Prepared, data: Data | None, device: torch.device, loader=None) -> BuildContext:
    cfg = prepared.cfg
    return BuildContext(image_size=cfg.data.image_size, channels=cfg.data.channels, total_steps=cfg.train.steps or 1,
                        steps_per_epoch=data.steps_per_epoch if data else 1, device=device, data=data,
                        load_module=loader or ModuleLoader(device=device))


def build_modules(prepared: Prepared, ctx: BuildContext) -> dict[str, nn.Module]:
    """Construct every module-owning node in dependency order."""
    for name in prepared.spec.build_order:
        node = prepared.spec.nodes[name]
        try:
            ctx.modules[name] = node.cls(node.config, ctx).to(ctx.device)
        except PipelineError:
            raise
        except Exception as e:  # later nodes may depend on this one: stop here
            raise PipelineError([prepared.loaded.problem(f"nodes.{name}", f"cannot build {node.type_name}: {type(e).__name__}: {e}")],
                                prepared.source) from None
    return dict(ctx.modules)


def load_data(prepared: Prepared, device: torch.device, limit: int | None = None, world: World = World()) -> Data:
    cfg = prepared.cfg
    data_cfg = cfg.data if limit is None else cfg.data.model_copy(update={"limit": limit, "batch_size": min(limit, cfg.data.batch_size)})
    try:
        return Data(data_cfg, device, cfg.seed, world.rank if limit is None else 0, world.size if limit is None else 1,
                    prepared.spec)
    except DatasetMissing as e:
        raise PipelineError([prepared.loaded.problem("data", str(e))], prepared.source) from None


def dry_run(prepared: Prepared, device: torch.device, loader=None, batch_size: int | None = None,
            world: World = World()) -> dict[str, dict[str, str]]:
    """Build fresh modules and run one training step (forward, backward, after-step updates such as EMA; no
    optimiser step) on ``batch_size`` real images (default: the per-process batch), checking every node's ports
    and counting the step's FLOPs into ``prepared.flops``; a ``train.budget`` then sets ``train.steps`` for
    ``world``. Returns the output shapes."""
    cfg = prepared.cfg
    batch_size = batch_size or cfg.data.batch_size
    seed_everything(cfg.seed)
    data = load_data(prepared, device, limit=batch_size)
    trace = ShapeTrace()
    executor = Executor(prepared.spec, build_modules(prepared, make_context(prepared, data, device, loader)),
                        [PortChecks(), trace])
    with StepCounter(executor) as counter:
        try:
            executor.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
                losses = executor(data.batch(0))
                total = executor.total_loss(losses)
        except NodeError as e:
            raise PipelineError([prepared.loaded.problem(f"nodes.{e.node}", f"dry run: {e}")], prepared.source) from None
        except PortTypeError as e:
            raise PipelineError([prepared.loaded.problem(p.path, f"dry run: {p}") for p in e.problems], prepared.source) from None
        if not total.requires_grad:
            names = ", ".join(sorted({n for n, _ in prepared.spec.objective}))
            raise PipelineError([prepared.loaded.problem("objective", f"dry run: no loss of the objective ({names}) depends on "
                                                                       "a trainable weight, so there is nothing to train")],
                                prepared.source)
        counter.backward(total)
        # DDP must search for parameters without gradients only when there are some
        prepared.unused_parameters = [n for n, p in executor.named_parameters() if p.requires_grad and p.grad is None]
        updates = {n: m for n, m in executor.components().items() if has_hook(m, "after_step")}
        try:
            counter.after_step(updates, Progress(0, cfg.train.steps or 1, data.steps_per_epoch))
        except Exception as e:
            raise PipelineError([prepared.loaded.problem("nodes", f"dry run: after_step: {type(e).__name__}: {e}")],
                                prepared.source) from None
    prepared.flops = counter.result(batch_size)
    apply_budget(prepared, world.size, lambda: load_data(prepared, device).train_images)
    return trace.shapes


def build_trainer(stage: "Stage", plan: "Plan", device: torch.device, world: World = World(),
                  trained: dict[str, Path] | None = None) -> "Trainer":
    """A stage ready to train as ``graphssl run`` trains it: data, modules (earlier stages' from ``trained``),
    the executor, the optimiser, DDP or FSDP under torchrun; the trainer has no hooks yet."""
    from graphssl.optim import build_optimizer
    from graphssl.train import Trainer

    prepared = stage.prepared
    cfg = prepared.cfg
    seed_everything(cfg.seed)
    data = load_data(prepared, device, world=world)
    modules = build_modules(prepared, make_context(prepared, data, device, plan.loader(stage.name, trained or {}, device)))
    if world.distributed:  # same initial weights everywhere, different augmentations per rank
        torch.manual_seed(cfg.seed + 1000003 * world.rank)
    if cfg.train.compile:
        for module in modules.values():
            if any(True for _ in module.parameters()):
                module.compile()
    executor = Executor(prepared.spec, modules)
    forward = None
    if world.distributed and cfg.train.fsdp:
        shard_modules(prepared, modules)
    elif world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(executor, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=bool(prepared.unused_parameters))
    optimizer = build_optimizer(modules, cfg.train, device)  # after sharding: over the sharded parameters
    flops = prepared.flops.total * world.size if prepared.flops is not None else None  # all processes
    return Trainer(cfg, executor, optimizer, data, world=world, forward=forward, flops_per_step=flops)


def shard_modules(prepared: Prepared, modules: dict[str, nn.Module]) -> None:
    """FSDP2: shard each module's ``fsdp_units()`` (encoder blocks), then the module itself."""
    from torch.distributed.fsdp import fully_shard

    owners = [n for n, node in prepared.spec.nodes.items() if issubclass(node.cls, Owner)]
    if owners:
        raise PipelineError([prepared.loaded.problem("train.fsdp", f"FSDP2 sharding does not support modules that keep copies "
                                                                   f"of others yet ({', '.join(owners)}); use DDP (train.fsdp=false)")],
                            prepared.source)
    for module in modules.values():
        if not any(p.requires_grad for p in module.parameters()):
            continue
        for unit in module.fsdp_units() if isinstance(module, ShardUnits) else []:
            fully_shard(unit)
        fully_shard(module)
