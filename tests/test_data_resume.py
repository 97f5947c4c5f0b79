"""A run on an image folder with loader workers, killed with SIGKILL, resumes bit-exact."""
from __future__ import annotations

import signal
import subprocess

import pytest
import torch

from mlflow import MlflowClient

from conftest import PIPELINES, graphssl_cmd, kill_at_line, trained_modules_file
from graphssl import checkpoint
from imagegen import make_folder


@pytest.mark.slow
def test_folder_run_with_workers_resumes_bit_exact_after_sigkill(workdir):
    root = make_folder(workdir / "images", classes=3, per_class=12, test_per_class=3, sizes=(30, 80))
    overrides = ["train.steps=6", "train.checkpoint_every=2", "train.log_every=1", f"data.root={root}",
                 "data.dataset=image_folder", "data.batch_size=8", "data.workers=2", "eval.limit=20",
                 "nodes.encoder.depth=1", "nodes.decoder.depth=1", "device=cpu", "deterministic=true"]
    pipeline = str(PIPELINES / "mae.yaml")
    done = subprocess.run(graphssl_cmd("run", pipeline, *overrides), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (reference,) = {p.name for p in (workdir / "checkpoints").iterdir()}
    # "step 3/6" is printed after the checkpoint of steps 0-1 was written
    code, seen = kill_at_line(graphssl_cmd("run", pipeline, *overrides), "step 3/")
    assert code == -signal.SIGKILL, seen[-2000:]
    (killed,) = {p.name for p in (workdir / "checkpoints").iterdir()} - {reference}
    state = checkpoint.load(checkpoint.latest_checkpoints(workdir / "checkpoints" / killed)["mae"])
    assert 2 <= state["step"] < 6
    resumed = subprocess.run(graphssl_cmd("run", pipeline, *overrides, "--resume", killed), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    a = torch.load(trained_modules_file(client, client.get_run(reference), workdir), weights_only=True)["nodes"]
    b = torch.load(trained_modules_file(client, client.get_run(killed), workdir), weights_only=True)["nodes"]
    for node in a:
        for key, value in a[node]["state_dict"].items():
            assert torch.equal(value, b[node]["state_dict"][key]), f"{node}.{key} differs after resume"
