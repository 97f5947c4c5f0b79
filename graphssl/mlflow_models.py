"""What a stage run logs beside its metrics: its encoder as an MLflow model, its dataset as its input,
MLflow's system metrics.

The model is the bare timm module of :func:`graphssl.export.timm_encoder` (pickled by
``mlflow.pytorch``, so loading it needs only timm), with the run's final metrics attached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch

from graphssl.export import data_config, evaluated_encoder, read_modules, timm_encoder, write_folder


def pip_requirements() -> list[str]:
    """What loading the logged model needs: torch and timm (MLflow adds itself)."""
    import timm

    return [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"]


def log_stage_model(tracker, run_id: str, modules_path: Path, mean, std, step: int, register: str | None = None,
                    log=print) -> str | None:
    """Log a stage's evaluated encoder as an MLflow model of ``run_id`` (the bare timm module, so loading it
    needs only timm), its metrics at ``step`` attached; ``register``: also a version of that registered model.

    Returns the logged model's id, or None when the stage evaluates no encoder (a tokenizer stage).
    """
    import mlflow.pytorch

    tracker.set_tags(run_id, {"graphssl.input.mean": json.dumps([float(v) for v in mean]),
                              "graphssl.input.std": json.dumps([float(v) for v in std])})
    payload = read_modules(modules_path)
    evaluated = evaluated_encoder(payload["nodes"])
    if evaluated is None:
        return None
    node, feature = evaluated
    model, arch = timm_encoder(payload["nodes"], node, payload["image_size"], payload["channels"], feature)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(model, Path(tmp), data_config(payload["image_size"], payload["channels"], mean, std),
                     {"run_id": run_id, "node": node, "feature": feature, "pipeline": payload.get("pipeline")})
        timm_config = json.loads((Path(tmp) / "config.json").read_text())
    client = tracker.client
    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name="encoder", source_run_id=run_id,
                                        params=dict(run.data.params), model_type="timm",
                                        tags={"graphssl.node": node, "graphssl.feature": feature,
                                              "timm.architecture": arch})
    with _fast_model_logging():
        mlflow.pytorch.log_model(model, name="encoder", model_id=logged.model_id, run_id=run_id, step=step,
                                 serialization_format="pickle", pip_requirements=pip_requirements(),
                                 metadata={"timm_config": timm_config}, registered_model_name=register)
    return logged.model_id


@contextmanager
def _fast_model_logging() -> Iterator[None]:
    """MLflow's model logging without its two costs that tell graphssl nothing.

    - Its check that the requirements match the installed packages maps every installed distribution to
      its modules (2-3 s once per process, more in big environments); ``pip_requirements()`` reads the
      versions of the running interpreter, so they match by construction.
    - Its caution about pickled models is for whoever loads one; graphssl itself never unpickles it.
    """
    from unittest import mock

    import mlflow.utils.environment as environment

    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    check = "warn_dependency_requirement_mismatches"
    patch = mock.patch.object(environment, check, lambda requirements: None) if hasattr(environment, check) else nullcontext()
    try:
        with patch:
            yield
    finally:
        quiet.setLevel(level)


def log_dataset_input(tracker, run_id: str, data) -> None:
    """The training data as the run's input: name, root, a digest of the file list (path and size), a profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from graphssl.data.memory import source_files

    cfg = data.cfg
    root, files = source_files(cfg)
    listing = "\n".join(f"{p.relative_to(root) if root else p}\t{p.stat().st_size}" for p in files)
    digest = hashlib.sha256(listing.encode()).hexdigest()[:16]
    profile = {"train_images": data.train_images, "files": len(files), "limit": cfg.limit, "image_size": cfg.image_size,
               "channels": cfg.channels, "normalize": cfg.normalize}
    dataset = Dataset(name=cfg.dataset, digest=digest, source_type="local", source=json.dumps({"uri": str(root or "")}),
                      profile=json.dumps(profile))
    tracker.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])])


class SystemMetrics:
    """MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) of a run, while it trains."""

    def __init__(self, run_id: str, tracking_uri: str, resume: bool = False):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop chatter
        self.monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri, resume_logging=resume)
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.finish()


def start_system_metrics(tracker, run_id: str, enabled: bool, resume: bool = False) -> SystemMetrics | None:
    """Start the system-metrics monitor of ``run_id`` when ``enabled`` (rank 0 only: no tracker URI elsewhere)."""
    if not enabled or not run_id or not getattr(tracker, "uri", ""):
        return None
    return SystemMetrics(run_id, tracker.uri, resume)

