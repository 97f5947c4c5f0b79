"""A pipeline file as a plan of stages: a DAG of single-stage graphs, where a later stage
loads modules an earlier one trained (BEiT's tokenizer, EVA's teacher).

Every file is a plan: a plain ``nodes:`` file is a plan of one stage, named after the
pipeline. A stage's sections are the file's ``data``/``train``/``eval`` with the stage's
own keys merged over them (command-line overrides were applied to both when the file
was loaded). A stage is identified by a fingerprint of its resolved config and of the
fingerprints of the stages it needs: an unchanged stage that a later stage needs is
reused from the tracking store instead of retrained.
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
from pydantic import ValidationError

import graphssl
from graphssl.artifacts import ModuleLoader
from graphssl.budget import merge_train
from graphssl.build import Prepared, dry_run, prepare_loaded
from graphssl.config import SECTION_MODELS, LoadedPipeline, StagedPipelineConfig, pydantic_problems
from graphssl.loading import load_yaml
from graphssl.distributed import World
from graphssl.errors import PipelineError, Problem, did_you_mean
from graphssl.names import identifier_problem
from graphssl.preflight import stage_problems


@dataclass
class Stage:
    name: str
    prepared: Prepared
    needs: list[str] = field(default_factory=list)
    fingerprint: str = ""


@dataclass
class Plan:
    loaded: LoadedPipeline
    name: str
    stages: dict[str, Stage]  # in execution (topological) order

    @property
    def source(self) -> str:
        return self.loaded.path

    @property
    def last(self) -> Stage:
        return next(reversed(self.stages.values()))

    def ancestors(self, stage: str) -> set[str]:
        seen, todo = set(), list(self.stages[stage].needs)
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(self.stages[s].needs)
        return seen

    def is_needed(self, stage: str) -> bool:
        """Does a later stage load this stage's modules? (Only such stages are reused from the store.)"""
        return any(stage in other.needs for other in self.stages.values())

    def loader(self, stage: str, trained: dict[str, Path], device: torch.device) -> ModuleLoader:
        """``ctx.load_module`` for ``stage``: earlier stages' trained (or, before training, untrained) modules."""
        return ModuleLoader(stage, {n: s.prepared for n, s in self.stages.items()}, self.ancestors(stage), trained, device)

    def component_types(self) -> list[str]:
        return sorted({n.type_name for s in self.stages.values() for n in s.prepared.spec.nodes.values()})


