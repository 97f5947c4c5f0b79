"""Checks of a validated stage that need more than its schema, cheap enough to run before every run:
the dataset's size against the batch, the test split evaluators read, and the names MLflow will be
given (evaluator metrics, parameter keys). Each finds, before any run exists, what would otherwise
fail after it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphssl.data.sources import count_train_images
from graphssl.errors import Problem
from graphssl.names import mlflow_key_problem

if TYPE_CHECKING:
    from graphssl.build import Prepared
    from graphssl.config import DataConfig, LoadedPipeline

# Training-split sizes of the in-memory datasets (known without reading them).
TRAIN_SIZES = {"fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000}
# The stage run's curves (Trainer.train_step and fit); "loss/NODE" are the loss parts.
TRAINING_METRICS = ("loss", "lr", "weight_decay", "images_per_s", "step_time_s", "data_wait_s")


def world_size() -> int:
    """Processes taking part (torchrun sets WORLD_SIZE in each)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def stage_problems(prepared: "Prepared", processes: int | None = None) -> list[Problem]:
    """Everything this module checks, for one stage."""
    return (data_problems(prepared, processes or world_size()) + metric_problems(prepared)
            + key_problems(prepared.loaded, prepared.loaded.raw))


# -- data -------------------------------------------------------------------------------
def train_size(cfg: "DataConfig", enough: int) -> int | None:
    """Training images the stage will have (after data.limit), counted up to ``enough``, or None where only
    reading would tell."""
    if cfg.dataset == "image_folder":
        if not cfg.root or not Path(cfg.root).expanduser().is_dir():
            return None  # the data loader says what is missing
        size = count_train_images(cfg.root, enough)
    else:
        size = TRAIN_SIZES.get(cfg.dataset)
    if size is None:
        return None
    return min(size, cfg.limit) if cfg.limit else size


def data_problems(prepared: "Prepared", processes: int) -> list[Problem]:
    cfg, loaded = prepared.cfg.data, prepared.loaded
    problems = []
    size = train_size(cfg, cfg.batch_size * processes)
    if size is not None and cfg.batch_size * processes > size:
        limited = f" (data.limit {cfg.limit})" if cfg.limit and cfg.limit == size else ""
        per = f" x {processes} processes" if processes > 1 else ""
        problems.append(loaded.problem("data.batch_size", f"a batch of {cfg.batch_size}{per} is more than the {size} "
                                                          f"training images{limited}"))
    evaluators = [n for n, node in prepared.spec.nodes.items() if node.role == "evaluator"]
    if cfg.dataset == "image_folder" and cfg.root and evaluators:
        root = Path(cfg.root).expanduser()
        if (root / "train").is_dir() and not any((root / split).is_dir() for split in ("test", "val")):
            problems.append(loaded.problem("data.root", f"image_folder: no test (or val) folder under {root}; the "
                                                        f"evaluators ({', '.join(evaluators)}) read labelled test images"))
    return problems


# -- names MLflow is given -----------------------------------------------------------------
def evaluator_metrics(prepared: "Prepared") -> dict[str, str]:
    """{evaluator node: the metric it logs}, for evaluators that name theirs with a ``metric`` parameter."""
    out = {}
    for name, node in prepared.spec.nodes.items():
        if node.role == "evaluator" and node.config is not None and isinstance(getattr(node.config, "metric", None), str):
            out[name] = node.config.metric
    return out


def metric_problems(prepared: "Prepared") -> list[Problem]:
    """An evaluator's metric must be a key MLflow takes, and not a name the stage run's curves already use."""
    problems, seen = [], {}
    for node, metric in evaluator_metrics(prepared).items():
        path = f"nodes.{node}.metric"
        refused = mlflow_key_problem(metric) or mlflow_key_problem(f"{metric}_init")
        if refused:
            problems.append(prepared.loaded.problem(path, f"the tracking store would refuse this metric name: {refused}"))
        elif metric in TRAINING_METRICS or metric.startswith("loss/") or metric.removesuffix("_init") in TRAINING_METRICS:
            problems.append(prepared.loaded.problem(path, f"{metric!r} is a training metric of the stage run "
                                                          f"({', '.join(TRAINING_METRICS)}, loss/NODE); name the evaluator's "
                                                          "metric otherwise"))
        elif metric in seen:
            problems.append(prepared.loaded.problem(path, f"{metric!r} is also the metric of evaluator {seen[metric]!r}; "
                                                          "each evaluator needs its own"))
        seen.setdefault(metric, node)
    return problems


def key_problems(loaded: "LoadedPipeline", raw: Any, path: str = "") -> list[Problem]:
    """Keys under ``vars`` (the one free-form section) that MLflow would refuse as parameter keys: the
    resolved file is logged as parameters named by their dotted paths."""
    if not path:
        return key_problems(loaded, raw.get("vars"), "vars") if isinstance(raw, dict) else []
    problems = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            sub = f"{path}.{key}"
            refused = mlflow_key_problem(sub)
            if refused:
                problems.append(loaded.problem(path, f"key {str(key)!r} cannot be logged as a parameter: {refused}"))
                continue
            problems += key_problems(loaded, value, sub)
    return problems
