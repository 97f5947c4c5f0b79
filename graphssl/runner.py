"""From a pipeline file to a finished, tracked run.

prepare(): parse, override, validate every section and the graph (no tensors);
build():   construct the modules in dependency order;
dry_run(): run the graph forward and backward on a tiny real batch;
run():     all of the above, then train with MLflow tracking.
An invalid pipeline raises PipelineError before any MLflow run exists.
"""
from __future__ import annotations

import copy
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from graphssl.component import BuildContext
from graphssl.config import LoadedPipeline, PipelineConfig, load_yaml, validate_sections
from graphssl.data import Data, DatasetMissing
from graphssl.errors import PipelineError, Problem
from graphssl.executor import Executor, NodeError, describe
from graphssl.graph import GraphSpec, build_graph
from graphssl.hooks import ConsoleHook, TrackingHook
from graphssl.optim import build_optimizer
from graphssl.tracking import Tracker, flatten
from graphssl.train import Trainer


@dataclass
class Prepared:
    loaded: LoadedPipeline
    cfg: PipelineConfig
    spec: GraphSpec
    warnings: list[Problem] = field(default_factory=list)

    @property
    def source(self) -> str:
        return self.loaded.path


def prepare(path: str | Path, overrides: list[str] = ()) -> Prepared:
    """Validate everything that can be checked without tensors; raise every problem at once."""
    loaded = load_yaml(path, list(overrides))
    cfg, problems = validate_sections(loaded)
    nodes = loaded.raw.get("nodes")
    objective = loaded.raw.get("objective")
    spec = None
    if isinstance(nodes, dict):
        spec, graph_problems = build_graph(loaded, nodes, objective if isinstance(objective, dict) else {})
        # node bodies are validated per component, not by the section schema
        problems = [p for p in problems if not p.path.startswith("nodes.")] + graph_problems
    if problems or cfg is None or spec is None:
        raise PipelineError(problems, loaded.path)
    return Prepared(loaded, cfg, spec, spec.warnings)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError([Problem("device", "device is cuda but no CUDA device is available (use cpu or auto)")])
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_modules(prepared: Prepared, ctx: BuildContext) -> dict[str, nn.Module]:
    """Construct every module-owning node in dependency order."""
    problems = []
    for name in prepared.spec.build_order:
        node = prepared.spec.nodes[name]
        try:
            ctx.modules[name] = node.cls(node.config, ctx).to(ctx.device)
        except PipelineError:
            raise
        except Exception as e:
            problems.append(prepared.loaded.problem(f"nodes.{name}", f"cannot build {node.type_name}: {e}"))
            break  # later nodes may depend on this one
    if problems:
        raise PipelineError(problems, prepared.source)
    return dict(ctx.modules)


def make_context(prepared: Prepared, data: Data | None, device: torch.device) -> BuildContext:
    cfg = prepared.cfg
    return BuildContext(image_size=cfg.data.image_size, channels=cfg.data.channels, total_steps=cfg.train.steps,
                        steps_per_epoch=data.steps_per_epoch if data else 1, device=device, data=data)


def load_data(prepared: Prepared, device: torch.device, limit: int | None = None) -> Data:
    cfg = prepared.cfg
    data_cfg = cfg.data if limit is None else cfg.data.model_copy(update={"limit": limit, "batch_size": min(limit, cfg.data.batch_size)})
    try:
        return Data(data_cfg, device, cfg.seed)
    except DatasetMissing as e:
        raise PipelineError([prepared.loaded.problem("data", str(e))], prepared.source) from None


def dry_run(prepared: Prepared, device: torch.device, batch_size: int = 4) -> dict[str, dict[str, str]]:
    """Build on a copy and run one forward/backward on ``batch_size`` real images; returns output shapes."""
    seed_everything(prepared.cfg.seed)
    data = load_data(prepared, device, limit=batch_size)
    modules = build_modules(prepared, make_context(prepared, data, device))
    executor = Executor(prepared.spec, modules)
    executor.trace = {}
    try:
        executor.train()
        losses = executor(data.batch(0))
        executor.total_loss(losses).backward()
    except NodeError as e:
        raise PipelineError([prepared.loaded.problem(f"nodes.{e.node}", f"dry run: {e}")], prepared.source) from None
    shapes = executor.trace
    return shapes


