"""Training budgets (train.budget -> train.steps) and the compute axis (train_flops, graphssl compare --x)."""
from __future__ import annotations

import subprocess

import pytest
import torch
from mlflow import MlflowClient

from conftest import PIPELINES, graphssl_cmd, stage_run
from graphssl.budget import Budget, merge_train, resolve
from graphssl.plan import check_plan, plan_pipeline
from graphssl.cli import main
from graphssl.compare import RunSummary, find_runs
from graphssl.compare_plot import figure
from graphssl.runner import run

TINY = ["device=cpu", "data.batch_size=8", "data.limit=64", "eval.limit=20", "train.log_every=1", "train.steps=null"]
TINY_MAE = [*TINY, "nodes.encoder.depth=1", "nodes.decoder.depth=1"]
TINY_SIMMIM = [*TINY, "nodes.encoder.depth=1"]


# ----------------------------------------------------------------------------- resolution

def test_a_budget_buys_whole_steps_rounded_up_exactly():
    assert resolve(Budget(flops=2e15), 2 * 10**13, 64, None).steps == 100  # exact: never 101
    assert resolve(Budget(flops=2e15 + 1), 2 * 10**13, 64, None).steps == 101
    assert resolve(Budget(images=1000), 10**9, 64, None).steps == 16  # ceil(1000 / 64)
    assert resolve(Budget(images=1024), 10**9, 64, None).steps == 16
    assert resolve(Budget(epochs=0.1), 10**9, 64, 100).steps == 10  # 0.1 as written, not 0.1000000000000000055
    assert resolve(Budget(epochs=3), 10**9, 64, 937).steps == 2811
    assert resolve(Budget(images=1), 10**9, 64, None).steps == 1


def test_a_stage_budget_replaces_the_inherited_steps():
    assert merge_train({"steps": 200, "lr": 1.0}, {"budget": {"flops": 1e12}}) == {"lr": 1.0, "budget": {"flops": 1e12}}
    assert merge_train({"budget": {"flops": 1e12}}, {"steps": 5}) == {"steps": 5}
    assert merge_train({"steps": 200}, {"lr": 2.0}) == {"steps": 200, "lr": 2.0}
    plan = plan_pipeline(PIPELINES / "beit.yaml", ["stages.tokenizer.train.budget.images=640"])
    tokenizer, beit = (stage.prepared.cfg.train for stage in plan.stages.values())
    assert tokenizer.steps is None and tokenizer.budget.images == 640
    assert beit.steps == 200 and beit.budget is None


# ----------------------------------------------------------------------------- validation

def test_budget_and_steps_together_is_a_validation_error(workdir, capsys):
    assert main(["check", str(PIPELINES / "mae.yaml"), "train.budget.flops=1e12"]) == 2
    err = capsys.readouterr().err
    assert "train.steps: train.steps and train.budget are both set" in err and "train.steps=null" in err
    assert "mae.yaml:18:" in err  # the line of train.steps
    assert "Traceback" not in err
    assert main(["run", str(PIPELINES / "mae.yaml"), "train.budget.images=100"]) == 2
    assert list(workdir.iterdir()) == []  # no run, no store


def test_a_budget_is_one_of_flops_images_epochs_and_steps_or_budget_is_required(workdir, capsys):
    assert main(["check", str(PIPELINES / "mae.yaml"), "train.steps=null"]) == 2
    assert "give train.steps or train.budget" in capsys.readouterr().err
    assert main(["check", str(PIPELINES / "mae.yaml"), "train.steps=null", "train.budget={flops: 1e12, images: 5}"]) == 2
    assert "exactly one of flops, images, epochs (got flops, images)" in capsys.readouterr().err
    assert main(["check", str(PIPELINES / "mae.yaml"), "train.steps=null", "train.budget.flop=1e12"]) == 2
    assert 'did you mean "flops"' in capsys.readouterr().err


# ----------------------------------------------------------------------------- equal compute, end to end

@pytest.fixture(scope="module")
def equal_compute(tmp_path_factory):
    """A tiny MAE and a tiny SimMIM run at one FLOP budget, in a temporary store."""
    folder = tmp_path_factory.mktemp("budget")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    costs = {}
    for name, tiny in (("mae", TINY_MAE), ("simmim", TINY_SIMMIM)):
        plan = plan_pipeline(PIPELINES / f"{name}.yaml", [*tiny, "train.budget.images=8"])
        check_plan(plan, torch.device("cpu"))
        costs[name] = next(iter(plan.stages.values())).prepared.flops.total
    budget = 2.5 * max(costs.values())  # SimMIM: 3 steps; MAE about twice as many
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for name, tiny in (("mae", TINY_MAE), ("simmim", TINY_SIMMIM)):
            ids[name] = run(PIPELINES / f"{name}.yaml", [*tiny, f"train.budget.flops={budget!r}"], tracking_uri=uri,
                            experiment="equal", run_name=name, log=lambda *a: None)
    return uri, ids, costs, budget, folder


