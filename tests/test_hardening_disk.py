"""A full disk says so, with the path, and keeps the previous checkpoint; a run whose loss stops being finite
keeps a checkpoint of finite tensors only and names the value in its failure tags."""
from __future__ import annotations

import math
import os
import subprocess

import pytest
import torch

from graphssl import checkpoint
from graphssl.artifacts import save_modules
from graphssl.build import build_trainer
from graphssl.cli import main
from graphssl.io import WriteError
from graphssl.plan import plan_pipeline
from graphssl.train import NonFiniteLoss
from hardening import all_runs, parent_of, store, tiny, write


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (where this process may mount one), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def minimal_state(step: int, weights: torch.Tensor) -> dict:
    return {"step": step, "stage": "tiny", "run_id": "0a1b", "fingerprint": "f", "modules": {"w": weights},
            "optimizer": {}, "rng": []}


def test_a_full_disk_says_no_space_left_with_the_path_and_keeps_the_previous_checkpoint(small_disk):
    path = small_disk / "tiny.step1.state.pt"
    checkpoint.save_atomic(minimal_state(1, torch.zeros(1000)), path)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.save_atomic(minimal_state(2, torch.zeros(1_000_000)), path)  # 4 MB on a 1 MB disk
    message = str(info.value)
    assert f"could not write {path}: no space left on the device" in message
    assert f"the previous checkpoint {path} is intact" in message
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in small_disk.iterdir()] == [path.name]  # no temporary file left behind


def test_a_checkpoint_and_a_modules_file_on_a_disk_that_fills_up(small_disk, tmp_path):
    plan = plan_pipeline(write(tmp_path / "p.yaml", tiny()))
    trainer = build_trainer(plan.last, plan, torch.device("cpu"))
    trainer.train_step(0)
    with open(small_disk / "filler", "wb") as f:  # leave a few kB
        f.write(b"\0" * (1024 * 1024 - 16 * 1024))
    hook = checkpoint.CheckpointHook(small_disk / "run", "tiny", every=1, keep=2, meta={"stage": "tiny", "run_id": "0a1b",
                                                                                        "fingerprint": "f"})
    with pytest.raises(checkpoint.CheckpointError, match=r"tiny\.step1\.state\.pt: no space left on the device; "
                                                          "no earlier checkpoint exists"):
        hook.save(trainer, 1)
    with pytest.raises(WriteError, match=r"tiny\.modules\.pt: no space left on the device"):
        save_modules(trainer.executor.components(), plan.last.prepared, small_disk / "tiny.modules.pt")


def test_no_checkpoint_holds_a_non_finite_optimizer_state(tmp_path):
    plan = plan_pipeline(write(tmp_path / "p.yaml", tiny()))
    trainer = build_trainer(plan.last, plan, torch.device("cpu"))
    trainer.train_step(0)
    moments = next(iter(trainer.optimizer.state.values()))
    moments["exp_avg_sq"].fill_(float("inf"))  # parameters and loss are finite; the optimiser's state is not
    hook = checkpoint.CheckpointHook(tmp_path / "run", "tiny", every=1, keep=2, meta={})
    with pytest.raises(NonFiniteLoss, match=r"not finite in the training state: optimizer\.state\.\d+\.exp_avg_sq"):
        hook.save(trainer, 1)
    assert not (tmp_path / "run").exists()


def test_a_huge_learning_rate_keeps_a_finite_checkpoint_and_names_the_value(workdir, capsys):
    path = write(workdir / "p.yaml", tiny(steps=6))
    assert main(["run", str(path), "train.lr=1e6", "train.checkpoint_every=1"]) == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step" in err and "the last good checkpoint is" in err
    client = store(workdir)
    runs = all_runs(client)
    assert {r.info.status for r in runs} == {"FAILED"}
    stage = client.get_run(parent_of(runs).data.tags["graphssl.stage.tiny.run"])
    tags = stage.data.tags
    assert tags["graphssl.failure"] == "non-finite loss"
    assert not math.isfinite(float(tags["graphssl.failure.value"])) and tags["graphssl.failure.node"]
    kept = sorted((workdir / "checkpoints" / parent_of(runs).info.run_id).glob("*.state.pt"))
    assert kept
    for file in kept:
        state = checkpoint.load(file)
        assert state["step"] <= int(tags["graphssl.failure.step"])
        tensors = checkpoint.non_finite_tensors({"modules": state["modules"], "optimizer": state["optimizer"]})
        assert tensors == [], f"{file.name}: {tensors[:5]}"
