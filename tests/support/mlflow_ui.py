"""A local MLflow server and a headless Chromium looking at it: for the browser test and the README pictures.

Chromium is Debian's (``/usr/bin/chromium``, ``apt-get install chromium``),
driven by Playwright's Python package; nothing is downloaded (never
``playwright install``). The MLflow UI is a JavaScript page: callers wait for
text to appear, not for the network to go idle.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = os.environ.get("GRAPHSSL_CHROMIUM", "/usr/bin/chromium")
# Headless, and quiet: the machine may have no network, and without these Chromium keeps trying to reach
# its update, sync and QUIC services.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def browser_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout: float = 180.0, log: Path | None = None) -> None:
    """Return once the MLflow server at ``url`` answers /health (it serves requests from then on);
    raise if its process ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"mlflow server exited with {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlflow server at {url} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


@contextmanager
def mlflow_server(folder: str | Path, port: int | None = None, timeout: float = 180.0) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with a SQLite store and artifacts in ``folder``; yields its URL.

    Waits until /health answers; the server (its whole process group) is stopped on exit.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "mlflow-server.log", "wb")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        wait_until_healthy(url, proc, timeout, log=folder / "mlflow-server.log")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group we started
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()


@contextmanager
def chromium_page(width: int = 1400, height: int = 800) -> Iterator["object"]:
    """A Playwright page in headless Debian Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="graphssl-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS, viewport={"width": width, "height": height})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def runs_page(url: str, experiment_id: str) -> str:
    """The experiment's runs table (the plain experiment URL opens MLflow 3's GenAI overview)."""
    return f"{url}/#/experiments/{experiment_id}/runs"


def wait_for_text(page, text: str, timeout_s: float = 90.0) -> None:
    page.get_by_text(text, exact=True).first.wait_for(state="visible", timeout=timeout_s * 1000)


def close_assistant(page) -> None:
    """Close MLflow's assistant side panel when it is open (it hides half of the table)."""
    button = page.get_by_role("button", name="Close")
    if button.count():
        try:
            button.first.click(timeout=3000)
        except Exception:
            pass


def expand_run(page, run_name: str, child_name: str, timeout_s: float = 60.0) -> None:
    """Unfold a parent run's row in the runs table until its child ``child_name`` shows."""
    # the row whose run-name link is ``run_name`` (other cells, a pipeline tag say, may show the same text)
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=run_name, exact=True)).first
    row.get_by_role("button").first.click()
    wait_for_text(page, child_name, timeout_s)


def show_columns(page, names: list[str], hide: list[str] = ()) -> list[str]:
    """Best effort: tick metric/param/tag columns (and untick ``hide``) in the Columns menu; returns those not found."""
    missing = []
    page.get_by_role("button", name="Columns").click()
    search = page.get_by_placeholder("Search columns")
    for name in [*hide, *names]:
        search.fill(name)
        node = page.locator(".du-bois-light-tree-treenode").filter(has=page.get_by_text(name, exact=True))
        try:
            node.first.locator(".du-bois-light-tree-checkbox").click(timeout=3000)
        except Exception:
            missing.append(name)
    page.keyboard.press("Escape")
    return missing
