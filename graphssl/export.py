"""Trained encoders out of graphssl: timm model folders, MLflow models, and what a run logs beside them.

``graphssl export RUN_ID`` writes a timm model folder, loadable with
``timm.create_model("local-dir:DIR", pretrained=True)``:

- ``config.json``: the architecture, every size override as model args, and
  a ``pretrained_cfg`` with the input size, mean, std and crop fraction the
  run used (graphssl evaluates whole images, so ``crop_pct`` is 1.0);
- ``model.safetensors``: the backbone's weights.

The exported node is, by default, the encoder the run's first evaluator
evaluated (for the DINO family the EMA teacher's copy, as the official
releases), and its feature choice is timm's pooling, so that
``forward_head(forward_features(x), pre_logits=True)`` is the evaluated
feature: [CLS] is ``global_pool='token'``; the mean patch token is
``global_pool='avg'`` with ``fc_norm=False`` (graphssl averages the
final-normed tokens; timm's default for 'avg' normalises after pooling).

The same model is logged as an MLflow model of every stage run by the tracking
plugin (:mod:`graphssl.mlflow_models`).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphssl import registry
from graphssl.component import Evaluator
from graphssl.errors import did_you_mean

POOLING = {"cls": "token", "mean": "avg"}  # graphssl's evaluated feature -> timm's global_pool
FOLDER_FILES = ("config.json", "model.safetensors")


class ExportError(Exception):
    """A run or node that cannot be exported; the message says why and what to pass instead."""


# ----------------------------------------------------------------------------- modules.pt -> timm model

def read_modules(path: str | Path) -> dict[str, Any]:
    """A graphssl ``modules.pt`` payload ({"nodes": {NAME: {type, config, state_dict}}, image_size, channels}),
    read without running code."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"{path} does not exist") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"cannot read {path} as a graphssl modules file: {type(e).__name__}: {first}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("nodes"), dict):
        raise ExportError(f"{path} is not a graphssl modules file (no 'nodes')")
    return payload


def evaluated_encoder(entries: dict[str, dict]) -> tuple[str, str] | None:
    """(node, feature) of the first evaluator that names an encoder, or None."""
    for entry in entries.values():
        cls = registry.get(entry["type"])
        if cls is not None and issubclass(cls, Evaluator) and "encoder" in cls.module_refs:
            return entry["config"]["encoder"], entry["config"].get("feature", "cls")
    return None


def timm_encoder(entries: dict[str, dict], node: str, image_size: int, channels: int, feature: str) -> tuple[nn.Module, str]:
    """The timm model of an encoder node with its trained weights, pooling as ``feature``; and its architecture."""
    import timm

    if node not in entries:
        encoders = [n for n, e in entries.items() if hasattr(registry.get(e["type"]), "timm_arguments")]
        raise ExportError(f"no node {node!r}{did_you_mean(node, entries)}; encoders that can be exported: "
                          f"{', '.join(encoders) or 'none'}")
    entry = entries[node]
    cls = registry.get(entry["type"])
    if cls is None or not hasattr(cls, "timm_arguments"):
        raise ExportError(f"node {node!r} is a {entry['type']}, not an encoder with a timm backbone (encoder.vit)")
    arch, kwargs = cls.timm_arguments(cls.Config.model_validate(entry["config"]), image_size, channels)
    kwargs["global_pool"] = POOLING[feature]
    if feature == "mean":
        kwargs["fc_norm"] = False  # average the final-normed tokens, as graphssl's evaluators do
    model = timm.create_model(arch, pretrained=False, **kwargs)
    prefix = cls.timm_attribute + "."
    state = {k[len(prefix):]: v for k, v in entry["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)  # strict: the encoder's backbone is exactly this timm model
    return model.eval(), arch


def data_config(image_size: int, channels: int, mean, std) -> dict[str, Any]:
    """timm's preprocessing of the run: whole images resized (bicubic) to the run's side, its normalisation."""
    return dict(input_size=(channels, image_size, image_size), mean=tuple(float(v) for v in mean),
                std=tuple(float(v) for v in std), crop_pct=1.0, crop_mode="center", interpolation="bicubic")


def write_folder(model: nn.Module, out: Path, data_cfg: dict[str, Any], about: dict[str, Any]) -> Path:
    """config.json + model.safetensors through timm's ``save_for_hf``; ``about`` goes to config.json's "graphssl"."""
    from timm.models import save_for_hf

    out.mkdir(parents=True, exist_ok=True)
    save_for_hf(model, str(out), model_config={"pretrained_cfg": {"tag": "graphssl"}, "graphssl": about},
                safe_serialization=True, data_config=data_cfg)
    return out


@dataclass
class Exported:
    folder: Path
    node: str
    feature: str
    architecture: str


def export_payload(payload: dict[str, Any], out: Path, mean, std, node: str | None = None,
                   feature: str | None = None, about: dict[str, Any] | None = None) -> Exported:
    """Write the timm folder of one node of a modules.pt payload (default: the evaluated encoder)."""
    entries = payload["nodes"]
    evaluated = evaluated_encoder(entries)
    if node is None:
        if evaluated is None:
            raise ExportError("no evaluator names an encoder, so there is no default node; name one with --node "
                              f"(nodes: {', '.join(entries)})")
        node = evaluated[0]
    if feature is None:
        feature = evaluated[1] if evaluated and evaluated[0] == node else "cls"
    model, arch = timm_encoder(entries, node, payload["image_size"], payload["channels"], feature)
    write_folder(model, out, data_config(payload["image_size"], payload["channels"], mean, std),
                 {**(about or {}), "node": node, "feature": feature})
    return Exported(out, node, feature, arch)


# ----------------------------------------------------------------------------- input statistics

def input_stats(data_raw: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std a pipeline's ``data`` section normalises with (graphssl.data.Data's)."""
    from graphssl.config import DataConfig
    from graphssl.data import NORMALIZE, Data, DatasetMissing

    cfg = DataConfig.model_validate(data_raw)
    if cfg.normalize != "dataset":
        mean, std = NORMALIZE[cfg.normalize]
        n = cfg.channels if cfg.channels == 3 else 1
        return tuple(mean[:n]), tuple(std[:n])
    try:
        data = Data(cfg, torch.device("cpu"))
    except DatasetMissing as e:
        raise ExportError(f"the run normalised with its dataset's statistics, which it did not record, and the "
                          f"dataset cannot be read here: {e}") from None
    return data.mean, data.std


# ----------------------------------------------------------------------------- runs

def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    from graphssl.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ExportError(f"no tracking store at {uri} (run from the folder of your runs, or give --tracking-uri)")
    return MlflowClient(uri), uri


def find_run(client, ref: str, log=print):
    """A run by id, unique id prefix or name (the newest of that name); parent runs before stage runs."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(ref)
    except MlflowException:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=50000, order_by=["attributes.start_time DESC"]) if experiments else []
    by_id = [r for r in runs if r.info.run_id.startswith(ref)]
    if len(by_id) > 1:
        shown = ", ".join(f"{r.info.run_id} ({r.info.run_name})" for r in by_id[:5])
        raise ExportError(f"run id prefix {ref!r} is ambiguous: {len(by_id)} runs ({shown}{', ...' if len(by_id) > 5 else ''})")
    if by_id:
        return by_id[0]
    by_name = [r for r in runs if r.info.run_name == ref]
    parents = [r for r in by_name if "mlflow.parentRunId" not in r.data.tags]
    by_name = parents or by_name
    finished = [r for r in by_name if r.info.status == "FINISHED"]
    if not by_name:
        raise ExportError(f"no run with id, id prefix or name {ref!r} in {client.tracking_uri}")
    chosen = (finished or by_name)[0]
    if len(by_name) > 1:
        log(f"{len(by_name)} runs are named {ref!r}; exporting the newest{' finished' if finished else ''} one, {chosen.info.run_id}")
    return chosen


def _artifact(client, run_id: str, path: str, folder: str) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, path, folder))
    except Exception:
        return None


