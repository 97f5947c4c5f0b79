"""DINO, iBOT and DINOv2 as YAML: short end-to-end runs, node-set containment, no method branches.

- each pipeline runs end to end (`graphssl run` in a subprocess, tiny sizes) and exits 0;
- the DINOv2 run logs per-step collapse diagnostics to the node runs: temperature, center
  norms and teacher entropies on the teacher post-processing node, momentum on the teacher;
- DINOv2's Sinkhorn-Knopp option is one override (vars.centering=sinkhorn_knopp) and runs;
- iBOT's graph contains DINO's and DINOv2's contains iBOT's plus KoLeo, node by node with
  the same component (or the same call);
- no method name appears in a branch condition or an equality test of the framework code.
"""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import PIPELINES, REPO, graphssl_cmd, stage_run
from graphssl.loading import load_yaml

# Two steps on a one-block ViT, 2 local crops, a small head: seconds per run.
TINY = ["train.steps=2", "train.log_every=1", "data.limit=128", "data.batch_size=16", "eval.limit=50",
        "nodes.student.depth=1", "vars.n_local=2", "vars.prototypes=256", "nodes.head.hidden_dim=256",
        "device=cpu"]

METHODS = ("mae", "simmim", "beit", "eva", "ibot", "dino", "dinov2")


