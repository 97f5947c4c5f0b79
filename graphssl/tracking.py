"""MLflow tracking: one parent run per pipeline run, one child run per graph node.

Metrics are buffered and written with ``log_batch`` (a synchronous
``log_metric`` against SQLite costs about 12 ms; a batch of a thousand points
about as much). The default store is ``sqlite:///mlflow.db`` in the working
directory, MLflow 3's own default; ``MLFLOW_TRACKING_URI`` or
``--tracking-uri`` points elsewhere.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from graphssl.redact import scrub
from graphssl.store import (TrackingError, check_local_store, is_refusal, probe_server,  # noqa: F401 (re-exported)
                            setting_up)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Fail fast when a tracking server is away (the defaults retry for minutes); graphssl keeps the metrics itself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# One "View run ... at: URL" line per node run against a server is noise; graphssl prints the parent's URI itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

MAX_PARAM_CHARS = 6000
BATCH_LIMIT = 1000


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists stay whole values."""
    out: dict[str, str] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        out[prefix] = str(config)[:MAX_PARAM_CHARS]
    return out


class Tracker:
    """Creates the runs and writes metrics in batches; used by the run hooks.

    Runs it created (or reopened) and has not ended are ``open_runs``: ``end_open_runs`` marks them all
    when a run fails. A point the store refuses does not hold up the others; it is reported once per key
    and kept in ``refused`` (written beside the checkpoints at the end). After a resume, points at or
    before the last step the store already holds (replayed steps) are not logged again.
    """

    def __init__(self, uri: str | None = None, experiment: str = "graphssl"):
        import mlflow
        from mlflow import MlflowClient

        # MLflow's database set-up ("Creating initial MLflow database tables...") is not the user's news.
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = uri or default_tracking_uri()
        if self.uri.startswith(("http://", "https://")):
            probe_server(self.uri)
        folder = check_local_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        try:
            with setting_up(folder if self.uri.startswith("sqlite:") else None):
                self.client = MlflowClient(self.uri)
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    try:
                        self.experiment_id = self.client.create_experiment(experiment)
                    except Exception:  # another run created it in the meantime
                        found = self.client.get_experiment_by_name(experiment)
                        if found is None:
                            raise
                if found is not None:
                    self.experiment_id = found.experiment_id
        except Exception as e:
            reason = "connection refused: is the tracking server running?" if "refused" in str(e) else str(e).splitlines()[0]
            raise TrackingError(f"cannot use the MLflow tracking store {self.uri}: {reason}") from None
        self._buffers: dict[str, list] = {}
        self.unreachable_since = 0.0
        self.open_runs: dict[str, None] = {}  # in creation order
        self.refused: list = []  # (run id, Metric) the store refused
        self.refused_keys: set[tuple[str, str]] = set()
        self.logged_until: dict[tuple[str, str], int] = {}  # (run, key) -> last step the store holds (resume)
        self.warn = lambda message: print(message, flush=True)

    # -- runs ---------------------------------------------------------------
    def create_run(self, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        if parent is not None:
            tags = {**tags, "mlflow.parentRunId": parent}
        run = self.client.create_run(self.experiment_id, run_name=scrub(name), tags={k: scrub(str(v)) for k, v in tags.items()})
        self.open_runs[run.info.run_id] = None
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again (``--resume``), and learn which steps of each metric it holds."""
        self.client.update_run(run_id, "RUNNING")
        self.open_runs[run_id] = None
        for key in self.client.get_run(run_id).data.metrics:
            steps = [m.step for m in self.client.get_metric_history(run_id, key)]
            if steps:
                self.logged_until[(run_id, key)] = max(steps)

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, scrub(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i: i + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, scrub(str(v))) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.safely(f"log the artifact {path} (it stays on disk)", self.client.log_artifact, run_id, str(path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.open_runs.pop(run_id, None)
        self.safely(f"mark run {run_id} {status}", self.client.set_terminated, run_id, status)

    def end_open_runs(self, status: str) -> None:
        """End every run still open, children first (a failure left them RUNNING)."""
        for run_id in reversed(list(self.open_runs)):
            self.end_run(run_id, status)

    # -- metrics --------------------------------------------------------------
    def metric(self, run_id: str, key: str, value, step: int) -> None:
        """Buffer a point; ``value`` may be a device tensor, read only when the buffer is written."""
        if step <= self.logged_until.get((run_id, key), -1):
            return  # a replayed step after a resume: the store has it
        self._buffers.setdefault(run_id, []).append((key, value, int(time.time() * 1000), step))

    def flush(self) -> bool:
        """Write the buffered metrics. If the store cannot be reached they stay buffered
        (and are retried at the next flush); returns whether everything was written.

        A batch the store refuses is sent again key by key, then point by point: the points it
        still refuses are set aside in ``refused`` (and reported once per key); the rest arrive.
        """
        from mlflow.entities import Metric

        for run_id in list(self._buffers):
            metrics = self._buffers[run_id]
            metrics[:] = [m if isinstance(m, Metric) else Metric(m[0], float(m[1]), m[2], m[3]) for m in metrics]
            refused = [m for m in metrics if (run_id, m.key) in self.refused_keys]
            if refused:
                self.refused += [(run_id, m) for m in refused]
                metrics[:] = [m for m in metrics if (run_id, m.key) not in self.refused_keys]
            while metrics:
                try:
                    self.client.log_batch(run_id, metrics=metrics[:BATCH_LIMIT])
                except Exception as e:
                    if is_refusal(e):
                        try:
                            self._write_singly(run_id, metrics[:BATCH_LIMIT])
                        except Exception as lost:  # the store went away meanwhile
                            return self._unreachable(lost)
                    else:
                        return self._unreachable(e)
                del metrics[:BATCH_LIMIT]
            del self._buffers[run_id]
        if self.unreachable_since:
            self.warn(f"the tracking store is back after {time.time() - self.unreachable_since:.0f}s; buffered metrics delivered")
            self.unreachable_since = 0.0
        return True

    def _unreachable(self, error: BaseException) -> bool:
        if not self.unreachable_since:
            self.unreachable_since = time.time()
            self.warn(f"warning: the tracking store {self.uri} cannot be reached ({type(error).__name__}); "
                      "training goes on and metrics are kept until it returns")
        return False

    def _write_singly(self, run_id: str, metrics: list) -> None:
        """A refused batch, again: each key's points together, and a refused key's points one by one.
        Raises what is not a refusal (the store is away): the caller keeps the batch buffered."""
        by_key: dict[str, list] = {}
        for m in metrics:
            by_key.setdefault(m.key, []).append(m)
        for key, points in by_key.items():
            try:
                self.client.log_batch(run_id, metrics=points)
                continue
            except Exception as e:
                if not is_refusal(e):
                    raise
                reason = str(e).splitlines()[0]
            kept = 0
            for point in points:
                try:
                    self.client.log_batch(run_id, metrics=[point])
                    kept += 1
                except Exception as e:
                    if not is_refusal(e):
                        raise
                    self.refused.append((run_id, point))
            if not kept:
                self.refused_keys.add((run_id, key))
            later = "; so are its later points" if not kept else ""
            self.warn(f"warning: the tracking store refused {len(points) - kept} point(s) of the metric {key!r} "
                      f"of run {run_id} ({reason[:300]}); the other metrics are logged, these are set aside{later}")

    def pending(self) -> int:
        return sum(len(m) for m in self._buffers.values())

    def dump_pending(self, path: Path) -> Path | None:
        """Write metrics that could not be delivered to a JSON-lines file (never drop them silently)."""
        if not self.pending():
            return None
        self._dump(path, [(run_id, m) for run_id, metrics in self._buffers.items() for m in metrics])
        self._buffers.clear()
        return path

    def dump_refused(self, path: Path) -> Path | None:
        """Write the points the store refused to a JSON-lines file."""
        if not self.refused:
            return None
        self._dump(path, self.refused)
        self.refused = []
        return path

    @staticmethod
    def _dump(path: Path, points: list) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for run_id, m in points:
                key, value, timestamp, step = (m.key, m.value, m.timestamp, m.step) if hasattr(m, "key") else m
                f.write(json.dumps({"run_id": run_id, "key": key, "value": float(value), "step": step,
                                    "timestamp": timestamp}) + "\n")

    def safely(self, what: str, fn, *args, **kwargs):
        """Call a tracking write that must not stop training (ending runs, tags) and warn if it fails."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.warn(f"warning: could not {what} in the tracking store ({type(e).__name__}: {e})")
            return None
