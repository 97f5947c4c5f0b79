"""Every run logs its encoder as an MLflow model (metrics attached, optionally registered), its dataset as
its input, and with --system-metrics MLflow's system metrics; against a real SQLite store."""
from __future__ import annotations

import json
import re

import mlflow.pytorch
import pytest
import timm
import torch
from mlflow import MlflowClient

from conftest import PIPELINES, stage_run
from graphssl.cli import main

TINY_MAE = ["train.steps=2", "data.limit=64", "data.batch_size=8", "eval.limit=20", "nodes.encoder.depth=1",
            "nodes.decoder.depth=1", "device=cpu"]


@pytest.fixture(scope="module")
def registered_run(tmp_path_factory):
    """A tiny MAE run with --register and --system-metrics (sampled every 0.2 s): (folder, client, parent, stage run)."""
    folder = tmp_path_factory.mktemp("mlflow_models")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
        assert main(["run", str(PIPELINES / "mae.yaml"), *TINY_MAE, "--register", "mae-encoder", "--system-metrics"]) == 0
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("graphssl").experiment_id
    parent = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" not in r.data.tags][0]
    return folder, client, parent, stage_run(client, parent)


@pytest.mark.slow
def test_the_run_logs_its_encoder_as_a_model_with_its_metrics(registered_run):
    folder, client, parent, run = registered_run  # the model belongs to the stage run that trained it
    models = client.search_logged_models([run.info.experiment_id])
    assert len(models) == 1
    model = models[0]
    assert model.source_run_id == run.info.run_id and model.status.name == "READY"
    assert model.tags["graphssl.node"] == "encoder" and model.tags["graphssl.feature"] == "mean"
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [model.model_id]
    attached = {m.key: m.value for m in model.metrics}
    for key in ("knn_top1", "linear_top1"):
        assert attached[key] == run.data.metrics[key]
    # loading needs only timm: the bare timm module, whose features are those of the exported folder
    loaded = mlflow.pytorch.load_model(f"models:/{model.model_id}")
    assert type(loaded) is timm.models.vision_transformer.VisionTransformer
    local = mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=str(folder / "model"),
                                                tracking_uri=client.tracking_uri)
    reqs = open(f"{local}/requirements.txt").read()
    assert re.search(r"^timm==", reqs, re.M) and re.search(r"^torch==", reqs, re.M)
    meta = mlflow.models.Model.load(local).metadata["timm_config"]
    assert meta["model_args"]["global_pool"] == "avg" and meta["model_args"]["fc_norm"] is False
    assert main(["export", parent.info.run_id, "-o", str(folder / "exported"), "--tracking-uri", client.tracking_uri]) == 0
    exported = timm.create_model(f"local-dir:{folder / 'exported'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().forward_head(loaded.forward_features(x), pre_logits=True),
                                   exported.forward_head(exported.forward_features(x), pre_logits=True), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_register_creates_a_version_of_the_run(registered_run):
    _, client, _, run = registered_run
    versions = client.search_model_versions("name='mae-encoder'")
    assert [(v.version, v.run_id, v.status) for v in versions] == [(1, run.info.run_id, "READY")]


@pytest.mark.slow
def test_the_dataset_is_the_runs_input(registered_run):
    _, client, _, run = registered_run
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "fashion_mnist" and re.fullmatch(r"[0-9a-f]{16}", dataset.digest)
    assert json.loads(dataset.source)["uri"].endswith("fashion-mnist")
    assert json.loads(dataset.profile)["train_images"] == 64
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "train"


@pytest.mark.slow
def test_system_metrics_are_logged(registered_run):
    _, client, run, _ = registered_run  # on the parent run, for the whole run
    keys = client.get_run(run.info.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in keys and "system/system_memory_usage_megabytes" in keys


@pytest.mark.slow
def test_each_stage_logs_its_model_and_the_last_one_is_registered(workdir):
    stages = [f"stages.{s}.nodes.encoder.depth=1" for s in ("teacher", "student")]
    assert main(["run", str(PIPELINES / "eva.yaml"), "train.steps=2", "data.limit=64", "data.batch_size=8", "eval.limit=20",
                 "stages.teacher.nodes.decoder.depth=1", *stages, "device=cpu", "--register", "eva-encoder"]) == 0
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("graphssl").experiment_id
    stage_runs = {r.data.tags["graphssl.stage"]: r.info.run_id for r in client.search_runs([experiment])
                  if "graphssl.stage" in r.data.tags}
    models = {m.source_run_id for m in client.search_logged_models([experiment])}
    assert models == set(stage_runs.values())
    assert [v.run_id for v in client.search_model_versions("name='eva-encoder'")] == [stage_runs["student"]]
