"""Pipelines of stages: a DAG of single-stage pipelines, where a later stage
loads modules an earlier one trained (BEiT's tokenizer, EVA's teacher).

A stage's sections are the pipeline's ``data``/``train``/``eval`` with the
stage's own keys merged over them; command-line overrides of those sections
win over both. A stage is identified by a fingerprint of its resolved config
and of the fingerprints of the stages it needs: an unchanged stage is reused
from the tracking store instead of retrained.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
import yaml
from pydantic import ValidationError
from torch import nn

import graphssl
from graphssl import registry
from graphssl.budget import merge_train
from graphssl.component import BuildContext
from graphssl.config import LoadedPipeline, StagedPipelineConfig, load_yaml, pydantic_problems
from graphssl.errors import PipelineError, Problem, did_you_mean

SECTIONS = ("data", "train", "eval")


@dataclass
class Stage:
    name: str
    prepared: Any  # runner.Prepared
    needs: list[str] = field(default_factory=list)
    fingerprint: str = ""


@dataclass
class Plan:
    loaded: LoadedPipeline
    name: str
    stages: dict[str, Stage]  # in execution (topological) order
    staged: bool

    @property
    def source(self) -> str:
        return self.loaded.path

    def ancestors(self, stage: str) -> set[str]:
        seen, todo = set(), list(self.stages[stage].needs)
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(self.stages[s].needs)
        return seen


def _apply_section_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    for item in overrides:
        key, _, value = item.partition("=")
        parts = key.split(".")
        if parts[0] in SECTIONS and len(parts) == 2:
            raw.setdefault(parts[0], {})[parts[1]] = yaml.safe_load(value) if value else None


def fingerprint(stage_raw: dict[str, Any], needed: list[str]) -> str:
    """What determines a stage's trained modules: its config (less logging and evaluation) and its inputs."""
    body = copy.deepcopy(stage_raw)
    for key in ("eval", "description", "device", "name"):
        body.pop(key, None)
    for key in ("log_every", "flush_seconds"):
        body.get("train", {}).pop(key, None)
    payload = json.dumps({"stage": body, "needs": sorted(needed), "graphssl": graphssl.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan_pipeline(path: str | Path, overrides: list[str] = ()) -> Plan:
    """Validate a pipeline file, with or without stages; every problem is raised at once."""
    from graphssl.build import prepare_loaded

    loaded = load_yaml(path, list(overrides))
    raw = loaded.raw
    if "stages" not in raw:
        prepared = prepare_loaded(loaded)
        stage = Stage(prepared.cfg.name, prepared, [], fingerprint(raw, []))
        return Plan(loaded, prepared.cfg.name, {stage.name: stage}, staged=False)

    problems: list[Problem] = []
    if "nodes" in raw or "objective" in raw:
        problems.append(loaded.problem("nodes" if "nodes" in raw else "objective",
                                       "a pipeline has either nodes/objective or stages, not both"))
    try:
        cfg = StagedPipelineConfig.model_validate({k: v for k, v in raw.items() if k not in ("nodes", "objective")})
    except ValidationError as e:
        problems += [loaded.problem(*item) for item in pydantic_problems(e, model=StagedPipelineConfig)]
        raise PipelineError(problems, loaded.path) from None

    deps = nx.DiGraph()
    deps.add_nodes_from(cfg.stages)
    for name, stage in cfg.stages.items():
        for need in stage.needs:
            if need not in cfg.stages:
                problems.append(loaded.problem(f"stages.{name}.needs", f"unknown stage {need!r}{did_you_mean(need, cfg.stages)}"))
            else:
                deps.add_edge(need, name)
    try:
        order = list(nx.topological_sort(deps))
    except nx.NetworkXUnfeasible:
        cycle = [a for a, _ in nx.find_cycle(deps)]
        problems.append(loaded.problem("stages", "stages form a cycle: " + " -> ".join(cycle + [cycle[0]])))
        order = []

    stages: dict[str, Stage] = {}
    for name in order:
        stage = cfg.stages[name]
        stage_raw = {"name": f"{cfg.name}.{name}", "description": stage.description or cfg.description,
                     "seed": cfg.seed, "device": cfg.device, "vars": cfg.vars,
                     **{s: {**getattr(cfg, s), **getattr(stage, s)} for s in SECTIONS},
                     "train": merge_train(cfg.train, stage.train),  # a stage's budget replaces inherited steps
                     "nodes": stage.nodes, "objective": stage.objective}
        _apply_section_overrides(stage_raw, loaded.overrides)
        sub = LoadedPipeline(loaded.path, stage_raw, loaded.lines, prefix=f"stages.{name}.", overrides=loaded.overrides)
        try:
            prepared = prepare_loaded(sub)
        except PipelineError as e:
            problems += e.problems
            continue
        fp = fingerprint(stage_raw, [stages[n].fingerprint for n in stage.needs if n in stages])
        stages[name] = Stage(name, prepared, list(stage.needs), fp)
    if problems:
        raise PipelineError(problems, loaded.path)
    return Plan(loaded, cfg.name, stages, staged=True)


# ----------------------------------------------------------------------------- module loading

def save_modules(modules: dict[str, nn.Module], prepared, path: Path, executor_state: dict | None = None) -> None:
    """Every node's type, config and weights (an owner's copies too, as OWNER.NODE); written atomically.

    ``executor_state``: the executor's full state dict, when the modules are sharded (FSDP).
    """
    entries = {}
    for name, module in modules.items():
        node = prepared.spec.nodes[name]
        if executor_state is None:
            weights = module.state_dict()
        else:
            prefix = f"nodes.{name}."
            weights = {k[len(prefix):]: v for k, v in executor_state.items() if k.startswith(prefix)}
        entries[name] = {"type": node.type_name, "config": node.config.model_dump(mode="json"), "state_dict": weights}
        if node.role == "owner":
            for target in node.cls.provides(node.config):
                base = prepared.spec.nodes[target]
                entries[f"{name}.{target}"] = {"type": base.type_name, "config": base.config.model_dump(mode="json"),
                                               "state_dict": module.copy_of(target).state_dict()}
    data = prepared.cfg.data
    payload = {"nodes": entries, "pipeline": prepared.cfg.name, "image_size": data.image_size, "channels": data.channels}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _build(entry: dict[str, Any], image_size: int, channels: int, device: torch.device, state: bool) -> nn.Module:
    cls = registry.get(entry["type"])
    if cls is None:
        raise ValueError(f"the checkpoint's component {entry['type']!r} is not registered")
    ctx = BuildContext(image_size=image_size, channels=channels, device=device)
    module = cls(cls.Config.model_validate(entry["config"]), ctx)
    if state:
        module.load_state_dict(entry["state_dict"])
    return module.to(device).eval().requires_grad_(False)


def load_checkpoint_module(path: str | Path, node: str | None, device: torch.device) -> nn.Module:
    """A module from a graphssl checkpoint file (``modules.pt``), by node name."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        entries = payload["nodes"]
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if node is None:
        if len(entries) != 1:
            raise ValueError(f"checkpoint {path} holds several modules ({', '.join(entries)}); name one as {path}#NODE")
        node = next(iter(entries))
    if node not in entries:
        raise ValueError(f"checkpoint {path} has no module {node!r}{did_you_mean(node, entries)} (it has: {', '.join(entries)})")
    return _build(entries[node], payload["image_size"], payload["channels"], device, state=True)


class ModuleLoader:
    """``ctx.load_module`` for one stage: "STAGE.NODE" from an earlier stage, or "PATH[#NODE]".

    Before an earlier stage has trained (``graphssl check``, the dry run), the
    module is built untrained from that stage's config, so shapes are checked
    end to end before anything trains.
    """

    def __init__(self, plan: Plan | None, stage: str | None, artifacts: dict[str, Path], device: torch.device):
        self.plan, self.stage, self.artifacts, self.device = plan, stage, artifacts, device

    def __call__(self, ref: str) -> nn.Module:
        head, dot, node = ref.partition(".")
        stages = self.plan.stages if self.plan else {}
        if dot and head in stages:
            allowed = self.plan.ancestors(self.stage) if self.stage else set()
            if head not in allowed:
                raise ValueError(f"{ref!r}: stage {self.stage!r} loads from stage {head!r} but does not list it in needs")
            if head in self.artifacts:
                return load_checkpoint_module(self.artifacts[head], node, self.device)
            return self._untrained(stages[head].prepared, node)
        path, _, node_name = ref.partition("#")
        if Path(path).suffix in (".pt", ".pth", ".ckpt") or Path(path).exists():
            return load_checkpoint_module(path, node_name or None, self.device)
        choices = [f"{s}.{n}" for s, st in stages.items() for n in st.prepared.spec.nodes]
        raise ValueError(f"cannot load {ref!r}: not STAGE.NODE of an earlier stage nor a checkpoint file{did_you_mean(ref, choices)}")

    def _untrained(self, prepared, node: str) -> nn.Module:
        spec = prepared.spec
        owner, _, target = node.partition(".")
        base = spec.nodes.get(target) if target and owner in spec.nodes else spec.nodes.get(node)
        if base is None or base.config is None:
            choices = [n for n, s in spec.nodes.items() if s.config is not None]
            raise ValueError(f"stage {prepared.cfg.name!r} has no module {node!r}{did_you_mean(node, choices)}")
        entry = {"type": base.type_name, "config": base.config.model_dump(mode="json")}
        data = prepared.cfg.data
        return _build(entry, data.image_size, data.channels, self.device, state=False)
