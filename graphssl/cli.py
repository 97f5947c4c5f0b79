"""graphssl's command line: run, check, components, graph, compare, export, schema, new."""
from __future__ import annotations

import argparse
import os
import sys

from graphssl.commands import (EXIT_INVALID, cmd_check, cmd_compare, cmd_components, cmd_export, cmd_graph, cmd_new,
                               cmd_run, cmd_schema)
from graphssl.errors import PipelineError


def _print_problems(err: PipelineError) -> None:
    from graphssl.redact import scrub

    print(scrub(err.format()), file=sys.stderr)


def count(minimum: int):
    """An argparse type: an integer of at least ``minimum`` (argparse then exits with 2 and says why)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphssl", description="Declarative experiment graphs for self-supervised vision pretraining.")
    sub = parser.add_subparsers(dest="command", required=True)

    def pipeline_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("pipeline", nargs="?", metavar="PIPELINE", help="a pipeline YAML file")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="optional overrides, e.g. train.steps=50 data.batch_size=32")

    p = sub.add_parser("run", help="train a pipeline, tracked in MLflow")
    p.add_argument("pipeline", nargs="?", metavar="PIPELINE", help="a pipeline YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="optional overrides, e.g. train.steps=50 data.batch_size=32")
    p.add_argument("--from-run", metavar="RUN_ID", help="repeat a logged run from its resolved pipeline (overrides apply on top)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: graphssl)")
    p.add_argument("--run-name", help="name of the parent run (default: the pipeline's name)")
    p.add_argument("--force", action="store_true", help="retrain every stage, even unchanged ones")
    p.add_argument("--resume", metavar="RUN_ID_OR_PATH", help="continue a stopped run from its last checkpoint")
    p.add_argument("--nproc-per-node", type=count(1), help="processes per machine (DDP through torchrun; gloo on CPU, NCCL on GPU)")
    p.add_argument("--nnodes", type=count(1), help="machines taking part (run the same command on each)")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous of a multi-machine run")
    p.add_argument("--node-rank", type=count(0), help="this machine's rank in a multi-machine run")
    p.add_argument("--register", metavar="NAME", help="register the trained encoder (the last stage's) as a new "
                                                      "version of this MLflow registered model")
    p.add_argument("--system-metrics", action="store_true", help="log MLflow's system metrics (CPU, memory, GPU)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a pipeline and dry-run it on a tiny batch; trains nothing")
    pipeline_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("components", help="components with their ports and parameters (all, one, or a family)")
    p.add_argument("name", nargs="?", help="a component (mask.block) or a family (mask)")
    p.add_argument("--brief", action="store_true", help="one line per component")
    p.add_argument("--plugin", action="append", metavar="FILE_OR_MODULE",
                   help="also import a plugin (my_losses.py or a module name), as a pipeline's plugins: does")
    p.set_defaults(func=cmd_components)

    p = sub.add_parser("compare", help="compare tracked runs: a table, and a picture of their curves")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs (ids, id prefixes or run names); default: the newest finished runs")
    p.add_argument("--experiment", default="graphssl", help="MLflow experiment name (default: graphssl)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--last", type=count(1), default=10, help="without RUN_IDs: how many of the newest runs (default 10)")
    p.add_argument("-o", "--output", help="write the picture here (png, svg, pdf)")
    p.add_argument("--x", default="steps", choices=["steps", "flops", "images", "time"],
                   help="x axis of the curves: steps, counted training FLOPs, source images seen, or summed step "
                        "time in seconds (default: steps)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write a run's trained encoder as a timm model folder (config.json, model.safetensors)",
                       epilog="examples: graphssl export mae -o mae_encoder;  graphssl export 3f2a9c --stage student;  "
                              "graphssl export checkpoints/RUN_ID --node teacher.student")
    p.add_argument("run_id", metavar="RUN_ID", help="a run id, unique id prefix, run name (the newest) or checkpoint folder")
    p.add_argument("-o", "--output", help="the folder to write (default: ./RUNNAME-IDPREFIX[-STAGE])")
    p.add_argument("--node", help="the node to export (default: the encoder the run's evaluator evaluated)")
    p.add_argument("--stage", help="a staged pipeline's stage (default: the last)")
    p.add_argument("--feature", choices=("cls", "mean"), help="pooling of forward_head: [CLS] or the mean patch token "
                                                              "(default: the evaluator's)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("schema", help="print the JSON Schema of pipeline YAML (graphssl schema > pipeline.schema.json)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("new", help="copy a shipped pipeline to ./NAME.yaml, to edit")
    p.add_argument("name", help="the new pipeline's name (letters, digits, _ and -): written to ./NAME.yaml")
    p.add_argument("--from", dest="source", required=True, metavar="PIPELINE",
                   help="a shipped pipeline (mae, ibot, ...) or a pipeline file")
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("graph", help="draw a pipeline's graph")
    pipeline_args(p)
    p.add_argument("-o", "--output", default="graph.png", help="output picture (png, svg, pdf)")
    p.set_defaults(func=cmd_graph)
    return parser


VALUE_OPTIONS = {"--tracking-uri", "--experiment", "--run-name", "--resume", "--from-run", "--nproc-per-node",
                 "--nnodes", "--rdzv-endpoint", "--node-rank", "-o", "--output", "--from", "--last", "--register",
                 "--node", "--stage", "--feature", "--plugin", "--x"}


def positionals_first(argv: list[str]) -> list[str]:
    """Move the pipeline and key=value overrides before the options, so they may be written in any order."""
    if not argv:
        return argv
    positionals, options, i = [], [], 1
    while i < len(argv):
        arg = argv[i]
        if arg in VALUE_OPTIONS and i + 1 < len(argv):
            options += [arg, argv[i + 1]]
            i += 2
            continue
        (options if arg.startswith("-") else positionals).append(arg)
        i += 1
    return [argv[0], *positionals, *options]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(positionals_first(argv))
    args.argv = argv
    try:
        return args.func(args)
    except PipelineError as err:
        _print_problems(err)
        return EXIT_INVALID
    except Exception as err:
        from graphssl.checkpoint import CheckpointError
        from graphssl.runner import Stopped

        from graphssl.redact import scrub
        from graphssl.tracking import TrackingError

        if isinstance(err, (CheckpointError, TrackingError)):
            print(scrub(f"error: {err}"), file=sys.stderr)
            return EXIT_INVALID
        if isinstance(err, Stopped):
            print(f"stopped: checkpoint written at step {err.step} ({err.checkpoint})", file=sys.stderr)
            return 130
        if os.environ.get("GRAPHSSL_DEBUG"):
            raise
        print(scrub(f"error: {err or type(err).__name__}\n(set GRAPHSSL_DEBUG=1 for the traceback)"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
