"""From the ``nodes`` section to a validated networkx graph, before any tensor exists.

Checks: unknown component or parameter (did-you-mean), bad values (pydantic),
unknown node or port, port type mismatch (both ends named), cycles (members
listed), missing required inputs, module references, the objective. Every
problem is collected; the caller raises them together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import ValidationError

from graphssl import registry
from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.config import LoadedPipeline, pydantic_problems
from graphssl.errors import Problem, did_you_mean
from graphssl.names import identifier_problem
from graphssl.ports import IMAGES, LOSS, PortType

SOURCE = "batch"
SOURCE_OUTPUTS = {"images": Out(IMAGES, "training images: resized, channel-replicated, normalised")}
RESERVED_KEYS = ("type", "call")

Ref = tuple[str, str]  # (node, port)


@dataclass
class NodeSpec:
    name: str
    cls: type[Component]
    config: ComponentConfig | None  # None for call nodes (they use the called node's config)
    call: str | None = None  # node whose module this node calls ("student" or "teacher.student")
    inputs: dict[str, Ref | list[Ref]] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.cls.role

    @property
    def module_name(self) -> str:
        """The module this node runs: its own, or the one it calls."""
        return self.call or self.name

    @property
    def type_name(self) -> str:
        return self.cls.type_name


@dataclass
class GraphSpec:
    nodes: dict[str, NodeSpec]
    graph: nx.DiGraph  # data edges between step nodes (and the batch source)
    order: list[str]  # step nodes in execution order
    build_order: list[str]  # nodes that own a module, in construction order
    objective: dict[Ref, float]
    warnings: list[Problem]

    def outputs_of(self, node: str) -> dict[str, Out]:
        return SOURCE_OUTPUTS if node == SOURCE else self.nodes[node].cls.outputs


def _parse_ref(value: Any) -> Ref | None:
    if isinstance(value, str) and value.count(".") == 1 and all(value.split(".")):
        node, port = value.split(".")
        return node, port
    return None


def port_mismatch(src: str, out_type: PortType, dst: str, decl: In) -> str:
    """The message for an edge whose ends disagree: both ends named; a rank difference is said so."""
    def rank(t: PortType) -> int:
        return len(t.dims) + int(t.batched)

    if all(rank(t) != rank(out_type) and t.dtype == out_type.dtype and t.batched == out_type.batched for t in decl.types):
        n_in = " or ".join(sorted({str(len(t.dims)) for t in decl.types}))
        return (f"port rank mismatch: {src} gives {out_type} ({len(out_type.dims)} trailing dim{'s' * (len(out_type.dims) != 1)}), "
                f"but {dst} expects {decl} ({n_in} trailing dim{'s' * (n_in != '1')})")
    return f"port type mismatch: {src} gives {out_type}, but {dst} expects {decl}"


def cycles_of(graph: nx.DiGraph, rank: dict[str, int]) -> list[list[str]]:
    """One shortest cycle per strongly connected group of nodes, starting at its member first in the file.

    Deterministic (nx.simple_cycles is not, across hash seeds), and bounded: a
    group with many cycles is reported once.
    """
    def key(n: str) -> int:
        return rank.get(n, len(rank))

    found = []
    for group in nx.strongly_connected_components(graph):
        start = min(group, key=key)
        if len(group) == 1 and not graph.has_edge(start, start):
            continue
        sub = graph.subgraph(group)
        best: list[str] | None = None
        for succ in sorted(sub.successors(start), key=key):
            cycle = [start] if succ == start else [start] + nx.shortest_path(sub, succ, start)[:-1]
            if best is None or len(cycle) < len(best):
                best = cycle
        found.append(best)
    return sorted(found, key=lambda c: key(c[0]))


def owner_provides(spec: NodeSpec) -> list[str]:
    """Names of the modules an owner node (e.g. teacher.ema) holds copies of."""
    provides = getattr(spec.cls, "provides", None)
    return list(provides(spec.config)) if provides and spec.config is not None else []


def build_graph(loaded: LoadedPipeline, nodes: dict[str, dict[str, Any]], objective: dict[str, float]) -> tuple[GraphSpec | None, list[Problem]]:
    problems: list[Problem] = []
    P = loaded.problem
    specs: dict[str, NodeSpec] = {}
    bodies: dict[str, dict[str, Any]] = {}
    all_types = registry.names()

    if not nodes:
        problems.append(P("nodes", "a pipeline needs at least one node"))
    if SOURCE in nodes:
        problems.append(P(f"nodes.{SOURCE}", f'"{SOURCE}" is reserved for the data source (batch.images)'))

    # 1. Typed nodes: component lookup and parameter validation.
    for name, body in nodes.items():
        path = f"nodes.{name}"
        if not isinstance(body, dict):
            problems.append(P(path, f"a node is a mapping with type: or call:, got {body!r}"))
            continue
        if name == SOURCE:
            continue  # reported above
        if not isinstance(name, str):
            problems.append(P(path, f"a node name is a word, got {name!r}"))
            continue
        if (bad_name := identifier_problem(name, "a node name")) is not None:  # '.' separates node and port
            problems.append(P("nodes", bad_name))
            continue
        has_type, has_call = "type" in body, "call" in body
        if has_type == has_call:
            problems.append(P(path, "a node needs exactly one of type: (a component) or call: (another node's module)"))
            continue
        if has_call:
            bodies[name] = body
            continue
        type_name = body["type"]
        if not isinstance(type_name, str):
            problems.append(P(f"{path}.type", f"type: names a component (e.g. mask.random), got {type_name!r}"))
            continue
        cls = registry.get(type_name)
        if cls is None:
            problems.append(P(f"{path}.type", f"unknown component {type_name!r}{did_you_mean(str(type_name), all_types)}"))
            continue
        params, inputs, bad = {}, {}, False
        for key, value in body.items():
            if key in RESERVED_KEYS:
                continue
            if key in cls.inputs:
                inputs[key] = value
            elif key in cls.Config.model_fields:
                params[key] = value
            else:
                choices = list(cls.inputs) + list(cls.Config.model_fields)
                problems.append(P(f"{path}.{key}", f"unknown parameter or input of {type_name}{did_you_mean(str(key), choices)}"))
                bad = True
        try:
            config = cls.Config.model_validate(params)
        except ValidationError as e:
            for p, msg in pydantic_problems(e, path, model=cls.Config):
                problems.append(P(p, msg))
            continue
        except Exception as e:  # a validator that raised something else than ValueError
            problems.append(P(path, f"invalid parameters for {type_name}: {type(e).__name__}: {e}"))
            continue
        if not bad:
            specs[name] = NodeSpec(name, cls, config)
            bodies[name] = body

    # Modules that owners (EMA teachers) hold copies of: "owner.module".
    copies: dict[str, NodeSpec] = {}
    for name, spec in specs.items():
        if spec.role == "owner":
            for target in owner_provides(spec):
                if target in specs:
                    copies[f"{name}.{target}"] = specs[target]

    # 2. Call nodes: reuse another node's module (shared weights) or an owner's copy.
    for name, body in bodies.items():
        if "call" not in body:
            continue
        path = f"nodes.{name}"
        target = body["call"]
        base = specs.get(target) if isinstance(target, str) else None
        base = base or copies.get(str(target))
        if base is None and str(target).split(".")[0] in nodes and str(target).split(".")[0] not in specs:
            continue  # the called node is invalid: reported above
        owner, _, module = str(target).partition(".")
        if base is None and owner in specs and specs[owner].role == "owner":
            held = owner_provides(specs[owner])
            if module in held or (module in specs and any(m not in specs for m in held)):
                continue  # the module, or the owner's list of modules, is invalid: reported there
            problems.append(P(f"{path}.call", f"{owner!r} holds no copy of {module!r} (it copies: {', '.join(held)})"
                                              f"{did_you_mean(module, held)}"))
            continue
        if base is None:
            callable_names = [n for n, s in specs.items() if s.role == "step"] + list(copies)
            problems.append(P(f"{path}.call", f"cannot call {target!r}: no such node or module copy{did_you_mean(str(target), callable_names)}"))
            continue
        if base.role != "step":
            problems.append(P(f"{path}.call", f"{target!r} is a {base.role} node; only step components can be called"))
            continue
        inputs = {}
        for key, value in body.items():
            if key in RESERVED_KEYS:
                continue
            if key in base.cls.inputs:
                inputs[key] = value
            else:
                problems.append(P(f"{path}.{key}", f"a call node takes only inputs of {base.type_name} "
                                                   f"({', '.join(base.cls.inputs)}){did_you_mean(str(key), base.cls.inputs)}; "
                                                   "parameters belong to the called node"))
        specs[name] = NodeSpec(name, base.cls, None, call=str(target))

    # 3. Input references and port types.
    graph = nx.DiGraph()
    graph.add_node(SOURCE)
    step_nodes = [n for n, s in specs.items() if s.role == "step"]
    graph.add_nodes_from(step_nodes)
    for name in step_nodes:
        spec, body = specs[name], bodies.get(name, {})
        for port, decl in spec.cls.inputs.items():
            path = f"nodes.{name}.{port}"
            if port not in body:
                if not decl.optional:
                    problems.append(P(path, f"missing required input {port!r} ({decl}): {decl.doc}"))
                continue
            value = body[port]
            raw_refs = value if isinstance(value, list) else [value]
            if isinstance(value, list) and not decl.many:
                problems.append(P(path, f"{spec.type_name}.{port} takes one reference (node.port), got a list"))
                continue
            refs: list[Ref] = []
            for raw in raw_refs:
                ref = _parse_ref(raw)
                if ref is None:
                    problems.append(P(path, f"expected a reference node.port (e.g. batch.images), got {raw!r}"))
                    continue
                src, src_port = ref
                if src != SOURCE and src not in specs and src in nodes:
                    continue  # the node exists but is invalid: reported above
                if src != SOURCE and src not in specs:
                    problems.append(P(path, f"unknown node {src!r}{did_you_mean(src, list(specs) + [SOURCE])}"))
                    continue
                if src != SOURCE and specs[src].role != "step":
                    problems.append(P(path, f"{src!r} is a {specs[src].role} node and has no outputs"))
                    continue
                outs = SOURCE_OUTPUTS if src == SOURCE else specs[src].cls.outputs
                if src_port not in outs:
                    problems.append(P(path, f"node {src!r} has no output {src_port!r} "
                                            f"(it has: {', '.join(outs)}){did_you_mean(src_port, outs)}"))
                    continue
                out_type = outs[src_port].type
                if out_type not in decl.types:
                    problems.append(P(path, port_mismatch(f"{src}.{src_port}", out_type, f"{name}.{port}", decl)))
                    continue
                refs.append(ref)
                graph.add_edge(src, name, ports=graph.get_edge_data(src, name, {}).get("ports", []) + [(src_port, port)])
            if len(refs) == len(raw_refs):
                spec.inputs[port] = refs if decl.many else refs[0]

    # 4. Module references (evaluators, owners) and the construction order.
    deps = nx.DiGraph()
    deps.add_nodes_from(n for n, s in specs.items() if s.call is None)
    for name, spec in specs.items():
        if spec.call is not None:
            owner = spec.call.split(".")[0]
            if owner != name and owner in deps:
                deps.add_edge(owner, name)
            continue
        for field_name in spec.cls.module_refs:
            value = getattr(spec.config, field_name)
            targets = value if isinstance(value, (list, tuple)) else [value]
            for target in targets:
                if target is None:
                    continue
                root = str(target).split(".")[0]
                known = (target in specs and specs[target].call is None) or target in copies
                if not known and str(target).split(".")[0] in nodes and str(target).split(".")[0] not in specs:
                    continue  # invalid node: reported above
                if not known:
                    choices = [n for n, s in specs.items() if s.call is None and n != name] + list(copies)
                    problems.append(P(f"nodes.{name}.{field_name}", f"unknown module {target!r}{did_you_mean(str(target), choices)}"))
                elif root != name:
                    deps.add_edge(root, name)
    try:
        build_order = [n for n in nx.topological_sort(deps) if specs[n].call is None]
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(deps)
        problems.append(P("nodes", "module references form a cycle: " + " -> ".join([a for a, _ in cycle] + [cycle[0][0]])))
        build_order = []

    # 5. Cycles in the data flow.
    order: list[str] = []
    try:
        order = [n for n in nx.topological_sort(graph) if n != SOURCE]
    except nx.NetworkXUnfeasible:
        for cycle in cycles_of(graph, {n: i for i, n in enumerate(nodes)}):
            problems.append(P(f"nodes.{cycle[0]}", "cycle in the graph: " + " -> ".join(cycle + [cycle[0]])))

    # 6. Objective: weighted loss outputs.
    weights: dict[Ref, float] = {}
    for key, weight in objective.items():
        if not isinstance(key, str):
            continue  # the section schema reports it
        node, _, port = key.partition(".")
        path = f"objective.{key}"
        if node in nodes and node not in specs:
            continue  # invalid node: reported above
        if node not in specs:
            problems.append(P(path, f"unknown node {node!r}{did_you_mean(node, specs)}"))
            continue
        loss_ports = [p for p, o in specs[node].cls.outputs.items() if o.type == LOSS]
        port = port or (loss_ports[0] if len(loss_ports) == 1 else "loss")
        if port not in loss_ports:
            problems.append(P(path, f"{node!r} ({specs[node].type_name}) is not a loss node: the objective weights outputs of type {LOSS}"))
            continue
        try:
            weights[(node, port)] = float(weight)
        except (TypeError, ValueError):
            problems.append(P(path, f"a loss weight is a number, got {weight!r}"))
    if not problems and not weights:
        problems.append(P("objective", "the objective names no loss node, so there is nothing to train"))
    for name in step_nodes:
        for port, out in specs[name].cls.outputs.items():
            if out.type == LOSS and (name, port) not in weights and objective is not None:
                problems.append(P(f"nodes.{name}", f"loss node {name!r} is not in the objective; "
                                                   f"add it (weight 0 only logs it): objective: {{{name}: 1.0}}"))

    # 7. Warnings: step nodes whose outputs nobody uses.
    warnings = []
    used = {src for src, _ in weights}
    for name in step_nodes:
        if graph.out_degree(name) == 0 and name not in used:
            warnings.append(P(f"nodes.{name}", "no node or objective uses this node's outputs", warning=True))

    if problems:
        return None, problems
    return GraphSpec(specs, graph, order, build_order, weights, warnings), []
