"""``graphssl compare``: runs from the MLflow store side by side, as a table and a picture.

The table has one row per run: pipeline, steps, images/s (median over steps),
the total counted training FLOPs, the achieved FLOP/s (total FLOPs over the
summed step times) and the model FLOP utilisation where the device's peak is
known (graphssl.flops.PEAK_FLOPS), the final loss and its parts, and every
evaluator's final metric (``knn_top1``, ``linear_top1``, ...: the names a run
lists in its ``graphssl.eval_metrics`` tag). The picture
(:mod:`graphssl.compare_plot`) has the training-loss curves, the evaluations
over the run (at initialisation at step 0, then every evaluation) and the final
evaluations as bars.

The curves' x axis (``--x``) is one of
  steps:  training steps;
  flops:  cumulative counted training FLOPs of all processes (the ``train_flops`` metric);
  images: source images seen (global batch x steps);
  time:   cumulative training time, the sum of the step times (no evaluation, no start-up).

Without run ids, the finished parent runs (not node or stage runs) of the
experiment are compared, newest first. A run's curves come from its last
stage's run (a reused stage points to the run it reused); on the flops,
images and time axes they start where the stages before it ended, and the
totals count every stage.
"""
from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from graphssl.flops import peak_flops
from graphssl.mlflow_tracking import EVAL_METRICS_TAG
from graphssl.tracking import default_tracking_uri

AXES = {"steps": "step", "flops": "training FLOPs (counted, all processes)", "images": "source images seen",
        "time": "training time (s, sum of step times)"}


class CompareError(Exception):
    """No such experiment or run; the message says what was asked for."""


@dataclass
class RunSummary:
    run_id: str
    name: str
    pipeline: str
    status: str
    start_time: int
    steps: int | None
    images_per_s: float | None
    final: dict[str, float]  # the parent's latest metrics
    losses: dict[str, float]  # "loss" and "loss/<node>" at the end
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    cumulative: dict[str, dict[int, float]] = field(default_factory=dict)  # axis -> {steps done: value} (logged)
    per_step: dict[str, float] = field(default_factory=dict)  # axis -> value of one step (from the params)
    offsets: dict[str, float] = field(default_factory=dict)  # axis -> what the stages before the last one spent
    peak_flops: float | None = None  # FLOP/s of all the run's devices at its precision, where known
    eval_metrics: list[str] = field(default_factory=list)  # the evaluators' metric names, e.g. knn_top1

    @property
    def label(self) -> str:
        return self.name if self.name == self.pipeline or not self.pipeline else f"{self.name} ({self.pipeline})"

    def x(self, axis: str, steps_done: int) -> float | None:
        """Where the run stands on ``axis`` after ``steps_done`` steps of its (last) stage; None if not logged."""
        if axis == "steps":
            return float(steps_done)
        value = 0.0 if steps_done == 0 else self.cumulative.get(axis, {}).get(steps_done)
        if value is None and axis in self.per_step:
            value = steps_done * self.per_step[axis]
        return None if value is None else value + self.offsets.get(axis, 0.0)

    @property
    def total_flops(self) -> float | None:
        return self.x("flops", self.steps) if self.steps else None

    @property
    def flops_per_s(self) -> float | None:
        flops, seconds = self.total_flops, self.x("time", self.steps) if self.steps else None
        return flops / seconds if flops and seconds else None

    @property
    def mfu(self) -> float | None:
        achieved = self.flops_per_s
        return achieved / self.peak_flops if achieved and self.peak_flops else None


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    points = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
    return [(s, v) for s, _, v in points]


