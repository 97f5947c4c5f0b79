"""`graphssl compare`: real MLflow stores filled by real short runs (and by Tracker calls), never mocks.

Also checks that evaluators (k-NN and the linear probe) run every ``eval.every``
steps and at the end, and that parent runs carry the tags the UI filters on.
"""
from __future__ import annotations

import re

import matplotlib.image
import pytest
from mlflow import MlflowClient

from conftest import PIPELINES
from graphssl.cli import main
from graphssl.compare import find_runs
from graphssl.runner import run
from graphssl.tracking import Tracker

EVAL_METRICS = ("knn_top1", "linear_top1")  # what mae.yaml's evaluators log
TINY_MAE = ["train.steps=4", "train.log_every=2", "eval.every=2", "data.limit=128", "data.batch_size=16", "eval.limit=60",
            "nodes.encoder.depth=1", "nodes.decoder.depth=1", "device=cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two short MAE runs (mask ratio 0.75 and 0.5) in a temporary SQLite store."""
    folder = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # checkpoints/ and the store's artifacts (mlruns/) go to the working directory
        ids = [run(PIPELINES / "mae.yaml", TINY_MAE, tracking_uri=uri, experiment="cmp", run_name="mae-r75",
                   log=lambda *a: None),
               run(PIPELINES / "mae.yaml", [*TINY_MAE, "nodes.mask.ratio=0.5"], tracking_uri=uri, experiment="cmp",
                   run_name="mae-r50", log=lambda *a: None)]
    return uri, ids, folder


@pytest.mark.slow
def test_find_runs_summarises_the_newest_parent_runs(store):
    uri, ids, _ = store
    runs = find_runs(uri, "cmp")
    assert [r.run_id for r in runs] == ids  # parents only, oldest first
    for r in runs:
        assert r.pipeline == "mae" and r.status == "FINISHED" and r.steps == 4
        assert [s for s, _ in r.curves["loss"]] == [0, 1, 2, 3]
        assert r.images_per_s > 0 and r.losses["loss"] == pytest.approx(r.curves["loss"][-1][1])
        for key in EVAL_METRICS:
            # at initialisation (step 0), after step 2 (eval.every=2) and at the end (step 4)
            assert [s for s, _ in r.curves[key]] == [0, 2, 4], key
            assert 0 <= r.final[key] <= 1 and r.final[key] == pytest.approx(r.curves[key][-1][1])
    assert find_runs(uri, "cmp", limit=1)[0].run_id == ids[1]


@pytest.mark.slow
def test_evaluators_log_every_eval_every_steps_on_stage_and_node_runs_and_the_final_value_on_the_parent(store):
    uri, ids, _ = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cmp")
    (stage,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{ids[0]}'")
    assert stage.data.tags["graphssl.stage"] == "mae" and client.get_run(ids[0]).data.tags["graphssl.stage.mae.run"] == stage.info.run_id
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{stage.info.run_id}'")
    by_node = {r.data.tags["graphssl.node"]: r for r in children}
    assert by_node["linear"].data.tags["graphssl.component"] == "eval.linear"
    assert [m.step for m in client.get_metric_history(by_node["linear"].info.run_id, "linear_top1")] == [1, 3]
    assert [m.step for m in client.get_metric_history(by_node["knn"].info.run_id, "knn_top1")] == [1, 3]
    assert [m.step for m in client.get_metric_history(stage.info.run_id, "linear_top1")] == [1, 3]
    final = client.get_metric_history(ids[0], "linear_top1")  # the parent: the final value, at the last step
    assert [m.step for m in final] == [3] and final[0].value == stage.data.metrics["linear_top1"]


@pytest.mark.slow
def test_parent_runs_carry_pipeline_and_component_tags(store):
    uri, ids, _ = store
    client = MlflowClient(uri)
    tags = client.get_run(ids[0]).data.tags
    assert tags["graphssl.pipeline"] == "mae"
    assert {"mask.random", "eval.linear", "eval.knn"} <= set(tags["graphssl.components"].split(","))
    exp = client.get_experiment_by_name("cmp")
    found = client.search_runs([exp.experiment_id], filter_string='tags."graphssl.uses.mask.random" = "true"')
    assert {r.info.run_id for r in found} == set(ids)
    assert client.search_runs([exp.experiment_id], filter_string='tags."graphssl.uses.mask.block" = "true"') == []


@pytest.mark.slow
def test_compare_command_prints_the_table_and_draws_the_picture(store, capsys):
    uri, ids, folder = store
    picture = folder / "report.png"
    assert main(["compare", "--tracking-uri", uri, "--experiment", "cmp", "-o", str(picture)]) == 0
    out = capsys.readouterr().out
    for word in ("pipeline", "steps", "images/s", "loss", "knn_top1", "linear_top1", "mae-r75", "mae-r50", ids[0][:8]):
        assert word in out, word
    row = next(line for line in out.splitlines() if "mae-r50" in line)
    assert re.search(r"\b4\b", row) and row.count("(init 0.") == 2
    image = matplotlib.image.imread(picture)
    assert image.shape[0] > 300 and image.shape[1] > 1000 and image[..., :3].std() > 0.05  # not blank

    # by name and by id prefix; an unknown one is a clear error
    assert main(["compare", "--tracking-uri", uri, "--experiment", "cmp", "mae-r50", ids[0][:10]]) == 0
    out = capsys.readouterr().out
    assert out.index("mae-r50") < out.index("mae-r75")
    assert main(["compare", "--tracking-uri", uri, "--experiment", "cmp", "nope"]) == 1
    assert "no run in experiment 'cmp'" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", uri, "--experiment", "missing"]) == 1
    assert "no experiment 'missing'" in capsys.readouterr().err


def test_staged_runs_take_their_curves_from_the_last_stage(tmp_path):
    uri = f"sqlite:///{tmp_path / 'staged.db'}"
    t = Tracker(uri, "staged")
    parent = t.create_run("beit", {"graphssl.pipeline": "beit", "graphssl.eval_metrics": "knn_top1,knn_top1_init"})
    first = t.create_run("tokenizer", {"graphssl.stage": "tokenizer"}, parent=parent)
    second = t.create_run("pretrain", {"graphssl.stage": "pretrain"}, parent=parent)
    for step in range(3):
        t.metric(first, "loss", 9.0, step)
        t.metric(second, "loss", 3.0 - step, step)
        t.metric(second, "images_per_s", 100.0 + step, step)
    t.metric(second, "knn_top1_init", 0.2, 0)
    t.metric(second, "knn_top1", 0.5, 2)
    t.metric(parent, "knn_top1", 0.5, 2)
    t.flush()
    for run_id in (first, second, parent):
        t.end_run(run_id)
    (summary,) = find_runs(uri, "staged")
    assert summary.name == "beit" and summary.steps == 3
    assert summary.curves["loss"] == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert summary.curves["knn_top1"] == [(0, 0.2), (3, 0.5)]
    assert summary.final["knn_top1"] == 0.5 and summary.images_per_s == pytest.approx(101.5)


def test_compare_without_a_store_says_so_and_creates_nothing(workdir, capsys):
    assert main(["compare"]) == 1
    assert "no tracking store at sqlite:///" in capsys.readouterr().err
    assert list(workdir.iterdir()) == []
