"""Checkpoints: atomic writes, exact resume after SIGKILL, graceful stop on SIGTERM."""
from __future__ import annotations

import errno
import signal
import subprocess

import pytest
import torch
from mlflow import MlflowClient

from conftest import PIPELINES, graphssl_cmd
from graphssl import checkpoint

TINY = ["train.checkpoint_every=2", "train.log_every=1", "data.limit=256", "data.batch_size=16", "eval.limit=50",
        "nodes.encoder.depth=1", "nodes.decoder.depth=1", "device=cpu", "deterministic=true"]


def run_dirs(root):
    folder = root / "checkpoints"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    checkpoint.save_atomic({"step": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="previous checkpoint .* is intact"):
        checkpoint.save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.state.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="cannot read checkpoint"):
        checkpoint.load(bad)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(workdir):
    pipeline = str(PIPELINES / "mae.yaml")
    overrides = ["train.steps=6", *TINY]
    done = subprocess.run(graphssl_cmd("run", pipeline, *overrides), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (reference_run,) = run_dirs(workdir)

    proc = subprocess.Popen(graphssl_cmd("run", pipeline, *overrides), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # "step 3/6" is printed after the checkpoint of steps 0-1 was written
            if line.startswith("step 3/"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    (killed_run,) = run_dirs(workdir) - {reference_run}
    state = checkpoint.load(workdir / "checkpoints" / killed_run / "mae.state.pt")
    # killed mid-training: a checkpoint of step 2 or 4, and no final weights yet
    assert 2 <= state["step"] < 6 and not (workdir / "checkpoints" / killed_run / "mae.modules.pt").exists()

    resumed = subprocess.run(graphssl_cmd("run", pipeline, *overrides, "--resume", killed_run), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run {killed_run}" in resumed.stdout

    a = torch.load(workdir / "checkpoints" / reference_run / "mae.modules.pt", weights_only=False)["nodes"]
    b = torch.load(workdir / "checkpoints" / killed_run / "mae.modules.pt", weights_only=False)["nodes"]
    assert a.keys() == b.keys()
    for node in a:
        for key, value in a[node]["state_dict"].items():
            assert torch.equal(value, b[node]["state_dict"][key]), f"{node}.{key} differs after resume"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(killed_run).info.status == "FINISHED"


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_marks_run_killed(workdir):
    proc = subprocess.Popen(graphssl_cmd("run", str(PIPELINES / "mae.yaml"), "train.steps=500", *TINY),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 1/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    (run_id,) = run_dirs(workdir)
    state = checkpoint.load(workdir / "checkpoints" / run_id / "mae.state.pt")
    assert 1 <= state["step"] < 500
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"
    assert "--resume" in out + err