def run_pipeline(name: str, *overrides: str, experiment: str = "e2e") -> subprocess.CompletedProcess:
    result = subprocess.run(graphssl_cmd("run", str(PIPELINES / f"{name}.yaml"), *TINY, *overrides,
                                         "--experiment", experiment), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def node_runs(workdir: Path, experiment: str) -> tuple[object, dict[str, object]]:
    """The pipeline's (only) stage run and its node runs by node name."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    stage = stage_run(client, parent)
    children = {r.data.tags["graphssl.node"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id}
    return stage, children


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_pipeline_runs_end_to_end(workdir, name):
    run_pipeline(name)
    parent, children = node_runs(workdir, "e2e")
    assert parent.info.status == "FINISHED"
    assert {"loss", "knn_top1", "knn_top1_init"} <= set(parent.data.metrics)
    assert "momentum" in children["teacher"].data.metrics


@pytest.mark.slow
def test_dinov2_runs_and_logs_collapse_diagnostics_per_step(workdir):
    run_pipeline("dinov2")
    parent, children = node_runs(workdir, "e2e")
    assert parent.info.status == "FINISHED"
    assert {"loss", "knn_top1", "knn_top1_init"} <= set(parent.data.metrics)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    post = children["teacher_probs"]
    assert post.data.tags["graphssl.component"] == "post.center_sharpen"
    for key in ("temperature", "cls_center_norm", "cls_entropy", "patches_center_norm", "patches_entropy"):
        history = client.get_metric_history(post.info.run_id, key)
        assert [m.step for m in history] == [0, 1], key  # logged at every step (log_every=1)
    temps = [m.value for m in client.get_metric_history(post.info.run_id, "temperature")]
    assert temps[0] == pytest.approx(0.04)  # the warm-up starts at 0.04
    momentum = client.get_metric_history(children["teacher"].info.run_id, "momentum")
    assert [m.step for m in momentum] == [0, 1]
    assert 0.9 < momentum[0].value < 1.0
    assert "loss" in children["loss_koleo"].data.metrics


@pytest.mark.slow
def test_dinov2_sinkhorn_is_one_override(workdir):
    run_pipeline("dinov2", "vars.centering=sinkhorn_knopp", experiment="sk")
    parent, children = node_runs(workdir, "sk")
    assert parent.info.status == "FINISHED"
    post = children["teacher_probs"]
    assert post.data.tags["graphssl.component"] == "post.sinkhorn"
    assert post.data.params["n_iterations"] == "3"
    assert {"temperature", "cls_entropy", "patches_entropy"} <= set(post.data.metrics)


def resolved_nodes(name: str, *overrides: str) -> dict[str, dict]:
    return load_yaml(PIPELINES / f"{name}.yaml", list(overrides)).raw["nodes"]


def kind(node: dict) -> str:
    return f"type {node['type']}" if "type" in node else f"call {node['call']}"


def test_node_sets_nest_dino_ibot_dinov2():
    """ibot ⊇ dino and dinov2 = ibot + {loss_koleo}, by node name *and* component (or call).

    What is asserted, precisely: every DINO node exists in iBOT under the same name with the
    same ``type`` (or the same ``call``); iBOT adds exactly the masker and the patch loss;
    DINOv2 has exactly iBOT's nodes, each with the same type/call, plus one loss.koleo node.
    Parameters may differ (DINOv2's stratified masking, its untied weight-norm gain, ...).
    With the Sinkhorn override DINOv2's teacher_probs node changes type (post.sinkhorn): the
    node set, by name, is unchanged.
    """
    dino, ibot, dinov2 = (resolved_nodes(n) for n in ("dino", "ibot", "dinov2"))
    assert set(dino) <= set(ibot)
    assert {n: kind(dino[n]) for n in dino} == {n: kind(ibot[n]) for n in dino}
    assert {n: kind(ibot[n]) for n in set(ibot) - set(dino)} == {"mask": "type mask.block",
                                                                 "loss_mim": "type loss.ibot_patch"}
    assert set(dinov2) == set(ibot) | {"loss_koleo"}
    assert {n: kind(ibot[n]) for n in ibot} == {n: kind(dinov2[n]) for n in ibot}
    assert kind(dinov2["loss_koleo"]) == "type loss.koleo"
    sinkhorn = resolved_nodes("dinov2", "vars.centering=sinkhorn_knopp")
    assert set(sinkhorn) == set(dinov2) and kind(sinkhorn["teacher_probs"]) == "type post.sinkhorn"
    # the objectives nest the same way
    objectives = {n: load_yaml(PIPELINES / f"{n}.yaml").raw["objective"] for n in ("dino", "ibot", "dinov2")}
    assert set(objectives["dino"]) < set(objectives["ibot"]) < set(objectives["dinov2"])
    assert set(objectives["dinov2"]) - set(objectives["ibot"]) == {"loss_koleo"}


# ---------------------------------------------------------------- no method names in branches

def branch_words(tree: ast.AST):
    """(line, method names, source) for every condition or equality test that names a method.

    Looked at: if/elif/while/ternary conditions, comprehension filters, match patterns and any
    comparison with ==, !=, in, not in, is, is not. Names, attributes and string constants in
    them are split into words at non-alphanumerics; comments and docstrings are not code, so
    they never match.
    """
    exprs: dict[tuple[int, int], ast.AST] = {}  # by position: an if's test may also be a comparison
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            found = [node.test]
        elif isinstance(node, ast.comprehension):
            found = list(node.ifs)
        elif isinstance(node, ast.Match):
            found = [case.pattern for case in node.cases]
        elif isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)) for op in node.ops):
            found = [node]
        else:
            found = []
        exprs.update({(e.lineno, e.col_offset): e for e in found})
    for (line, _), expr in sorted(exprs.items()):
        words = set()
        for sub in ast.walk(expr):
            text = (sub.value if isinstance(sub, ast.Constant) and isinstance(sub.value, str)
                    else sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else None)
            if text is not None:
                words |= {w.lower() for w in re.split(r"[^A-Za-z0-9]+", text) if w}
        names = sorted(words & set(METHODS))
        if names:
            yield line, names, ast.unparse(expr)


def test_branch_scanner_catches_method_branches():
    code = '''
"""Docstring naming dino and mae is fine."""
# a comment about ibot is fine
def f(method, cfg):
    x = "dinov2"                      # an assignment is not a branch
    if method == "dino":
        pass
    elif cfg.use_ibot_loss:
        pass
    y = 1 if method in ("mae", "beit") else 2
    match method:
        case "eva":
            pass
    return [k for k in cfg if k != "SimMIM"]
'''
    found = [(line, names) for line, names, _ in branch_words(ast.parse(code))]
    assert found == [(6, ["dino"]), (8, ["ibot"]), (10, ["beit", "mae"]), (12, ["eva"]), (14, ["simmim"])]


def test_no_method_name_in_a_framework_branch():
    files = sorted((REPO / "graphssl").rglob("*.py"))
    assert len(files) > 10
    offending = [f"{path.relative_to(REPO)}:{line}: {names}: {source}"
                 for path in files for line, names, source in branch_words(ast.parse(path.read_text()))]
    assert offending == []
