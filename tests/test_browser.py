"""The MLflow UI in a real browser: an `mlflow server`, two short `graphssl run`s, headless Chromium.

Chromium is Debian's /usr/bin/chromium and Playwright the Python package, both
installed by .ci/run; the test is skipped (saying why) only where they are missing.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import PIPELINES, graphssl_cmd
from support.mlflow_ui import browser_missing, chromium_page, close_assistant, expand_run, mlflow_server, runs_page, wait_for_text

SHORT_MAE = ["train.steps=2", "data.limit=128", "data.batch_size=16", "eval.limit=50", "nodes.encoder.depth=1",
             "nodes.decoder.depth=1", "device=cpu"]
NAMES = ("browser-mae-a", "browser-mae-b")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))]


def test_mlflow_ui_shows_both_runs_and_a_node_child_run(workdir):
    from mlflow import MlflowClient

    with mlflow_server(workdir / "server") as url:
        client = MlflowClient(url)
        client.create_experiment("browser")  # before the two runs start at once (both would create it)
        procs = [subprocess.Popen(graphssl_cmd("run", str(PIPELINES / "mae.yaml"), *SHORT_MAE, f"seed={i}",
                                               "--tracking-uri", url, "--experiment", "browser", "--run-name", name),
                                  cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})  # two runs at once: one thread each
                 for i, name in enumerate(NAMES)]
        for proc in procs:
            out, _ = proc.communicate(timeout=400)
            assert proc.returncode == 0, out[-3000:]

        exp = client.get_experiment_by_name("browser")
        runs = client.search_runs([exp.experiment_id])
        parents = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
        assert set(parents) == set(NAMES)
        stage = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[NAMES[0]].info.run_id)
        child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id
                     and r.data.tags.get("graphssl.node") == "encoder")

        with chromium_page() as page:
            page.goto(runs_page(url, exp.experiment_id))
            for name in NAMES:  # the UI renders after its API calls: wait for the text itself
                wait_for_text(page, name)
            close_assistant(page)
            expand_run(page, NAMES[0], stage.info.run_name)  # the parent unfolds to its stage run,
            expand_run(page, stage.info.run_name, "encoder")  # and that to its node runs
            shot = workdir / "mlflow_ui.png"
            page.screenshot(path=str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

            # the node's child run: its own page, with its tags and a link back to the parent
            page.get_by_role("link", name="encoder", exact=True).first.click()
            page.wait_for_url(f"**/runs/{child.info.run_id}", timeout=60_000)
            wait_for_text(page, child.info.run_id)
            page.get_by_title("encoder.vit", exact=True).first.wait_for(timeout=60_000)  # tag graphssl.component
            page.get_by_role("link", name=stage.info.run_name, exact=True).first.wait_for(timeout=60_000)  # "Parent run"
