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

from typing import Any

from graphssl.config import LoadedPipeline
from graphssl.errors import Problem
from graphssl.graph_edges import cycles_of, data_cycles, module_references, port_mismatch, unused_outputs, weigh_objective, wire_inputs
from graphssl.graph_nodes import RESERVED_KEYS, Check, owner_provides, parse_nodes, resolve_calls
from graphssl.spec import SOURCE, SOURCE_OUTPUTS, GraphSpec, ModuleEdge, ModuleRef, NodeSpec, Ref

__all__ = ["build_graph", "GraphSpec", "NodeSpec", "ModuleRef", "ModuleEdge", "Ref", "SOURCE", "SOURCE_OUTPUTS", "RESERVED_KEYS",
           "Check", "owner_provides", "port_mismatch", "cycles_of"]

PASSES = (parse_nodes, resolve_calls, wire_inputs, module_references, data_cycles, weigh_objective, unused_outputs)


def build_graph(loaded: LoadedPipeline, nodes: dict[str, dict[str, Any]], objective: dict[str, float]) -> tuple[GraphSpec | None, list[Problem]]:
    c = Check(loaded, nodes, objective)
    for check in PASSES:
        check(c)
    if c.problems:
        return None, c.problems
    return GraphSpec(c.specs, c.graph, c.order, c.build_order, c.weights, c.warnings, c.module_edges), []
