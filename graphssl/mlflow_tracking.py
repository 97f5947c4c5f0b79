"""The MLflow plugin: every MLflow call graphssl makes while running a pipeline.

The run tree is the same for every pipeline: one parent run per ``graphssl run``
(the resolved file as parameters and artifact, provenance tags, the final
evaluation), under it one run per stage (its config, curves, graph picture and
trained modules), and under each stage run one run per graph node (its config,
time per call, output statistics, its loss and what the component logs).
``graphssl.hooks.Tracking`` is the interface the runner talks to.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from graphssl.flops import node_params, run_params
from graphssl.hooks import Tracking
from graphssl.instrument import NodeTimer, OutputStats
from graphssl.redact import MASK
from graphssl.tracking import Tracker, TrackingError, flatten

if TYPE_CHECKING:
    from graphssl.plan import Plan, Stage

EVAL_METRICS_TAG = "graphssl.eval_metrics"


class MlflowTracking(Tracking):
    """``register``: a registered-model name for the product's encoder (the last stage's);
    ``system_metrics``: MLflow's system metrics (CPU, memory, GPU) on the parent run."""

    def __init__(self, uri: str | None, experiment: str, log=print, register: str | None = None,
                 system_metrics: bool = False):
        self.tracker = Tracker(uri, experiment)
        self.tracker.warn = lambda message: log(message)
        self.log = log
        self.uri = self.tracker.uri
        self.register, self.system_metrics = register, system_metrics
        self.parent = ""
        self.stage_run = ""
        self.node_runs: dict[str, str] = {}
        self.timer, self.stats = NodeTimer(), OutputStats()
        self._last_flush = time.monotonic()
        self._last_stage = ""
        self._monitor = None

    @property
    def client(self):
        return self.tracker.client

    # -- the parent run ------------------------------------------------------------
    def start_run(self, plan: "Plan", run_name: str | None, tags: dict[str, str]) -> str:
        """The parent run: the resolved file as parameters (values from the environment masked), the file
        as written (overrides merged, interpolations such as ${oc.env:NAME} not resolved) as pipeline.yaml."""
        types = plan.component_types()
        tags = {"graphssl.pipeline": plan.name, "graphssl.components": ",".join(types),
                **{f"graphssl.uses.{t}": "true" for t in types}, **tags}
        self.parent = self.tracker.create_run(run_name or plan.name, tags)
        try:
            self.tracker.log_params(self.parent, flatten(plan.loaded.masked()))
            with tempfile.TemporaryDirectory() as tmp:  # the whole file, so the run can be repeated from the UI
                written = Path(tmp) / "pipeline.yaml"
                written.write_text(yaml.safe_dump(plan.loaded.written, sort_keys=False))
                self.tracker.log_artifact(self.parent, written)
        except BaseException:
            self.tracker.end_open_runs("FAILED")
            raise
        self._started(plan)
        return self.parent

    def resume_run(self, plan: "Plan", run_id: str) -> None:
        self.parent = run_id
        self.tracker.reopen(run_id)
        self._started(plan, resume=True)

    def _started(self, plan: "Plan", resume: bool = False) -> None:
        from graphssl.mlflow_models import start_system_metrics

        self._last_stage = plan.last.name
        self._monitor = start_system_metrics(self.tracker, self.parent, self.system_metrics, resume=resume)

    def end_run(self, status: str, final: dict[str, float], step: int, pending_dir: Path | None = None) -> None:
        """End the parent run, and every run under it that a failure left open, with ``status``."""
        try:
            if status == "FINISHED":
                for key, value in final.items():  # the last stage's evaluation is the pipeline's, at its last step
                    self.tracker.metric(self.parent, key, value, step)
                self.tracker.set_tags(self.parent, {EVAL_METRICS_TAG: ",".join(sorted(final))})
            if self._monitor is not None:
                self._monitor.stop()
            self._flush_or_dump(pending_dir)
        finally:
            self.tracker.end_open_runs(status)

    def where(self, run_id: str) -> list[str]:
        exp = self.tracker.experiment_id
        if self.uri.startswith(("http://", "https://")):
            return [f"open it at {self.uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"]
        return [f"open it with: mlflow ui --backend-store-uri {self.uri}",
                f"  then http://127.0.0.1:5000/#/experiments/{exp}/runs/{run_id}"]

    # -- stages ----------------------------------------------------------------
    def finished_stage(self, stage: str) -> str | None:
        run_id = self.client.get_run(self.parent).data.tags.get(f"graphssl.stage.{stage}.run")
        if run_id and self.client.get_run(run_id).info.status == "FINISHED":
            return run_id
        return None

    def find_reusable(self, stage: "Stage") -> str | None:
        runs = self.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.`graphssl.fingerprint` = '{stage.fingerprint}' and attributes.status = 'FINISHED'",
            max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def fetch_modules(self, stage_run: str, stage: str, folder: Path) -> Path:
        """The modules file of an earlier stage run, checked to hold only tensors and plain values
        (anyone who can write to a shared store can put a file there)."""
        from graphssl.artifacts import read_modules

        # where MLflow puts a single file depends on the artifact store: use its answer
        path = Path(self.client.download_artifacts(stage_run, f"model/{stage}.modules.pt", str(folder)))
        try:
            read_modules(path)
        except ValueError as e:
            raise TrackingError(f"stage {stage}: run {stage_run} of the tracking store has the same config and inputs, "
                                f"but its modules file cannot be used: {e}; retrain the stage with --force") from None
        return path

    def mark_reused(self, stage: "Stage", stage_run: str) -> dict[str, float]:
        marker = self.tracker.create_run(f"{stage.name} (reused)", {"graphssl.stage": stage.name,
                                                                    "graphssl.reused_from": stage_run}, parent=self.parent)
        self.tracker.set_tags(self.parent, {f"graphssl.stage.{stage.name}.run": stage_run})
        self.tracker.end_run(marker)
        logged = self.client.get_run(stage_run)
        names = set(filter(None, logged.data.tags.get(EVAL_METRICS_TAG, "").split(",")))
        return {k: v for k, v in logged.data.metrics.items() if k in names}

    def on_stage_start(self, stage: "Stage", trainer, resumed: dict[str, Any] | None) -> None:
        prepared = stage.prepared
        if resumed is not None:
            ids = resumed["tracking"]
            self.stage_run, self.node_runs = ids["stage_run"], dict(ids["node_runs"])
            for run_id in (self.stage_run, *self.node_runs.values()):
                self.tracker.reopen(run_id)  # steps it replays are not logged twice
        else:
            self.stage_run = self.tracker.create_run(stage.name, {
                "graphssl.stage": stage.name, "graphssl.fingerprint": stage.fingerprint,
                "graphssl.pipeline": prepared.cfg.name, "graphssl.global_batch": trainer.global_batch}, parent=self.parent)
            self.tracker.set_tags(self.parent, {f"graphssl.stage.{stage.name}.run": self.stage_run})
            params = flatten(prepared.loaded.masked())
            if prepared.flops is not None:  # the counted cost, and the steps a budget resolved to
                params.update(run_params(prepared.flops, trainer.world.size, trainer.data.device))
            if prepared.budget is not None:
                params["train.steps"] = str(prepared.cfg.train.steps)
            self.tracker.log_params(self.stage_run, params)
            self.node_runs = {}
            for name, node in prepared.spec.nodes.items():
                self.node_runs[name] = self.tracker.create_run(name, {
                    "graphssl.node": name, "graphssl.component": node.type_name,
                    **({"graphssl.call": node.call} if node.call else {})}, parent=self.stage_run)
                params = flatten(node.config.model_dump(mode="json")) if node.config is not None else {}
                params = {k: MASK if prepared.loaded.is_secret(f"nodes.{name}.{k}") else v for k, v in params.items()}
                if prepared.flops is not None:
                    params.update(node_params(prepared.flops, name, trainer.world.size))
                if params:
                    self.tracker.log_params(self.node_runs[name], params)
            with tempfile.TemporaryDirectory() as tmp:
                from graphssl.picture import draw_graph

                draw_graph(prepared.spec, Path(tmp) / "graph.png", title=prepared.cfg.name)
                self.tracker.log_artifact(self.stage_run, Path(tmp) / "graph.png")
            from graphssl.mlflow_models import log_dataset_input

            self.tracker.safely("log the dataset as the run's input", log_dataset_input, self.tracker, self.stage_run,
                                trainer.data)
        trainer.executor.hooks += [self.timer, self.stats]

    def checkpoint_state(self) -> dict[str, Any]:
        return {"stage_run": self.stage_run, "node_runs": dict(self.node_runs)}

    def tag_stage(self, tags: dict[str, Any]) -> None:
        self.tracker.set_tags(self.stage_run, tags)

    def on_stage_end(self, stage: "Stage", trainer, status: str, modules: Path | None, final: dict[str, float]) -> None:
        if modules is not None:
            from graphssl.mlflow_models import log_stage_model

            self.tracker.log_artifact(self.stage_run, modules, "model")
            self.tracker.set_tags(self.stage_run, {EVAL_METRICS_TAG: ",".join(sorted(final))})
            self._flush()  # the model's metrics are attached from the run's
            register = self.register if stage.name == self._last_stage else None
            self.tracker.safely("log the encoder as an MLflow model", log_stage_model, self.tracker, self.stage_run, modules,
                                trainer.data.mean, trainer.data.std, trainer.cfg.train.steps - 1, register, self.log)
        self._flush_or_dump(None)
        for run_id in self.node_runs.values():
            self.tracker.end_run(run_id, status)
        self.tracker.end_run(self.stage_run, status)
        trainer.executor.hooks = [h for h in trainer.executor.hooks if h not in (self.timer, self.stats)]

    # -- steps -------------------------------------------------------------------
    def _logs(self, trainer, step: int) -> bool:
        return (step + 1) % trainer.cfg.train.log_every == 0 or step + 1 == trainer.cfg.train.steps

    def on_step_start(self, trainer, step: int) -> None:
        self.timer.active = self.stats.active = self._logs(trainer, step)

    def on_step_end(self, trainer, step: int, metrics: dict) -> None:
        t = self.tracker
        for key, value in metrics.items():
            t.metric(self.stage_run, key, value, step)
        if not self._logs(trainer, step):
            return
        times, stats = self.timer.pop_ms_per_call(), self.stats.pop()
        spec = trainer.executor.spec
        for name, node in spec.nodes.items():
            run = self.node_runs.get(name)
            if run is None:
                continue
            if name in times:
                t.metric(run, "time_per_call_ms", times[name], step)
            for key, value in stats.get(name, {}).items():
                t.metric(run, key, value, step)
            if node.call is None and name in trainer.executor.nodes:
                for key, value in trainer.executor.nodes[name].pop_metrics().items():
                    t.metric(run, key, value, step)
            if "train_flops" in metrics:  # the compute axis, in every node run too
                t.metric(run, "train_flops", metrics["train_flops"], step)
            for port in node.cls.outputs:
                key = f"loss/{name}" if port == "loss" else f"loss/{name}.{port}"
                if key in metrics:
                    t.metric(run, "loss" if port == "loss" else port, metrics[key], step)
        flush_seconds = trainer.cfg.train.flush_seconds
        if step + 1 == trainer.cfg.train.steps or time.monotonic() - self._last_flush >= flush_seconds:
            self._flush()

    def on_eval(self, trainer, step: int, results: dict[str, dict[str, float]]) -> None:
        for node, metrics in results.items():
            for key, value in metrics.items():
                self.tracker.metric(self.stage_run, key, value, step)
                if node in self.node_runs:
                    self.tracker.metric(self.node_runs[node], key, value, step)
            initial = all(k.endswith("_init") for k in metrics)
            if node in self.node_runs and trainer.flops_per_step and not initial and not self._logs(trainer, step):
                self.tracker.metric(self.node_runs[node], "train_flops", (step + 1) * trainer.flops_per_step, step)
        self._flush()

    def on_checkpoint(self, trainer, path: Path, next_step: int) -> None:
        self._flush()  # the store keeps up with checkpoints

    def _flush(self) -> bool:
        self._last_flush = time.monotonic()
        return self.tracker.flush()

    def _flush_or_dump(self, pending_dir: Path | None) -> None:
        if not self._flush() and pending_dir is not None:
            dumped = self.tracker.dump_pending(pending_dir / "pending_metrics.jsonl")
            self.tracker.warn(f"warning: the tracking store is unreachable; {dumped} holds the metrics it did not receive")
        if pending_dir is not None:
            refused = self.tracker.dump_refused(pending_dir / "refused_metrics.jsonl")
            if refused is not None:
                self.tracker.warn(f"warning: {refused} holds the metric points the tracking store refused")