def _stage_runs(client, run) -> list:
    """A run's stage runs, the last one first (a reused stage: the run it reused)."""
    stages = client.search_runs([run.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
                                order_by=["attributes.start_time DESC"], max_results=200)
    out = []
    for stage in stages:
        if "graphssl.stage" in stage.data.tags:
            reused = stage.data.tags.get("graphssl.reused_from")
            out.append(client.get_run(reused) if reused else stage)
    return out


def _cumulative_time(client, run_id: str) -> dict[int, float]:
    """{steps done: summed step times} from the step_time_s history."""
    per_step = dict(_history(client, run_id, "step_time_s"))
    out, total = {}, 0.0
    for step in sorted(per_step):
        total += per_step[step]
        out[step + 1] = total
    return out


def _per_step(params: dict[str, str], tags: dict[str, str]) -> dict[str, float]:
    out = {}
    if "flops_per_step" in params:
        out["flops"] = float(params["flops_per_step"])
    batch = params.get("global_batch") or tags.get("graphssl.global_batch") or params.get("data.batch_size")
    if batch is not None:
        out["images"] = float(batch)
    return out


def _steps_param(params: dict[str, str]) -> int | None:
    value = params.get("train.steps")
    return int(value) if value is not None and value.isdigit() else None  # None, "None" or masked ("***")


def summarize(client, run) -> RunSummary:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    stages = _stage_runs(client, run)
    source_run = stages[0] if stages else run
    source = source_run.info.run_id
    eval_metrics = [k for k in tags.get(EVAL_METRICS_TAG, "").split(",") if k and not k.endswith("_init")]
    curves = {"loss": _history(client, source, "loss")}
    for key in eval_metrics:
        points = _history(client, source, key)
        init = _history(client, source, f"{key}_init")
        if points or init:
            curves[key] = sorted([(0, v) for _, v in init[-1:]] + [(s + 1, v) for s, v in points])  # step s ends at s + 1
    source_metrics, source_params = source_run.data.metrics, source_run.data.params
    speed = [v for _, v in _history(client, source, "images_per_s")]
    steps = _steps_param(source_params) or _steps_param(params)
    if steps is None and curves["loss"]:
        steps = curves["loss"][-1][0] + 1
    losses = {k: v for k, v in source_metrics.items() if k == "loss" or k.startswith("loss/")}
    final = {**{k: v for k, v in source_metrics.items() if k.removesuffix("_init") in eval_metrics}, **metrics}
    cumulative = {"flops": {s + 1: v for s, v in _history(client, source, "train_flops")},
                  "time": _cumulative_time(client, source)}
    offsets = {"flops": 0.0, "time": 0.0, "images": 0.0}
    for earlier in stages[1:]:
        offsets["flops"] += earlier.data.metrics.get("train_flops", 0.0)
        offsets["time"] += max(_cumulative_time(client, earlier.info.run_id).values(), default=0.0)
        images = _per_step(earlier.data.params, earlier.data.tags).get("images", 0.0)
        offsets["images"] += images * (_steps_param(earlier.data.params) or 0)
    peak = peak_flops(source_params.get("device_name", ""), source_params.get("train.precision", "fp32"))
    return RunSummary(run.info.run_id, run.info.run_name or run.info.run_id[:8], tags.get("graphssl.pipeline", ""),
                      run.info.status, run.info.start_time or 0, steps,
                      statistics.median(speed[1:] or speed) if speed else None, final, losses, curves,
                      cumulative, _per_step(source_params, source_run.data.tags), offsets,
                      peak * int(source_params.get("world_size", 1)) if peak else None, eval_metrics)


def eval_metric_names(runs: list[RunSummary]) -> list[str]:
    """The evaluator metrics of all runs, in the order they first appear."""
    return list(dict.fromkeys(k for r in runs for k in r.eval_metrics))


def find_runs(tracking_uri: str | None = None, experiment: str = "graphssl", run_ids: list[str] = (),
              limit: int = 10) -> list[RunSummary]:
    """The runs to compare: the given ids (full ids, unique prefixes or run names in the experiment),
    or the experiment's ``limit`` newest finished parent runs."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise CompareError(f"no tracking store at {uri} (run from the folder of your runs, or give --tracking-uri)")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = []
    if run_ids:
        candidates = None
        for wanted in run_ids:
            try:
                runs.append(client.get_run(wanted))
                continue
            except MlflowException:
                pass
            if exp is None:
                raise CompareError(f"no run {wanted!r} and no experiment {experiment!r} to look for it by name or prefix")
            if candidates is None:
                candidates = client.search_runs([exp.experiment_id], max_results=5000)
            matches = [r for r in candidates if r.info.run_id.startswith(wanted) or r.info.run_name == wanted]
            parents = [r for r in matches if "mlflow.parentRunId" not in r.data.tags]
            matches = parents or matches
            if len(matches) != 1:
                found = "no run" if not matches else f"{len(matches)} runs"
                raise CompareError(f"{found} in experiment {experiment!r} with id prefix or name {wanted!r}")
            runs.append(matches[0])
    else:
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise CompareError(f"no experiment {experiment!r} in {uri} "
                               f"(it has: {', '.join(names) or 'none'})")
        found = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                   order_by=["attributes.start_time DESC"], max_results=5000)
        runs = [r for r in found if "mlflow.parentRunId" not in r.data.tags][:limit]
        if not runs:
            raise CompareError(f"experiment {experiment!r} has no finished runs")
        runs.reverse()  # oldest first: the order they were made
    return [summarize(client, r) for r in runs]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def table_rows(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    names = eval_metric_names(runs)
    header = ["run", "id", "pipeline", "steps", "images/s", "FLOPs", "FLOP/s", "MFU", "loss", "losses", *names]
    rows = []
    for r in runs:
        parts = " ".join(f"{k.removeprefix('loss/')}={v:.4f}" for k, v in sorted(r.losses.items()) if k != "loss")
        evals = []
        for key in names:
            value, init = r.final.get(key), r.final.get(f"{key}_init")
            evals.append(_fmt(value) + (f" (init {init:.4f})" if value is not None and init is not None else ""))
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        rows.append([r.name, r.run_id[:8], r.pipeline or "-", str(r.steps or "-"), _fmt(r.images_per_s, 0),
                     _sci(r.total_flops), _sci(r.flops_per_s), mfu,
                     _fmt(r.losses.get("loss")), parts if len(r.losses) > 2 else "", *evals])
    return header, rows


def print_table(runs: list[RunSummary], stream=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream)
    if not console.is_terminal:
        console = Console(file=stream, width=max(160, shutil.get_terminal_size((160, 24)).columns))
    header, rows = table_rows(runs)
    table = Table(*header, title=f"{len(runs)} run{'s' * (len(runs) != 1)}")
    for row in rows:
        table.add_row(*row)
    console.print(table)
