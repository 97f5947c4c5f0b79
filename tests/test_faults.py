"""Faults during a run: a non-finite loss, the tracking server away, reproducibility."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch
from mlflow import MlflowClient

from conftest import PIPELINES, graphssl_cmd, stage_run
from support.mlflow_ui import wait_until_healthy
from graphssl import checkpoint, registry
from graphssl.cli import main
from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.ports import LOSS, TOKENS

TINY = ["train.log_every=1", "data.limit=256", "data.batch_size=16", "eval.limit=50", "nodes.encoder.depth=1",
        "nodes.decoder.depth=1", "device=cpu"]


class NanAfter(Component):
    """Mean of the tokens; NaN from call ``after`` on."""

    class Config(ComponentConfig):
        after: int = 3

    inputs = {"tokens": In(TOKENS, "tokens")}
    outputs = {"loss": Out(LOSS, "mean, then NaN")}

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.calls = 0

    def forward(self, tokens):
        self.calls += 1
        loss = tokens.pow(2).mean()
        return {"loss": loss * float("nan") if self.calls > self.config.after else loss}


@pytest.fixture
def nan_component():
    with registry.scope({"test.nan_after": NanAfter}):
        yield


def test_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(workdir, capsys, nan_component):
    pipeline = workdir / "nan.yaml"
    pipeline.write_text("""
name: nan
data: {image_size: 16, batch_size: 8, limit: 64}
train: {steps: 10, lr: 1.0e-3, checkpoint_every: 2, log_every: 1}
eval: {limit: 20}
nodes:
  encoder: {type: encoder.vit, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2, images: batch.images}
  loss: {type: test.nan_after, after: 4, tokens: encoder.patches}
objective: {loss: 1.0}
""")
    code = main(["run", str(pipeline), "device=cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "non-finite loss at step" in err and "Traceback" not in err
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("graphssl").experiment_id])
              if "mlflow.parentRunId" not in r.data.tags]
    assert run.info.status == "FAILED"
    stage = client.get_run(run.data.tags["graphssl.stage.nan.run"])
    assert stage.info.status == "FAILED"
    # the dry run builds its own modules, so call 5 is training step 4, the first NaN
    assert stage.data.tags["graphssl.failure"] == "non-finite loss"
    assert stage.data.tags["graphssl.failure.step"] == "4"
    assert stage.data.tags["graphssl.failure.node"] == "loss"
    assert stage.data.tags["graphssl.failure.value"] == "nan"
    state = checkpoint.load(checkpoint.latest_checkpoints(workdir / "checkpoints" / run.info.run_id)["nan"])
    assert state["step"] == 4  # the last good checkpoint (after steps 0-3) is kept
    assert "last good checkpoint" in err


def test_unreachable_tracking_server_is_a_clear_error_before_training(workdir):
    result = subprocess.run(graphssl_cmd("run", str(PIPELINES / "mae.yaml"), "--tracking-uri", "http://127.0.0.1:9",
                                         "train.steps=1", *TINY), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "cannot use the MLflow tracking store http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr and "step 1/" not in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", proc, timeout=120)  # serving, not only listening
    except (RuntimeError, TimeoutError):
        stop_server(proc)
        raise
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    import os

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.slow
def test_metrics_survive_a_tracking_server_restart(workdir):
    store, port = f"sqlite:///{workdir / 'server.db'}", free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(store, port)
    # flush_seconds=0: a write every step, so writes fail while the server is away
    run = subprocess.Popen(graphssl_cmd("run", str(PIPELINES / "mae.yaml"), "--tracking-uri", uri, "train.steps=400",
                                        "train.flush_seconds=0", *TINY),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen, lines = 0, []
        for line in run.stdout:
            lines.append(line)
            if line.startswith("step "):
                seen += 1
                if seen == 3:
                    stop_server(server)  # the server goes away mid-run
                if seen == 8:
                    server = start_server(store, port)  # ... and comes back
                if seen == 14:
                    run.send_signal(signal.SIGTERM)
                    break
        out, _ = run.communicate(timeout=300)
    finally:
        run.kill()
        stop_server(server)
    assert run.returncode == 130, ("".join(lines) + out)[-3000:]
    printed = "".join(lines) + out
    assert "cannot be reached" in printed and "is back" in printed, printed[-2000:]  # writes failed, then delivered
    client = MlflowClient(store)
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("graphssl").experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    stage = stage_run(client, parent)
    steps = sorted(m.step for m in client.get_metric_history(stage.info.run_id, "loss"))
    assert steps[: 14] == list(range(14))  # nothing logged while the server was away was lost
    assert parent.info.status == "KILLED" and stage.info.status == "KILLED"


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_loss_curve(workdir):
    for name in ("a", "b"):
        result = subprocess.run(graphssl_cmd("run", str(PIPELINES / "mae.yaml"), "train.steps=4", "deterministic=true",
                                             *TINY, "--run-name", name), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("graphssl").experiment_id])
            if "mlflow.parentRunId" not in r.data.tags}
    curve = lambda r: [m.value for m in sorted(client.get_metric_history(stage_run(client, r).info.run_id, "loss"),
                                                  key=lambda m: m.step)]
    assert curve(runs["a"]) == curve(runs["b"])  # to the last bit
    tags = runs["a"].data.tags
    assert tags["graphssl.version.torch"] == version("torch")  # what the installed distribution says
    assert tags["graphssl.version.torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "mlflow.source.git.commit" in tags


@pytest.mark.slow
def test_from_run_repeats_a_logged_run(workdir):
    first = subprocess.run(graphssl_cmd("run", str(PIPELINES / "mae.yaml"), "train.steps=2", *TINY, "--run-name", "orig"),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    run_id = first.stdout.strip().splitlines()[-1].split()[-1]
    again = subprocess.run(graphssl_cmd("run", "--from-run", run_id, "--run-name", "again", "train.steps=1"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("graphssl").experiment_id])
            if "mlflow.parentRunId" not in r.data.tags}
    assert runs["again"].data.params["train.steps"] == "1"
    assert runs["again"].data.params["data.limit"] == "256"  # the logged run's overrides came along
