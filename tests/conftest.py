"""Shared fixtures: a temporary working directory and MLflow store per test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PIPELINES = REPO / "pipelines"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty directory with the default MLflow store pointed there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def graphssl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "graphssl", *args]


@pytest.fixture(autouse=True)
def builtin_registry():
    """Every test sees the built-in components only (not the plug-ins this machine has installed), and what
    a test registers (its own components, a plugin file, the README's example) is gone after it."""
    from graphssl import registry

    with registry.scope(builtins_only=True):
        yield


@pytest.fixture(scope="session", autouse=True)
def repository_stays_clean():
    """Tests run pipelines in temporary folders: none may leave run outputs in the checkout."""
    outputs = ("checkpoints", "mlruns", "mlartifacts", "mlflow.db")
    before = {name for name in outputs if (REPO / name).exists()}
    yield
    created = [name for name in outputs if (REPO / name).exists() and name not in before]
    assert not created, f"tests wrote run outputs into the repository: {created}"


def stage_run(client, run, stage: str | None = None):
    """The stage run of a parent run (its only or its named stage), where the curves and the model are."""
    tags = run.data.tags
    names = [k.removeprefix("graphssl.stage.").removesuffix(".run") for k in tags if k.startswith("graphssl.stage.")]
    if stage is None:
        assert len(names) == 1, names
        stage = names[0]
    return client.get_run(tags[f"graphssl.stage.{stage}.run"])


def trained_modules_file(client, run, folder, stage: str | None = None):
    """The trained modules file a run logged, downloaded into ``folder``."""
    found = stage_run(client, run, stage)
    return client.download_artifacts(found.info.run_id, f"model/{found.data.tags['graphssl.stage']}.modules.pt", str(folder))


def kill_at_line(argv: list[str], prefix: str) -> tuple[int, str]:
    """Run ``argv``, SIGKILL it when a line of its output starts with ``prefix``; (return code, output so far)."""
    import signal
    import subprocess

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(prefix):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, "".join(seen)
