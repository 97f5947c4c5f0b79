"""The tracking store under stress: a refused metric is not an outage, a failure after a run exists leaves no
run RUNNING, two runs may set up a fresh SQLite store at once, and a resumed run logs no step twice."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from graphssl import tracking
from graphssl.cli import main
from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import LOSS, TOKENS
from graphssl import registry
from hardening import VIT, all_runs, parent_of, store, tiny, write

FAIL = {"at": None}  # the training step at which test.hardening_loss raises, when set


class HardeningLoss(Component):
    """Mean square of the tokens; logs a metric, optionally one the store refuses; fails at FAIL["at"]."""

    class Config(ComponentConfig):
        refused_metric: bool = False

    inputs = {"tokens": In(TOKENS, "tokens")}
    outputs = {"loss": Out(LOSS, "mean square")}

    def before_step(self, progress):
        if FAIL["at"] is not None and progress.step == FAIL["at"]:
            raise RuntimeError(f"injected failure at step {progress.step}")

    def forward(self, tokens):
        self.log("tokens_seen", tokens.shape[0])
        if self.config.refused_metric:
            self.log("top1@5", 0.5)  # '@': MLflow refuses the key
        return {"loss": tokens.pow(2).mean()}


def pipeline(**loss_config) -> dict:
    nodes = {"view": {"type": "augment.crop", "images": "batch.images"},
             "encoder": {**VIT, "images": "view.images"},
             "loss": {"type": "test.hardening_loss", "tokens": "encoder.patches", **loss_config}}
    return tiny(nodes=nodes)


@pytest.fixture(autouse=True)
def hardening_loss():
    """test.hardening_loss registered for the test, with no failure injected unless the test sets one."""
    FAIL["at"] = None
    with registry.scope({"test.hardening_loss": HardeningLoss}):
        yield
    FAIL["at"] = None


# -- a refused metric is not an outage ---------------------------------------------------------------
def refused_batch_is_retried(uri: str) -> None:
    tracker = tracking.Tracker(uri, "refusals")
    warnings: list[str] = []
    tracker.warn = warnings.append
    run = tracker.create_run("r", {})
    for step in range(45):
        tracker.metric(run, "loss", 1.0 / (step + 1), step)
        tracker.metric(run, "top1@5", 0.5, step)
    assert tracker.flush()  # delivered: the store answered
    history = tracker.client.get_metric_history(run, "loss")
    assert sorted(m.step for m in history) == list(range(45))  # the other metric lost nothing
    assert len(warnings) == 1 and "refused 45 point(s) of the metric 'top1@5'" in warnings[0]
    assert "cannot be reached" not in warnings[0] and not tracker.unreachable_since
    for step in range(45, 50):
        tracker.metric(run, "loss", 0.0, step)
        tracker.metric(run, "top1@5", 0.5, step)
    assert tracker.flush()
    assert len(tracker.client.get_metric_history(run, "loss")) == 50
    assert len(warnings) == 1  # reported once; the key's later points are set aside without asking again
    assert len(tracker.refused) == 50 and {m.key for _, m in tracker.refused} == {"top1@5"}


def test_a_refused_metric_does_not_hold_up_the_others_in_sqlite(workdir):
    refused_batch_is_retried(f"sqlite:///{workdir / 'store.db'}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_refused_metric_does_not_hold_up_the_others_on_a_server(workdir):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{workdir / 'server.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                tracking.probe_server(f"http://127.0.0.1:{port}", timeout=2)
                break
            except tracking.TrackingError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        refused_batch_is_retried(f"http://127.0.0.1:{port}")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_a_metric_refused_mid_run_keeps_the_other_metrics_and_the_run_finishes(workdir, capsys):
    path = write(workdir / "p.yaml", pipeline(refused_metric=True))
    assert main(["run", str(path), "train.steps=4"]) == 0
    out = capsys.readouterr().out
    told = [line for line in out.splitlines() if line.startswith("warning:") and "refused" in line]
    assert len(told) == 2, told  # once for the key, once for the file that holds its points
    assert "the metric 'top1@5'" in told[0] and "refused_metrics.jsonl" in told[1]
    assert "cannot be reached" not in out
    client = store(workdir)
    runs = all_runs(client)
    assert all(r.info.status == "FINISHED" for r in runs)
    stage = next(r for r in runs if r.data.tags.get("graphssl.stage") == "tiny")
    node = next(r for r in runs if r.data.tags.get("graphssl.node") == "loss")
    assert sorted(m.step for m in client.get_metric_history(stage.info.run_id, "loss")) == [0, 1, 2, 3]
    assert sorted(m.step for m in client.get_metric_history(node.info.run_id, "tokens_seen")) == [0, 1, 2, 3]
    kept = workdir / "checkpoints" / parent_of(runs).info.run_id / "refused_metrics.jsonl"
    points = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [(p["key"], p["step"]) for p in points] == [("top1@5", s) for s in range(4)]


# -- a failure after a run exists ------------------------------------------------------------------------
def test_a_failure_during_training_marks_the_run_and_every_child_run_failed(workdir, capsys):
    FAIL["at"] = 1
    assert main(["run", str(write(workdir / "p.yaml", pipeline())), "train.steps=3"]) == 1
    assert "injected failure at step 1" in capsys.readouterr().err
    runs = all_runs(store(workdir))
    assert len(runs) == 5  # parent, stage, 3 nodes
    assert {r.info.status for r in runs} == {"FAILED"}


def test_a_failure_while_the_node_runs_are_created_leaves_none_running(workdir, monkeypatch, capsys):
    original = tracking.Tracker.log_params

    def refuse_the_encoder(self, run_id, params):
        if "embed_dim" in params:
            raise RuntimeError("injected: the store went wrong")
        return original(self, run_id, params)

    monkeypatch.setattr(tracking.Tracker, "log_params", refuse_the_encoder)
    assert main(["run", str(write(workdir / "p.yaml", pipeline()))]) == 1
    assert "injected: the store went wrong" in capsys.readouterr().err
    runs = all_runs(store(workdir))
    assert len(runs) >= 3  # parent, stage and the node runs made before the failure
    assert {r.info.status for r in runs} == {"FAILED"}


# -- two runs setting up a fresh store at once ---------------------------------------------------------------
START_AT = """
import sys, time
import mlflow  # imported before the start signal: both processes reach the store together
from graphssl.tracking import Tracker
uri, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
tracker = Tracker(uri, "graphssl")
tracker.end_run(tracker.create_run("started", {}))
print("started")
"""


def test_two_runs_starting_together_on_a_fresh_sqlite_store_both_start(workdir):
    script = workdir / "start.py"
    script.write_text(START_AT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for round_ in range(2):
        uri = f"sqlite:///{workdir / f'fresh{round_}.db'}"
        start = str(time.time() + 12)  # time for both to import
        procs = [subprocess.Popen([sys.executable, str(script), uri, start], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
        results = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, results):
            assert p.returncode == 0 and "started" in out, err[-2000:]
        assert len(all_runs(store(workdir, f"fresh{round_}.db"))) == 2


# -- resume: replayed steps are logged once --------------------------------------------------------------------
def test_steps_replayed_after_a_resume_are_not_logged_twice(workdir, capsys):
    path = write(workdir / "p.yaml", pipeline())
    overrides = ["train.steps=8", "train.checkpoint_every=2", "deterministic=true"]
    FAIL["at"] = 5  # steps 0-4 are logged; the newest checkpoint continues at step 4
    assert main(["run", str(path), *overrides]) == 1
    client = store(workdir)
    run_id = parent_of(all_runs(client)).info.run_id
    FAIL["at"] = None
    assert main(["run", str(path), *overrides, "--resume", run_id]) == 0
    assert f"resuming at step 4/8" in capsys.readouterr().out
    runs = all_runs(client)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key, sorted(steps))
    stage = next(r for r in runs if r.data.tags.get("graphssl.stage") == "tiny")
    assert sorted(m.step for m in client.get_metric_history(stage.info.run_id, "loss")) == list(range(8))
    assert torch.is_grad_enabled()
