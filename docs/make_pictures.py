"""Regenerate the README's pictures of the "Compare runs" and "Equal-compute comparisons" sections.

    python docs/make_pictures.py                      # CPU, a few minutes (--threads 1 on a busy machine)
    python docs/make_pictures.py --steps 300 --device cuda --pipelines mae simmim dino
    python docs/make_pictures.py --picture flops --flops-budget 5e12 --pipelines mae simmim dino --threads 1

``--picture ui`` (the default) starts `mlflow server` on 127.0.0.1 with a
temporary SQLite store, trains short runs of the shipped pipelines into it
with `graphssl run`, then writes

- docs/compare.png   `graphssl compare` of those runs (loss and accuracy curves);
- docs/mlflow_ui.png the MLflow UI's runs table in headless Chromium
  (/usr/bin/chromium through Playwright), one run unfolded to its node runs.

``--picture flops`` trains each pipeline with the same ``train.budget.flops``
(into a temporary SQLite store; no server, no browser) and writes

- docs/compare_flops.png  `graphssl compare --x flops` of those runs.

Nothing is written outside docs/ and a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the MLflow/Chromium helpers live with the tests

from support.mlflow_ui import (browser_missing, chromium_page, close_assistant, expand_run, mlflow_server,  # noqa: E402
                               runs_page, show_columns, wait_for_text)

EXPERIMENT = "readme"


def graphssl(*args: str, cwd: Path, threads: int | None = None) -> None:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    subprocess.run([sys.executable, "-m", "graphssl", *args], cwd=cwd, env=env, check=True)


def flops_picture(args: argparse.Namespace) -> int:
    """Every pipeline at one FLOP budget, compared against counted FLOPs."""
    overrides = ["train.steps=null", f"train.budget.flops={args.flops_budget:g}", f"data.limit={args.limit}",
                 f"eval.limit={args.eval_limit}", f"device={args.device}"]
    experiment = f"{args.flops_budget:g} counted training FLOPs each"
    with tempfile.TemporaryDirectory(prefix="graphssl-pictures-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for name in args.pipelines:
            graphssl("run", str(REPO / "pipelines" / f"{name}.yaml"), *overrides, "--tracking-uri", uri,
                     "--experiment", experiment, "--run-name", name, cwd=Path(tmp), threads=args.threads)
        output = args.out / "compare_flops.png"
        graphssl("compare", "--tracking-uri", uri, "--experiment", experiment, "--x", "flops", "-o", str(output), cwd=Path(tmp))
    print(f"wrote {output}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picture", choices=["ui", "flops"], default="ui",
                        help="ui: compare.png and mlflow_ui.png; flops: compare_flops.png")
    parser.add_argument("--pipelines", nargs="+", default=["mae", "simmim"])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--flops-budget", type=float, default=5e12, help="--picture flops: train.budget.flops of every run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=4000, help="training images")
    parser.add_argument("--eval-limit", type=int, default=1000)
    parser.add_argument("--threads", type=int, help="CPU threads per run (OMP_NUM_THREADS); 1 is fastest on shared CPUs")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    if args.picture == "flops":
        args.out.mkdir(parents=True, exist_ok=True)
        return flops_picture(args)
    why = browser_missing()
    if why:
        print(f"cannot take the screenshot: {why}", file=sys.stderr)
        return 1
    overrides = [f"train.steps={args.steps}", f"train.log_every={max(1, args.steps // 30)}", f"data.limit={args.limit}",
                 f"eval.limit={args.eval_limit}", f"eval.every={max(1, args.steps // 4)}", f"device={args.device}"]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graphssl-pictures-") as tmp, mlflow_server(Path(tmp) / "server") as url:
        from mlflow import MlflowClient

        client = MlflowClient(url)
        exp_id = client.create_experiment(EXPERIMENT)
        for name in args.pipelines:
            graphssl("run", str(REPO / "pipelines" / f"{name}.yaml"), *overrides, "--tracking-uri", url,
                     "--experiment", EXPERIMENT, "--run-name", f"{name}-{args.steps}", cwd=Path(tmp), threads=args.threads)
        graphssl("compare", "--tracking-uri", url, "--experiment", EXPERIMENT, "-o", str(args.out / "compare.png"), cwd=Path(tmp))

        with chromium_page(1400, 640) as page:
            page.goto(runs_page(url, exp_id))
            for name in args.pipelines:
                wait_for_text(page, f"{name}-{args.steps}")
            close_assistant(page)
            missing = show_columns(page, ["graphssl.pipeline", "images_per_s", "loss", "knn_top1", "linear_top1"],
                                   hide=["Dataset", "Source", "Models"])
            if missing:
                print(f"columns not found in the UI: {', '.join(missing)}", file=sys.stderr)
            expand_run(page, f"{args.pipelines[0]}-{args.steps}", args.pipelines[0])  # the run unfolds to its stage run,
            expand_run(page, args.pipelines[0], "encoder")  # ... and that to its node runs
            time.sleep(1.0)  # let the table settle after unfolding
            page.screenshot(path=str(args.out / "mlflow_ui.png"))
    print(f"wrote {args.out / 'compare.png'} and {args.out / 'mlflow_ui.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
