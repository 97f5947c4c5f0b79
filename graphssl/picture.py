"""A picture of a pipeline graph (matplotlib), layered in execution order."""
from __future__ import annotations

from pathlib import Path

import networkx as nx

from graphssl.graph import SOURCE, GraphSpec

ROLE_COLORS = {"source": "#d9d9d9", "step": "#9ecae1", "call": "#c6dbef", "owner": "#fdae6b", "evaluator": "#a1d99b", "loss": "#fc9272"}


def picture_graph(spec: GraphSpec) -> nx.DiGraph:
    """The data edges, and dashed module edges from the node holding a module to the owner or evaluator that
    reads it and to the call nodes that run an owner's copy (a call of a node's own module is its label)."""
    g = nx.DiGraph()
    g.add_node(SOURCE)
    g.add_edges_from(spec.graph.edges(data=True))
    g.add_nodes_from(spec.nodes)
    for edge in spec.module_edges:
        if edge.via != "call" or edge.ref.owner is not None:
            g.add_edge(edge.ref.root, edge.user, module=True)
    return g


def draw_graph(spec: GraphSpec, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = picture_graph(spec)
    for layer, nodes in enumerate(nx.topological_generations(g)):
        for n in nodes:
            g.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal", scale=2)
    pos = {n: (x, -y) for n, (x, y) in pos.items()}

    def color(n: str) -> str:
        if n == SOURCE:
            return ROLE_COLORS["source"]
        node = spec.nodes[n]
        if any(ref[0] == n for ref in spec.objective):
            return ROLE_COLORS["loss"]
        return ROLE_COLORS["call" if node.call else node.role]

    def label(n: str) -> str:
        if n == SOURCE:
            return "batch"
        node = spec.nodes[n]
        return f"{n}\n{f'call {node.call}' if node.call else node.type_name}"

    width = max(6, 2.2 * max(len(ns) for ns in nx.topological_generations(g)))
    fig, ax = plt.subplots(figsize=(width, 1.4 * (max(d["layer"] for _, d in g.nodes(data=True)) + 2)))
    data_edges = [(a, b) for a, b, d in g.edges(data=True) if not d.get("module")]
    module_edges = [(a, b) for a, b, d in g.edges(data=True) if d.get("module")]
    nx.draw_networkx_edges(g, pos, edgelist=data_edges, ax=ax, arrows=True, arrowsize=12, node_size=2600)
    nx.draw_networkx_edges(g, pos, edgelist=module_edges, ax=ax, arrows=True, style="dashed", edge_color="#e6550d", node_size=2600)
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=[color(n) for n in g.nodes], node_shape="s", node_size=2600)
    nx.draw_networkx_labels(g, pos, labels={n: label(n) for n in g.nodes}, font_size=7, ax=ax)
    ax.set_title(title + "  (solid: data, dashed: module copy / evaluation)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
