"""End to end: `graphssl run` of MAE in a subprocess, tracked into a temporary SQLite store."""
from __future__ import annotations

import subprocess

import pytest
from mlflow import MlflowClient

from conftest import PIPELINES, graphssl_cmd
from graphssl.tracking import Tracker, flatten

TINY_MAE = ["train.steps=4", "train.log_every=2", "data.limit=256", "data.batch_size=16", "eval.limit=64",
            "nodes.encoder.depth=1", "nodes.decoder.depth=1", "device=cpu"]


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "x"}


def test_tracker_batches_metrics_into_sqlite(workdir):
    uri = f"sqlite:///{workdir / 'store.db'}"
    tracker = Tracker(uri, "exp")
    parent = tracker.create_run("parent", {"graphssl.pipeline": "p"})
    child = tracker.create_run("node", {"graphssl.node": "n"}, parent=parent)
    for step in range(5):
        tracker.metric(parent, "loss", 1.0 / (step + 1), step)
        tracker.metric(child, "loss", 2.0, step)
    client = MlflowClient(uri)
    assert client.get_metric_history(parent, "loss") == []  # buffered until flush
    tracker.flush()
    history = client.get_metric_history(parent, "loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent


@pytest.mark.slow
def test_graphssl_run_mae_logs_parent_stage_and_node_runs(workdir):
    result = subprocess.run(graphssl_cmd("run", str(PIPELINES / "mae.yaml"), *TINY_MAE, "--experiment", "e2e"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["graphssl.pipeline"] == "mae"
    assert parent.data.tags["graphssl.uses.mask.random"] == "true"
    assert parent.data.params["train.steps"] == "4"
    assert parent.data.params["nodes.encoder.depth"] == "1"
    assert set(parent.data.metrics) == {"knn_top1", "knn_top1_init", "linear_top1", "linear_top1_init"}  # the final evaluation
    (stage,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert stage.data.tags["graphssl.stage"] == "mae" and stage.info.status == "FINISHED"
    for key in ("loss", "lr", "images_per_s", "step_time_s", "data_wait_s", "knn_top1", "knn_top1_init", "linear_top1"):
        assert key in stage.data.metrics, key
    assert len(client.get_metric_history(stage.info.run_id, "loss")) == 4
    children = {r.data.tags["graphssl.node"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id}
    assert set(children) == {"view", "mask", "encoder", "decoder", "target", "loss", "knn", "linear"}
    assert children["mask"].data.tags["graphssl.component"] == "mask.random"
    assert children["mask"].data.params["ratio"] == "0.75"
    assert children["mask"].data.metrics["mask_ratio"] == pytest.approx(0.75)
    assert "time_per_call_ms" in children["encoder"].data.metrics
    assert "loss" in children["loss"].data.metrics
    assert "knn_top1" in children["knn"].data.metrics
    assert 0 <= children["linear"].data.metrics["linear_top1"] <= 1
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"pipeline.yaml"}
    assert {"graph.png", "model"} <= {a.path for a in client.list_artifacts(stage.info.run_id)}
    assert not (workdir / "checkpoints").exists()  # no train.checkpoint_every: the trained weights are stored once, in the run


def test_invalid_pipeline_exits_2_without_run(workdir):
    bad = workdir / "bad.yaml"
    text = (PIPELINES / "mae.yaml").read_text()
    text = text.replace("type: mask.random,", "type: mask.randon,").replace("norm_pix: true", "norm_pixels: true")
    bad.write_text(text)
    result = subprocess.run(graphssl_cmd("run", str(bad)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "nodes.mask.type" in result.stderr and 'did you mean "mask.random"' in result.stderr
    assert "nodes.target.norm_pixels" in result.stderr and 'did you mean "norm_pix"' in result.stderr
    assert "2 errors" in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.yaml"]  # no mlflow.db, nothing written
