"""``graphssl compare``: runs from the MLflow store side by side, as a table and a picture.

The table has one row per run: pipeline, steps, images/s (median over steps),
the final loss and its parts, and the final ``knn_top1`` and ``linear_top1``.
The picture has the training-loss curves, the k-NN accuracy over the run
(its value at initialisation at step 0, then every evaluation) and the final
k-NN and linear-probe accuracies as bars.

Without run ids, the finished parent runs (not node or stage runs) of the
experiment are compared, newest first. A staged pipeline's curves come from
its last stage's run (where training happened; a reused stage points to the
run it reused).
"""
from __future__ import annotations

import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from graphssl.tracking import default_tracking_uri

EVAL_METRICS = ("knn_top1", "linear_top1")  # always shown; other evaluators' metrics are read from the runs
EVAL_LABELS = {"knn_top1": "k-NN", "linear_top1": "linear"}


def logged_evaluations(metrics: dict[str, float]) -> list[str]:
    """The evaluator metrics a run logged: every evaluator logs NAME_init before training and NAME after."""
    return sorted({k.removesuffix("_init") for k in metrics if k.endswith("_init") and k != "_init"})


def eval_metrics(runs: list["RunSummary"]) -> list[str]:
    found = {k for r in runs for k in r.evaluations}
    return [*EVAL_METRICS, *sorted(found - set(EVAL_METRICS))]


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
    evaluations: list[str] = field(default_factory=list)  # the evaluator metrics the run logged

    @property
    def label(self) -> str:
        return self.name if self.name == self.pipeline or not self.pipeline else f"{self.name} ({self.pipeline})"


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    points = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
    return [(s, v) for s, _, v in points]


def _eval_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """An evaluation metric's points; a copy of the final value re-logged at step 0 after the run
    (the pipeline-level summary of the last stage) is not a point of the curve."""
    points = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
    if len(points) > 1 and points[0][0] == 0 and points[0][1] >= max(t for _, t, _ in points[1:]):
        points = points[1:]
    return [(s, v) for s, _, v in points]


def _training_run(client, run) -> str:
    """The run that holds the training curves: the parent itself, or a staged pipeline's last stage."""
    if "loss" in run.data.metrics:
        return run.info.run_id
    stages = client.search_runs([run.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
                                order_by=["attributes.start_time DESC"], max_results=200)
    stages = [s for s in stages if "graphssl.stage" in s.data.tags]
    if not stages:
        return run.info.run_id
    last = stages[0]
    return last.data.tags.get("graphssl.reused_from", last.info.run_id)


def summarize(client, run) -> RunSummary:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    source = _training_run(client, run)
    source_metrics = metrics if source == run.info.run_id else client.get_run(source).data.metrics
    evaluations = logged_evaluations({**source_metrics, **metrics})
    curves = {"loss": _history(client, source, "loss")}
    for key in dict.fromkeys([*EVAL_METRICS, *evaluations]):
        points = _eval_history(client, source, key)
        init = _history(client, source, f"{key}_init")
        if points or init:
            curves[key] = sorted([(0, v) for _, v in init[-1:]] + [(s + 1, v) for s, v in points])  # step s ends at s + 1
    speed = [v for _, v in _history(client, source, "images_per_s")]
    steps = params.get("train.steps")
    if steps is None and curves["loss"]:
        steps = curves["loss"][-1][0] + 1
    losses = {k: v for k, v in source_metrics.items() if k == "loss" or k.startswith("loss/")}
    final = {**{k: v for k, v in source_metrics.items() if k.removesuffix("_init") in evaluations}, **metrics}
    return RunSummary(run.info.run_id, run.info.run_name or run.info.run_id[:8], tags.get("graphssl.pipeline", ""),
                      run.info.status, run.info.start_time or 0, int(steps) if steps is not None else None,
                      statistics.median(speed[1:] or speed) if speed else None, final, losses, curves, evaluations)


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


def table_rows(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    names = eval_metrics(runs)
    header = ["run", "id", "pipeline", "steps", "images/s", "loss", "losses", *names]
    rows = []
    for r in runs:
        parts = " ".join(f"{k.removeprefix('loss/')}={v:.4f}" for k, v in sorted(r.losses.items()) if k != "loss")
        evals = []
        for key in names:
            value, init = r.final.get(key), r.final.get(f"{key}_init")
            evals.append(_fmt(value) + (f" (init {init:.4f})" if value is not None and init is not None else ""))
        rows.append([r.name, r.run_id[:8], r.pipeline or "-", str(r.steps or "-"), _fmt(r.images_per_s, 0),
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


def draw(runs: list[RunSummary], output: str | Path, title: str | None = None) -> Path:
    """Loss curves | k-NN top-1 over steps | final k-NN and linear top-1 bars, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

    fig, (ax_loss, ax_knn, ax_bar) = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.25, 1, 0.9]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = eval_metrics(runs)
    positive = True
    for i, r in enumerate(runs):
        color = colors[i % len(colors)]
        loss = r.curves.get("loss", [])
        if loss:
            steps, values = zip(*[(s + 1, v) for s, v in loss])
            ax_loss.plot(steps, values, color=color, lw=1.4, label=r.label)
            positive = positive and min(values) > 0
        for key, style in zip(names, ["-o", "--s", ":^", "-.v"] * len(names)):
            points = r.curves.get(key, [])
            if points:
                steps, values = zip(*points)
                ax_knn.plot(steps, values, style, color=color, ms=4, lw=1.2, label=f"{r.label} {EVAL_LABELS.get(key, key)}")
    if positive and ax_loss.lines:
        ax_loss.set_yscale("log")
        low, high = ax_loss.get_ylim()
        plain = FormatStrFormatter("%.3g")
        ax_loss.yaxis.set_major_formatter(plain)
        ax_loss.yaxis.set_minor_formatter(plain if high / low < 20 else NullFormatter())
    for ax in (ax_loss, ax_knn):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set(title="training loss", xlabel="step", ylabel="loss (log)" if positive else "loss")
    ax_loss.grid(alpha=0.3, which="both")
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    ax_knn.set(title="top-1 during training (step 0: at initialisation)\nk-NN solid, linear probe dashed", xlabel="step", ylabel="top-1 on the test split")
    ax_knn.grid(alpha=0.3)
    if ax_knn.lines:
        ax_knn.legend(fontsize=7)

    width = 0.8 / len(names)
    for j, key in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(runs))]
        values = [r.final.get(key, 0.0) for r in runs]
        bars = ax_bar.bar(xs, values, width * 0.95, color=[colors[i % len(colors)] for i in range(len(runs))],
                          alpha=1.0 if j == 0 else 0.55, hatch=None if j == 0 else "//", edgecolor="white",
                          label={"knn_top1": "k-NN", "linear_top1": "linear probe"}.get(key, key))
        for bar, r in zip(bars, runs):
            if key in r.final:
                ax_bar.annotate(f"{r.final[key]:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7)
    ax_bar.set_xticks(range(len(runs)), [r.name for r in runs], rotation=20 if len(runs) > 3 else 0, fontsize=8)
    ax_bar.set(title="final top-1 (solid: k-NN, hatched: linear)", ylim=(0, 1.05))
    ax_bar.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
