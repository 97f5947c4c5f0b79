"""From the ``nodes`` section to a validated networkx graph, before any tensor exists.

Small passes share one :class:`Check`: the problems found so far and the nodes
already found invalid (whose consequences are not reported twice).

1. ``parse_nodes``: component lookup, parameters (did-you-mean), bad values (pydantic);
2. ``resolve_calls``: call nodes, of another node's module or an owner's copy;
3. ``wire_inputs``: input references, port types (both ends named), required inputs;
4. ``module_references``: modules named by owners and evaluators, the construction order;
5. ``data_cycles``: cycles in the data flow (members listed);
6. ``weigh_objective``: the objective's loss outputs, and loss nodes left out of it;
7. ``unused_outputs``: warnings for nodes whose outputs nobody uses.

The caller raises every problem together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from pydantic import ValidationError

from graphssl import registry
from graphssl.component import In, Owner
from graphssl.config import LoadedPipeline, pydantic_problems
from graphssl.errors import Problem, did_you_mean
from graphssl.ports import LOSS, PortType
from graphssl.spec import SOURCE, SOURCE_OUTPUTS, GraphSpec, ModuleEdge, ModuleRef, NodeSpec, Ref  # noqa: F401 (re-exported)

RESERVED_KEYS = ("type", "call")


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
        elif "." in name:
            c.report(path, "node names cannot contain '.' (it separates node and port)")
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


def wire_inputs(c: Check) -> None:
    """Every input port of every step node: present when required, a reference to a real output of a type it takes."""
    c.graph.add_node(SOURCE)
    c.graph.add_nodes_from(c.step_nodes)
    for name in c.step_nodes:
        spec, body = c.specs[name], c.bodies.get(name, {})
        for port, decl in spec.cls.inputs.items():
            path = f"nodes.{name}.{port}"
            if port not in body:
                if not decl.optional:
                    c.report(path, f"missing required input {port!r} ({decl}): {decl.doc}")
                continue
            value = body[port]
            raw_refs = value if isinstance(value, list) else [value]
            if isinstance(value, list) and not decl.many:
                c.report(path, f"{spec.type_name}.{port} takes one reference (node.port), got a list")
                continue
            refs = [ref for ref in (_wire(c, name, port, decl, raw) for raw in raw_refs) if ref is not None]
            if len(refs) == len(raw_refs):
                spec.inputs[port] = refs if decl.many else refs[0]


def _wire(c: Check, name: str, port: str, decl: In, raw: Any) -> Ref | None:
    path = f"nodes.{name}.{port}"
    ref = _parse_ref(raw)
    if ref is None:
        c.report(path, f"expected a reference node.port (e.g. batch.images), got {raw!r}")
        return None
    src, src_port = ref
    if src != SOURCE and src in c.invalid:
        return None  # the node exists but is invalid: reported above
    if src != SOURCE and src not in c.specs:
        c.report(path, f"unknown node {src!r}{did_you_mean(src, list(c.specs) + [SOURCE])}")
        return None
    if src != SOURCE and not c.specs[src].is_step:
        c.report(path, f"{src!r} is a {c.specs[src].role} node and has no outputs")
        return None
    outs = SOURCE_OUTPUTS if src == SOURCE else c.specs[src].cls.outputs
    if src_port not in outs:
        c.report(path, f"node {src!r} has no output {src_port!r} (it has: {', '.join(outs)}){did_you_mean(src_port, outs)}")
        return None
    out_type = outs[src_port].type
    if out_type not in decl.types:
        c.report(path, port_mismatch(f"{src}.{src_port}", out_type, f"{name}.{port}", decl))
        return None
    c.graph.add_edge(src, name, ports=c.graph.get_edge_data(src, name, {}).get("ports", []) + [(src_port, port)])
    return ref


def module_references(c: Check) -> None:
    """Modules named in owners' and evaluators' parameters exist; modules are built after those they read."""
    deps = nx.DiGraph()
    deps.add_nodes_from(n for n, s in c.specs.items() if s.call is None)
    for name, spec in c.specs.items():
        if spec.call is not None:
            if spec.call.root != name and spec.call.root in deps:
                deps.add_edge(spec.call.root, name)
            continue
        for field_name in spec.cls.module_refs:
            value = getattr(spec.config, field_name)
            for target in value if isinstance(value, (list, tuple)) else [value]:
                if target is None:
                    continue
                ref = ModuleRef.parse(str(target))
                known = (target in c.specs and c.specs[target].call is None) or target in c.copies
                if not known and ref.root in c.invalid:
                    continue  # invalid node: reported above
                if not known:
                    choices = [n for n, s in c.specs.items() if s.call is None and n != name] + list(c.copies)
                    c.report(f"nodes.{name}.{field_name}", f"unknown module {target!r}{did_you_mean(str(target), choices)}")
                    continue
                c.module_edges.append(ModuleEdge(name, ref, field_name))
                if ref.root != name:
                    deps.add_edge(ref.root, name)
    try:
        c.build_order = [n for n in nx.topological_sort(deps) if c.specs[n].call is None]
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(deps)
        c.report("nodes", "module references form a cycle: " + " -> ".join([a for a, _ in cycle] + [cycle[0][0]]))


def data_cycles(c: Check) -> None:
    try:
        c.order = [n for n in nx.topological_sort(c.graph) if n != SOURCE]
    except nx.NetworkXUnfeasible:
        for cycle in cycles_of(c.graph, {n: i for i, n in enumerate(c.nodes)}):
            c.report(f"nodes.{cycle[0]}", "cycle in the graph: " + " -> ".join(cycle + [cycle[0]]))


def weigh_objective(c: Check) -> None:
    """The objective weighs loss outputs; every loss node is in it (weight 0 only logs)."""
    for key, weight in c.objective.items():
        if not isinstance(key, str):
            continue  # the section schema reports it
        node, _, port = key.partition(".")
        path = f"objective.{key}"
        if node in c.invalid:
            continue  # invalid node: reported above
        if node not in c.specs:
            c.report(path, f"unknown node {node!r}{did_you_mean(node, c.specs)}")
            continue
        loss_ports = [p for p, o in c.specs[node].cls.outputs.items() if o.type == LOSS]
        port = port or (loss_ports[0] if len(loss_ports) == 1 else "loss")
        if port not in loss_ports:
            c.report(path, f"{node!r} ({c.specs[node].type_name}) is not a loss node: the objective weights outputs of type {LOSS}")
            continue
        try:
            c.weights[(node, port)] = float(weight)
        except (TypeError, ValueError):
            c.report(path, f"a loss weight is a number, got {weight!r}")
    if not c.problems and not c.weights:
        c.report("objective", "the objective names no loss node, so there is nothing to train")
    for name in c.step_nodes:
        for port, out in c.specs[name].cls.outputs.items():
            if out.type == LOSS and (name, port) not in c.weights and c.objective is not None:
                c.report(f"nodes.{name}", f"loss node {name!r} is not in the objective; "
                                          f"add it (weight 0 only logs it): objective: {{{name}: 1.0}}")


def unused_outputs(c: Check) -> None:
    used = {src for src, _ in c.weights}
    for name in c.step_nodes:
        if c.graph.out_degree(name) == 0 and name not in used:
            c.warnings.append(c.loaded.problem(f"nodes.{name}", "no node or objective uses this node's outputs", warning=True))


PASSES = (parse_nodes, resolve_calls, wire_inputs, module_references, data_cycles, weigh_objective, unused_outputs)


def build_graph(loaded: LoadedPipeline, nodes: dict[str, dict[str, Any]], objective: dict[str, float]) -> tuple[GraphSpec | None, list[Problem]]:
    c = Check(loaded, nodes, objective)
    for check in PASSES:
        check(c)
    if c.problems:
        return None, c.problems
    return GraphSpec(c.specs, c.graph, c.order, c.build_order, c.weights, c.warnings, c.module_edges), []
