"""Graph validation, passes 3 to 7 (see :mod:`graphssl.graph`): data edges and port types, module
references and the construction order, cycles, the objective, unused outputs."""
from __future__ import annotations

from typing import Any

import networkx as nx

from graphssl.component import In
from graphssl.errors import did_you_mean
from graphssl.graph_nodes import Check
from graphssl.ports import LOSS, PortType
from graphssl.spec import SOURCE, SOURCE_OUTPUTS, ModuleEdge, ModuleRef, Ref


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