def fingerprint(stage_raw: dict[str, Any], needed: list[str]) -> str:
    """What determines a stage's trained modules: its config (less logging and evaluation) and its inputs."""
    body = copy.deepcopy(stage_raw)
    for key in ("eval", "description", "device", "name"):
        body.pop(key, None)
    for key in ("log_every", "flush_seconds", "checkpoint_every", "keep_checkpoints"):
        body.get("train", {}).pop(key, None)
    payload = json.dumps({"stage": body, "needs": sorted(needed), "graphssl": graphssl.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan_pipeline(path: str | Path, overrides: list[str] = (), processes: int | None = None) -> Plan:
    """Validate a pipeline file, with or without stages; every problem is raised at once.

    ``processes``: how many will train it (default: torchrun's WORLD_SIZE, else 1), for the batch-size check.
    """
    loaded = load_yaml(path, list(overrides))
    raw = loaded.raw
    problems: list[Problem] = _name_problems(loaded)
    if "stages" not in raw:
        try:
            prepared = prepare_loaded(loaded)
        except PipelineError as e:
            raise PipelineError(problems + e.problems, loaded.path) from None
        problems += stage_problems(prepared, processes)
        if problems:
            raise PipelineError(problems, loaded.path)
        stage = Stage(prepared.cfg.name, prepared, [], fingerprint(raw, []))
        return Plan(loaded, prepared.cfg.name, {stage.name: stage})

    if "nodes" in raw or "objective" in raw:
        problems.append(loaded.problem("nodes" if "nodes" in raw else "objective",
                                       "a pipeline has either nodes/objective or stages, not both"))
    try:
        cfg = StagedPipelineConfig.model_validate({k: v for k, v in raw.items() if k not in ("nodes", "objective")})
    except ValidationError as e:
        problems += [loaded.problem(*item) for item in pydantic_problems(e, model=StagedPipelineConfig)]
        raise PipelineError(problems, loaded.path) from None
    if not cfg.stages:
        raise PipelineError([loaded.problem("stages", "a staged pipeline needs at least one stage")], loaded.path)

    order = _stage_order(cfg, loaded, problems)
    stages: dict[str, Stage] = {}
    header = {k: v for k, v in raw.items() if k not in ("stages", *SECTION_MODELS)}
    for name in order:
        if identifier_problem(name, "a stage name"):
            continue  # reported above; its paths would not be paths
        stage = cfg.stages[name]
        stage_raw = {**header, "name": f"{cfg.name}.{name}", "description": stage.description or cfg.description,
                     **{s: {**getattr(cfg, s), **getattr(stage, s)} for s in SECTION_MODELS},
                     "train": merge_train(cfg.train, stage.train),  # a stage's budget replaces inherited steps
                     "nodes": stage.nodes, "objective": stage.objective}
        sub = LoadedPipeline(loaded.path, stage_raw, loaded.lines, prefix=f"stages.{name}.", overrides=loaded.overrides,
                             secrets=stage_secrets(loaded.secrets, name), secret_values=loaded.secret_values)
        try:
            prepared = prepare_loaded(sub)
        except PipelineError as e:
            problems += e.problems
            continue
        problems += stage_problems(prepared, processes)
        fp = fingerprint(stage_raw, [stages[n].fingerprint for n in stage.needs if n in stages])
        stages[name] = Stage(name, prepared, list(stage.needs), fp)
    if problems:
        raise PipelineError(problems, loaded.path)
    return Plan(loaded, cfg.name, stages)


def _name_problems(loaded: LoadedPipeline) -> list[Problem]:
    """The pipeline's name and its stages' names are identifiers (they name runs, files and folders)."""
    raw, problems = loaded.raw, []
    if isinstance(raw.get("name"), str) and (bad := identifier_problem(raw["name"], "a pipeline name")):
        problems.append(loaded.problem("name", bad))
    if isinstance(raw.get("stages"), dict):
        for stage in raw["stages"]:
            if bad := identifier_problem(stage, "a stage name"):
                problems.append(loaded.problem("stages", bad))
    return problems


def stage_secrets(secrets: frozenset[str], stage: str) -> frozenset[str]:
    """The file's environment-derived paths, as paths of one stage's config (see plan_pipeline's stage_raw)."""
    own = f"stages.{stage}."
    out = {p.removeprefix(own) for p in secrets if p.startswith(own)}
    out |= {p for p in secrets if not p.startswith("stages.")}  # the header and the file's sections
    return frozenset(out)


def _stage_order(cfg: StagedPipelineConfig, loaded: LoadedPipeline, problems: list[Problem]) -> list[str]:
    deps = nx.DiGraph()
    deps.add_nodes_from(cfg.stages)
    for name, stage in cfg.stages.items():
        for need in stage.needs:
            if need not in cfg.stages:
                problems.append(loaded.problem(f"stages.{name}.needs", f"unknown stage {need!r}{did_you_mean(need, cfg.stages)}"))
            else:
                deps.add_edge(need, name)
    try:
        return list(nx.topological_sort(deps))
    except nx.NetworkXUnfeasible:
        cycle = [a for a, _ in nx.find_cycle(deps)]
        problems.append(loaded.problem("stages", "stages form a cycle: " + " -> ".join(cycle + [cycle[0]])))
        return []


def check_plan(plan: Plan, device: torch.device, world: World = World()) -> dict[str, dict[str, dict[str, str]]]:
    """Dry-run every stage in order (later stages load untrained modules of earlier ones); output shapes per stage.
    A stage's ``train.budget`` is resolved to steps for ``world`` here."""
    return {name: dry_run(stage.prepared, device, plan.loader(name, {}, device), world=world)
            for name, stage in plan.stages.items()}
