"""Shared pieces of the hardening tests: a tiny pipeline, crafted pickles, a store to search."""
from __future__ import annotations

import builtins
from pathlib import Path

import torch
import yaml
from mlflow import MlflowClient

VIT = {"type": "encoder.vit", "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
MAE_NODES = {
    "view": {"type": "augment.crop", "images": "batch.images"},
    "mask": {"type": "mask.random", "images": "view.images", "ratio": 0.75, "patch_size": 8},
    "encoder": {**VIT, "pos_embed": "sincos", "mask_mode": "drop", "images": "view.images", "mask": "mask.mask"},
    "decoder": {"type": "head.mae_decoder", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8,
                "in_dim": 32, "cls": "encoder.cls", "patches": "encoder.patches", "mask": "mask.mask"},
    "target": {"type": "target.patch_pixels", "images": "view.images", "patch_size": 8},
    "loss": {"type": "loss.mse_masked", "pred": "decoder.pred", "target": "target.target", "mask": "mask.mask"},
}


def tiny(name: str = "tiny", steps: int = 2, **sections) -> dict:
    """A one-stage MAE on 16 px images, a few steps: seconds on a CPU."""
    pipeline = {"name": name, "device": "cpu",
                "data": {"dataset": "fashion_mnist", "image_size": 16, "channels": 1, "batch_size": 8, "limit": 64},
                "train": {"steps": steps, "lr": 1.0e-3, "log_every": 1, "flush_seconds": 0},
                "eval": {"limit": 20}, "nodes": {k: dict(v) for k, v in MAE_NODES.items()}, "objective": {"loss": 1.0}}
    for section, values in sections.items():
        if section in ("data", "train", "eval"):  # merged; anything else (nodes, vars, ...) replaced
            pipeline[section] = {**pipeline[section], **values}
        else:
            pipeline[section] = values
    return pipeline


def write(path: Path, pipeline: dict) -> Path:
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


class Planted:
    """Unpickled, it creates the file ``marker``: a stand-in for any code a crafted pickle could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def crafted_file(path: Path, payload: dict, marker: Path) -> Path:
    """``payload`` (a modules file's or a checkpoint's shape) with a pickle that runs code when loaded unsafely."""
    torch.save({**payload, "planted": Planted(marker)}, path)
    return path


def store(workdir: Path, name: str = "mlflow.db") -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / name}")


def all_runs(client: MlflowClient, experiment: str = "graphssl") -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def parent_of(runs: list):
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parent
