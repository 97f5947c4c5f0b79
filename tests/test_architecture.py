"""The framework's shape: layers without import circles, small files, MLflow only in its plugin."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "graphssl"


def module_imports() -> nx.DiGraph:
    """graphssl.X -> graphssl.Y for every import of a graphssl module at module level or in a function."""
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        if "components" in path.relative_to(PACKAGE).parts:
            continue  # the symlinked component library in a development tree
        name = "graphssl." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        graph.add_node(name)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                node.body = []  # typing-only imports are no dependency
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graphssl."):
                target = node.module
            elif isinstance(node, ast.Import):
                target = next((a.name for a in node.names if a.name.startswith("graphssl.")), None)
            else:
                continue
            if target and not target.startswith("graphssl.components") and target != name:
                graph.add_edge(name, target)
    return graph


def test_no_import_circle_and_planning_above_building_above_artifacts():
    graph = module_imports()
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], f"import circles: {cycles}"
    assert "graphssl.plan" not in nx.descendants(graph, "graphssl.build")
    assert "graphssl.build" not in nx.descendants(graph, "graphssl.artifacts")
    assert "graphssl.build" in nx.descendants(graph, "graphssl.plan")


def test_no_framework_file_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if "components" not in p.relative_to(PACKAGE).parts and (n := len(p.read_text().splitlines())) > 300}
    assert long == {}


def test_the_runner_makes_no_mlflow_call_of_its_own():
    tree = ast.parse((PACKAGE / "runner.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] == "mlflow" or m == "graphssl.tracking"}
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not attributes & {"client", "tracker", "log_batch", "log_artifact", "set_terminated", "search_runs"}
