"""Checkpoints: atomic writes, exact resume after SIGKILL, graceful stop on SIGTERM."""
from __future__ import annotations

import errno
import signal
import subprocess

import pytest
import torch
from mlflow import MlflowClient

from conftest import PIPELINES, graphssl_cmd, kill_at_line
from graphssl import checkpoint

TINY = ["train.checkpoint_every=2", "train.log_every=1", "data.limit=256", "data.batch_size=16", "eval.limit=50",
        "nodes.encoder.depth=1", "nodes.decoder.depth=1", "device=cpu", "deterministic=true"]


def run_dirs(root):
    folder = root / "checkpoints"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def newest_state(root, run_id: str, stage: str = "mae"):
    return checkpoint.latest_checkpoints(root / "checkpoints" / run_id).get(stage)


def trained_weights(root, run_id: str, stage: str = "mae") -> dict:
    """The trained modules the run logged (its stage run's model artifact), read as plain data."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    stage_run = client.get_run(run_id).data.tags[f"graphssl.stage.{stage}.run"]
    path = client.download_artifacts(stage_run, f"model/{stage}.modules.pt", str(root))
    return torch.load(path, weights_only=True)["nodes"]


def minimal_state(step: int) -> dict:
    return {"step": step, "stage": "mae", "run_id": "0a1b", "fingerprint": "f", "modules": {}, "optimizer": {}, "rng": []}


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    checkpoint.save_atomic(minimal_state(1), path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="previous checkpoint .* is intact"):
        checkpoint.save_atomic(minimal_state(2), path)
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
    assert sorted(p.name for p in (workdir / "checkpoints" / reference_run).iterdir()) == [
        "mae.step2.state.pt", "mae.step4.state.pt"]  # every 2 steps, none after the last

    # "step 3/6" is printed after the checkpoint of steps 0-1 was written
    code, seen = kill_at_line(graphssl_cmd("run", pipeline, *overrides), "step 3/")
    assert code == -signal.SIGKILL, seen[-2000:]  # killed mid-run, not finished
    (killed_run,) = run_dirs(workdir) - {reference_run}
    state = checkpoint.load(newest_state(workdir, killed_run))
    assert 2 <= state["step"] < 6

    resumed = subprocess.run(graphssl_cmd("run", pipeline, *overrides, "--resume", killed_run), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run {killed_run}" in resumed.stdout

    a, b = trained_weights(workdir, reference_run), trained_weights(workdir, killed_run)
    assert a.keys() == b.keys()
    for node in a:
        for key, value in a[node]["state_dict"].items():
            assert torch.equal(value, b[node]["state_dict"][key]), f"{node}.{key} differs after resume"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(killed_run).info.status == "FINISHED"


def test_only_the_newest_checkpoints_of_a_stage_are_kept(tmp_path):
    hook = checkpoint.CheckpointHook(tmp_path, "mae", every=1, keep=2, meta={})
    for step in (1, 2, 3, 10):
        checkpoint.save_atomic({"step": step}, checkpoint.checkpoint_path(tmp_path, "mae", step))
        hook._prune()
    checkpoint.save_atomic({"step": 7}, checkpoint.checkpoint_path(tmp_path, "other", 7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mae.step10.state.pt", "mae.step3.state.pt", "other.step7.state.pt"]
    assert checkpoint.latest_checkpoints(tmp_path) == {"mae": tmp_path / "mae.step10.state.pt",
                                                       "other": tmp_path / "other.step7.state.pt"}


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
    state = checkpoint.load(newest_state(workdir, run_id))
    assert 1 <= state["step"] < 500
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"
    assert "--resume" in out + err
