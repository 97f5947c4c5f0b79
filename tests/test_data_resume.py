"""A run on an image folder with loader workers, killed with SIGKILL, resumes bit-exact."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch

from conftest import PIPELINES, graphssl_cmd
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
    proc = subprocess.Popen(graphssl_cmd("run", pipeline, *overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            new = {p.name for p in (workdir / "checkpoints").iterdir()} - {reference}
            if new and (workdir / "checkpoints" / next(iter(new)) / "mae.state.pt").exists():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    (killed,) = {p.name for p in (workdir / "checkpoints").iterdir()} - {reference}
    state = checkpoint.load(workdir / "checkpoints" / killed / "mae.state.pt")
    assert state["step"] < 6
    resumed = subprocess.run(graphssl_cmd("run", pipeline, *overrides, "--resume", killed), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(workdir / "checkpoints" / reference / "mae.modules.pt", weights_only=False)["nodes"]
    b = torch.load(workdir / "checkpoints" / killed / "mae.modules.pt", weights_only=False)["nodes"]
    for node in a:
        for key, value in a[node]["state_dict"].items():
            assert torch.equal(value, b[node]["state_dict"][key]), f"{node}.{key} differs after resume"