@pytest.mark.slow
def test_two_pipelines_at_one_flops_budget_end_within_one_step_of_it(equal_compute):
    uri, ids, costs, budget, _ = equal_compute
    client = MlflowClient(uri)
    finals = {}
    for name, parent_id in ids.items():
        run = stage_run(client, client.get_run(parent_id))  # the curves and the counts are the stage run's
        run_id = run.info.run_id
        per_step = int(run.data.params["flops_per_step"])
        assert per_step == costs[name]
        steps = int(run.data.params["train.steps"])  # the resolved steps are logged
        assert steps == -(-budget // per_step)
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_flops"))
        assert history == [(s, (s + 1) * per_step) for s in range(steps)]  # every step, cumulative
        finals[name] = history[-1][1]
        assert budget <= finals[name] < budget + per_step
        # evaluation metrics carry it at their steps
        knn_steps = {m.step for m in client.get_metric_history(run_id, "knn_top1")}
        assert knn_steps <= {s for s, _ in history}
        # node runs: their share of a step, summing to the run's; train_flops in their curves too
        children = client.search_runs([run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
        assert sum(int(c.data.params["flops_per_step"]) for c in children) == per_step
        encoder = next(c for c in children if c.data.tags["graphssl.node"] == "encoder")
        assert float(encoder.data.params["flops_per_image"]) > 0
        assert encoder.data.metrics["train_flops"] == finals[name]
    assert abs(finals["mae"] - finals["simmim"]) <= max(costs.values())
    steps = {name: int(stage_run(client, client.get_run(i)).data.params["train.steps"]) for name, i in ids.items()}
    assert steps["mae"] > steps["simmim"]


@pytest.mark.slow
def test_compare_draws_both_runs_on_one_flops_axis(equal_compute, capsys):
    uri, ids, costs, budget, folder = equal_compute
    runs = {r.name: r for r in find_runs(uri, "equal")}
    fig = figure(list(runs.values()), x="flops")
    loss_axis, top1_axis = fig.axes[0], fig.axes[1]
    assert loss_axis.get_xlabel().startswith("training FLOPs")
    lines = {line.get_label(): line for line in loss_axis.get_lines()}
    for name, r in runs.items():
        xs = list(lines[r.label].get_xdata())
        assert xs == [(s + 1) * costs[name] for s in range(r.steps)]  # the curve against cumulative FLOPs
        assert budget <= xs[-1] < budget + costs[name]
        knn = [line for line in top1_axis.get_lines() if line.get_label() == f"{r.label} knn_top1"][0]
        assert list(knn.get_xdata()) == [0.0, xs[-1]]  # at initialisation, then at the end
    ends = [line.get_xdata()[-1] for line in lines.values()]
    assert abs(ends[0] - ends[1]) <= max(costs.values())

    steps_fig = figure(list(runs.values()), x="steps")
    assert [list(line.get_xdata())[-1] for line in steps_fig.axes[0].get_lines()] == [float(r.steps) for r in runs.values()]
    images_fig = figure(list(runs.values()), x="images")
    assert list(images_fig.axes[0].get_lines()[0].get_xdata())[:2] == [8.0, 16.0]  # global batch 8
    time_fig = figure(list(runs.values()), x="time")
    time_x = list(time_fig.axes[0].get_lines()[0].get_xdata())
    assert time_x == sorted(time_x) and time_x[0] > 0

    picture = folder / "flops.png"
    assert main(["compare", "--tracking-uri", uri, "--experiment", "equal", "--x", "flops", "-o", str(picture)]) == 0
    out = capsys.readouterr().out
    assert "FLOPs" in out and "FLOP/s" in out and "MFU" in out and picture.stat().st_size > 10_000
    row = next(line for line in out.splitlines() if "simmim" in line)
    assert f"{runs['simmim'].total_flops:.3g}" in row


def test_mfu_is_achieved_over_peak_where_the_peak_is_known():
    r = RunSummary("id", "r", "mae", "FINISHED", 0, 10, None, {}, {}, cumulative={"time": {10: 2.0}},
                   per_step={"flops": 1e12}, peak_flops=989e12)
    assert r.total_flops == 1e13 and r.flops_per_s == 5e12 and r.mfu == pytest.approx(5e12 / 989e12)
    assert RunSummary("id", "r", "mae", "FINISHED", 0, 10, None, {}, {}, per_step={"flops": 1e12}).mfu is None


@pytest.mark.slow
def test_a_budget_run_is_the_run_with_its_resolved_steps(tmp_path, monkeypatch):
    """Schedules (warm-up, cosine) follow the resolved steps: the same losses as the same steps given directly."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = [run(PIPELINES / "mae.yaml", [*TINY_MAE, extra, "train.warmup=0.5"], tracking_uri=uri, experiment="same",
               log=lambda *a: None) for extra in ("train.budget.images=20", "train.steps=3")]  # ceil(20 / 8) = 3
    client = MlflowClient(uri)
    stages = [stage_run(client, client.get_run(i)).info.run_id for i in ids]
    losses = [[(m.step, m.value) for m in sorted(client.get_metric_history(i, "loss"), key=lambda m: m.step)] for i in stages]
    lrs = [[m.value for m in sorted(client.get_metric_history(i, "lr"), key=lambda m: m.step)] for i in stages]
    assert len(losses[0]) == 3 and losses[0] == losses[1] and lrs[0] == lrs[1]
    assert client.get_run(stages[0]).data.params["train.steps"] == "3"
    assert client.get_run(stages[0]).data.params["train.budget.images"] == "20"


@pytest.mark.slow
def test_under_two_processes_a_budget_counts_both(workdir):
    """The budget is global: 2 processes of batch 8 see 16 images and spend twice one process's FLOPs per step."""
    result = subprocess.run(graphssl_cmd("run", str(PIPELINES / "mae.yaml"), *TINY_MAE, "train.budget.images=40",
                                         "--nproc-per-node", "2"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train.budget.images=40 -> 3 steps (16 images per step" in result.stdout  # ceil(40 / 16)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("graphssl").experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    run = stage_run(client, parent)
    params = run.data.params
    assert params["train.steps"] == "3" and params["global_batch"] == "16" and params["world_size"] == "2"
    plan = plan_pipeline(PIPELINES / "mae.yaml", [*TINY_MAE, "train.budget.images=40"])
    check_plan(plan, torch.device("cpu"))
    one_process = next(iter(plan.stages.values())).prepared.flops.total
    assert int(params["flops_per_step"]) == 2 * one_process
    assert run.data.metrics["train_flops"] == 3 * 2 * one_process


def test_a_staged_pipeline_counts_every_stage_on_the_compute_axis(tmp_path):
    from graphssl.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'staged.db'}"
    t = Tracker(uri, "staged")
    parent = t.create_run("eva", {"graphssl.pipeline": "eva"})
    teacher = t.create_run("teacher", {"graphssl.stage": "teacher"}, parent=parent)
    student = t.create_run("student", {"graphssl.stage": "student"}, parent=parent)
    for run_id, per_step, steps in ((teacher, 10.0, 4), (student, 100.0, 2)):
        t.log_params(run_id, {"flops_per_step": str(per_step), "global_batch": "8", "train.steps": str(steps)})
        for step in range(steps):
            t.metric(run_id, "loss", 1.0, step)
            t.metric(run_id, "step_time_s", 0.5, step)
            t.metric(run_id, "train_flops", (step + 1) * per_step, step)
    t.flush()
    for run_id in (teacher, student, parent):
        t.end_run(run_id)
    (summary,) = find_runs(uri, "staged")
    assert summary.steps == 2  # the last stage's curves
    assert [summary.x("flops", n) for n in (0, 1, 2)] == [40.0, 140.0, 240.0]  # after the teacher's 4 x 10
    assert [summary.x("images", n) for n in (0, 2)] == [32.0, 48.0]
    assert summary.x("time", 2) == 3.0 and summary.total_flops == 240.0 and summary.flops_per_s == 80.0


def test_an_epochs_budget_counts_the_training_set(workdir, capsys):
    assert main(["check", str(PIPELINES / "mae.yaml"), *TINY_MAE, "train.budget.epochs=2.5"]) == 0
    assert "train.budget.epochs=2.5 -> 20 steps" in capsys.readouterr().out  # 64 images // 8 = 8 steps an epoch