def _pipeline(client, run_id: str, folder: str) -> dict[str, Any] | None:
    import yaml

    path = _artifact(client, run_id, "pipeline.yaml", folder)
    return yaml.safe_load(path.read_text()) if path else None


def _stages(client, run, folder: str) -> tuple[dict[str, str], list[str]]:
    """{stage: run id holding its modules} and the stages in pipeline order."""
    tags = run.data.tags
    staged = {k[len("graphssl.stage."):-len(".run")]: v for k, v in tags.items()
              if k.startswith("graphssl.stage.") and k.endswith(".run")}
    raw = _pipeline(client, run.info.run_id, folder) or {}
    order = [s for s in (raw.get("stages") or {}) if s in staged] or sorted(staged)
    return staged, order


def export_run(ref: str, out: str | Path | None = None, node: str | None = None, stage: str | None = None,
               feature: str | None = None, tracking_uri: str | None = None, log=print) -> Exported:
    """``graphssl export``: a run (id, id prefix, name) or its checkpoint folder -> a timm model folder."""
    client, uri = _client(tracking_uri)
    if Path(ref).is_dir():  # checkpoints/RUN_ID: the run's trained modules are in the store
        ref = Path(ref).resolve().name
    run = find_run(client, ref, log)
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        stages, order = _stages(client, run, tmp)
        if not stages:
            raise ExportError(f"run {run_id} ({run.info.run_name}, {run.info.status}) has no trained encoder: no "
                              "model/*.modules.pt artifact (the run did not finish, or trains nothing that can be exported)")
        if stage is None:
            stage = order[-1]
        elif stage not in stages:
            raise ExportError(f"run {run_id} has no stage {stage!r}{did_you_mean(stage, stages)} (it has: {', '.join(order)})")
        stage_run = stages[stage]
        modules = _artifact(client, stage_run, f"model/{stage}.modules.pt", tmp)
        if modules is None:
            raise ExportError(f"run {stage_run} (stage {stage}) has no trained encoder: no model/{stage}.modules.pt artifact "
                              "(the stage did not finish: continue it with graphssl run PIPELINE --resume RUN_ID)")
        payload = read_modules(modules)
        stage_tags = client.get_run(stage_run).data.tags
        if "graphssl.input.mean" in stage_tags:
            mean, std = json.loads(stage_tags["graphssl.input.mean"]), json.loads(stage_tags["graphssl.input.std"])
        else:
            raw = _pipeline(client, stage_run, tmp)
            if raw is None:
                raise ExportError(f"run {stage_run} has neither recorded its input normalisation nor a pipeline.yaml")
            mean, std = input_stats(raw.get("data") or {})
        if len(order) > 1 and node is None and evaluated_encoder(payload["nodes"]) is None:
            raise ExportError(f"stage {stage!r} evaluates no encoder; choose a stage with --stage ({', '.join(order)}) "
                              "or a node with --node")
        name = run.info.run_name or "run"
        target = Path(out) if out else Path(f"{name}-{run_id[:8]}" + (f"-{stage}" if len(order) > 1 else ""))
        _check_target(target)
        about = {"run_id": run_id, "stage": stage, "stage_run_id": stage_run, "pipeline": payload.get("pipeline"),
                 "tracking_uri": uri}
        return export_payload(payload, target, mean, std, node, feature, about)


def _check_target(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(p.name not in FOLDER_FILES for p in target.iterdir())):
        raise ExportError(f"{target} exists and is not an earlier export; choose another folder with -o")
