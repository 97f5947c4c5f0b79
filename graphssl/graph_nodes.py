"""Graph validation, passes 1 and 2 (see :mod:`graphssl.graph`): the nodes, then the call nodes; and the
:class:`Check` that every pass shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import ValidationError

from graphssl import registry
from graphssl.component import Owner
from graphssl.config import LoadedPipeline, pydantic_problems
from graphssl.errors import Problem, did_you_mean
from graphssl.names import identifier_problem
from graphssl.spec import SOURCE, ModuleEdge, ModuleRef, NodeSpec, Ref

RESERVED_KEYS = ("type", "call")


def owner_provides(spec: NodeSpec) -> list[str]:
    """Names of the modules an owner node (e.g. teacher.ema) holds copies of."""
    return list(spec.cls.provides(spec.config)) if issubclass(spec.cls, Owner) and spec.config is not None else []


@dataclass
class Check:
    """What the passes share. ``invalid``: nodes of the file with a problem already reported (or that
    depend on one), so that what follows from it is not reported again."""

    loaded: LoadedPipeline
    nodes: dict[str, Any]
    objective: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    invalid: set[str] = field(default_factory=set)
    specs: dict[str, NodeSpec] = field(default_factory=dict)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)  # call nodes' bodies, in file order
    copies: dict[str, NodeSpec] = field(default_factory=dict)  # "owner.node" -> the node whose module is copied
    module_edges: list[ModuleEdge] = field(default_factory=list)
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    build_order: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    weights: dict[Ref, float] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    def report(self, path: str, message: str) -> None:
        self.problems.append(self.loaded.problem(path, message))

    @property
    def step_nodes(self) -> list[str]:
        return [n for n, s in self.specs.items() if s.is_step]


def parse_nodes(c: Check) -> None:
    """Typed nodes: the component, its parameters and inputs; call nodes are set aside for resolve_calls."""
    all_types = registry.names()
    if not c.nodes:
        c.report("nodes", "a pipeline needs at least one node")
    if SOURCE in c.nodes:
        c.report(f"nodes.{SOURCE}", f'"{SOURCE}" is reserved for the data source (batch.images)')
        c.invalid.add(SOURCE)
    for name, body in c.nodes.items():
        path = f"nodes.{name}"
        if not isinstance(body, dict):
            c.report(path, f"a node is a mapping with type: or call:, got {body!r}")
        elif name == SOURCE:
            pass  # reported above
        elif not isinstance(name, str):
            c.report(path, f"a node name is a word, got {name!r}")
        elif (bad_name := identifier_problem(name, "a node name")) is not None:  # '.' separates node and port
            c.report("nodes", bad_name)
        elif ("type" in body) == ("call" in body):
            c.report(path, "a node needs exactly one of type: (a component) or call: (another node's module)")
        elif "call" in body:
            c.calls[name] = c.bodies[name] = body
            continue
        elif _parse_typed(c, name, body, all_types):
            continue
        c.invalid.add(name)


def _parse_typed(c: Check, name: str, body: dict[str, Any], all_types: list[str]) -> bool:
    path = f"nodes.{name}"
    type_name = body["type"]
    if not isinstance(type_name, str):
        c.report(f"{path}.type", f"type: names a component (e.g. mask.random), got {type_name!r}")
        return False
    cls = registry.get(type_name)
    if cls is None:
        c.report(f"{path}.type", f"unknown component {type_name!r}{did_you_mean(str(type_name), all_types)}")
        return False
    params, bad = {}, False
    for key, value in body.items():
        if key in RESERVED_KEYS or key in cls.inputs:
            continue
        if key in cls.Config.model_fields:
            params[key] = value
        else:
            choices = list(cls.inputs) + list(cls.Config.model_fields)
            c.report(f"{path}.{key}", f"unknown parameter or input of {type_name}{did_you_mean(str(key), choices)}")
            bad = True
    try:
        config = cls.Config.model_validate(params)
    except ValidationError as e:
        for p, msg in pydantic_problems(e, path, model=cls.Config):
            c.report(p, msg)
        return False
    except Exception as e:  # a validator that raised something else than ValueError
        c.report(path, f"invalid parameters for {type_name}: {type(e).__name__}: {e}")
        return False
    if bad:
        return False
    c.specs[name] = NodeSpec(name, cls, config)
    c.bodies[name] = body
    return True


def resolve_calls(c: Check) -> None:
    """Call nodes: another node's module (shared weights) or an owner's copy of one ("teacher.student")."""
    typed = dict(c.specs)
    for name, spec in typed.items():
        for target in owner_provides(spec):
            if target in typed:
                c.copies[f"{name}.{target}"] = typed[target]
    for name, body in c.calls.items():
        path, target = f"nodes.{name}", body["call"]
        ref = ModuleRef.parse(str(target))
        if target == name:
            c.report(f"{path}.call", "a call node cannot call itself")
            c.invalid.add(name)
            continue
        if isinstance(target, str) and target in c.calls:
            c.report(f"{path}.call", f"cannot call {target!r}: it is a call node itself; call {str(c.calls[target]['call'])!r} instead")
            c.invalid.add(name)
            continue
        base = (typed.get(target) if isinstance(target, str) else None) or c.copies.get(str(target))
        if base is None and ref.root in c.invalid:
            c.invalid.add(name)  # the called node is invalid: reported above
            continue
        if base is None and ref.owner in typed and issubclass(typed[ref.owner].cls, Owner):
            held = owner_provides(typed[ref.owner])
            if not (ref.node in held or (ref.node in typed and any(m not in typed for m in held))):
                c.report(f"{path}.call", f"{ref.owner!r} holds no copy of {ref.node!r} (it copies: {', '.join(held)})"
                                         f"{did_you_mean(ref.node, held)}")
            c.invalid.add(name)  # else the module, or the owner's list of modules, is invalid: reported there
            continue
        if base is None:
            callable_names = [n for n, s in typed.items() if s.is_step] + list(c.copies)
            c.report(f"{path}.call", f"cannot call {target!r}: no such node or module copy{did_you_mean(str(target), callable_names)}")
            c.invalid.add(name)
            continue
        if not base.is_step:
            c.report(f"{path}.call", f"{target!r} is a {base.role} node; only step components can be called")
            c.invalid.add(name)
            continue
        for key in body:
            if key not in RESERVED_KEYS and key not in base.cls.inputs:
                c.report(f"{path}.{key}", f"a call node takes only inputs of {base.type_name} "
                                          f"({', '.join(base.cls.inputs)}){did_you_mean(str(key), base.cls.inputs)}; "
                                          "parameters belong to the called node")
        c.specs[name] = NodeSpec(name, base.cls, None, call=ref)
        c.module_edges.append(ModuleEdge(name, ref, "call"))