def save_modules(modules: dict[str, nn.Module], prepared: Prepared, path: Path) -> None:
    """Every node's type, config and weights (owners' copies too, as OWNER.NODE)."""
    entries = {}
    for name, module in modules.items():
        node = prepared.spec.nodes[name]
        entries[name] = {"type": node.type_name, "config": node.config.model_dump(mode="json"), "state_dict": module.state_dict()}
        if node.role == "owner":
            for target in getattr(node.cls, "provides")(node.config):
                base = prepared.spec.nodes[target]
                entries[f"{name}.{target}"] = {"type": base.type_name, "config": base.config.model_dump(mode="json"),
                                               "state_dict": module.copy_of(target).state_dict()}
    tmp = path.with_suffix(".tmp")
    torch.save({"nodes": entries, "pipeline": prepared.cfg.name}, tmp)
    tmp.replace(path)


def run(path: str | Path, overrides: list[str] = (), tracking_uri: str | None = None, experiment: str | None = None,
        run_name: str | None = None, log=print) -> str:
    """Train a pipeline; returns the MLflow parent run id."""
    prepared = prepare(path, overrides)
    cfg = prepared.cfg
    device = resolve_device(cfg.device)
    for w in prepared.warnings:
        log(w.format(prepared.source))
    dry_run(prepared, device)

    seed_everything(cfg.seed)
    data = load_data(prepared, device)
    modules = build_modules(prepared, make_context(prepared, data, device))
    executor = Executor(prepared.spec, modules)
    optimizer = build_optimizer({n: m for n, m in modules.items()}, cfg.train, device)

    tracker = Tracker(tracking_uri, experiment or "graphssl")
    types = sorted({n.type_name for n in prepared.spec.nodes.values()})
    parent = tracker.create_run(run_name or cfg.name, {"graphssl.pipeline": cfg.name, "graphssl.components": ",".join(types),
                                                       **{f"graphssl.uses.{t}": "true" for t in types}})
    node_runs = {}
    for name, node in prepared.spec.nodes.items():
        node_runs[name] = tracker.create_run(name, {"graphssl.node": name, "graphssl.component": node.type_name,
                                                    **({"graphssl.call": node.call} if node.call else {})}, parent=parent)
        if node.config is not None:
            tracker.log_params(node_runs[name], flatten(node.config.model_dump(mode="json")))
    tracker.log_params(parent, flatten({k: v for k, v in prepared.loaded.raw.items() if k != "nodes"}) |
                       flatten({"nodes": prepared.loaded.raw["nodes"]}))
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "pipeline.yaml"
        resolved.write_text(yaml.safe_dump(prepared.loaded.raw, sort_keys=False))
        tracker.log_artifact(parent, resolved)
        try:
            from graphssl.picture import draw_graph

            picture = Path(tmp) / "graph.png"
            draw_graph(prepared.spec, picture, title=cfg.name)
            tracker.log_artifact(parent, picture)
        except ImportError:
            pass
    log(f"run {parent} ({cfg.name}) -> {tracker.uri}")

    hooks = [TrackingHook(tracker, parent, node_runs, cfg.train.log_every), ConsoleHook(cfg.train.steps, cfg.train.log_every)]
    trainer = Trainer(cfg, executor, optimizer, data, hooks)
    status = "FAILED"
    try:
        trainer.evaluate(0, suffix="_init")
        trainer.fit()
        trainer.evaluate(cfg.train.steps - 1)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "modules.pt"
            save_modules(modules, prepared, ckpt)
            tracker.log_artifact(parent, ckpt, "model")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.flush()
        for run_id in node_runs.values():
            tracker.end_run(run_id, status)
        tracker.end_run(parent, status)
    return parent
