"""graphssl's command line: run, check, components, graph, compare, schema, new."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from graphssl.errors import PipelineError

EXIT_INVALID = 2


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


LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--rdzv-endpoint", "--node-rank")


def _without_launch_flags(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCH_FLAGS:
            skip = True
            continue
        if arg.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            continue
        out.append(arg)
    return out


def pipeline_of_run(run_id: str, tracking_uri: str | None, folder: str) -> str:
    """The resolved pipeline a run logged (its pipeline.yaml artifact), downloaded into ``folder``."""
    from mlflow import MlflowClient

    from graphssl.tracking import TrackingError, default_tracking_uri

    try:
        return MlflowClient(tracking_uri or default_tracking_uri()).download_artifacts(run_id, "pipeline.yaml", folder)
    except Exception as e:
        raise TrackingError(f"--from-run {run_id}: cannot get its pipeline.yaml ({type(e).__name__}: {e})") from None


def cmd_run(args: argparse.Namespace) -> int:
    from graphssl.runner import run

    if args.from_run:
        import tempfile

        overrides = ([args.pipeline] if args.pipeline else []) + args.overrides
        with tempfile.TemporaryDirectory() as tmp:
            args.pipeline, args.overrides = pipeline_of_run(args.from_run, args.tracking_uri, tmp), overrides
            args.from_run = None
            return cmd_run(args)
    if not args.pipeline:
        print("graphssl run: give a pipeline file, or --from-run RUN_ID", file=sys.stderr)
        return EXIT_INVALID

    if (args.nproc_per_node or 1) * (args.nnodes or 1) > 1 and "WORLD_SIZE" not in os.environ:
        from graphssl.distributed import launch
        from graphssl.plan import plan_pipeline

        processes = (args.nproc_per_node or 1) * (args.nnodes or 1)
        plan_pipeline(args.pipeline, args.overrides, processes)  # report a broken pipeline once, before any process starts
        return launch(_without_launch_flags(args.argv), args.nproc_per_node or 1, args.nnodes or 1,
                      args.rdzv_endpoint, args.node_rank)

    run_id = run(args.pipeline, args.overrides, tracking_uri=args.tracking_uri, experiment=args.experiment,
                 run_name=args.run_name, force=args.force, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"finished run {run_id}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from graphssl.build import resolve_device
    from graphssl.plan import check_plan, plan_pipeline

    if not args.pipeline:
        print("graphssl check: give a pipeline file, e.g. graphssl check pipelines/mae.yaml", file=sys.stderr)
        return EXIT_INVALID
    plan = plan_pipeline(args.pipeline, args.overrides)
    first = next(iter(plan.stages.values())).prepared
    for stage in plan.stages.values():
        for w in stage.prepared.warnings:
            print(w.format(plan.source))
    shapes = check_plan(plan, resolve_device(first.cfg.device))
    n = sum(len(s.prepared.spec.nodes) for s in plan.stages.values())
    several = len(plan.stages) > 1
    print(f"{plan.source}: valid ({n} nodes{f', {len(plan.stages)} stages' if several else ''}); dry run on a tiny batch passed")
    for stage_name, stage in plan.stages.items():
        if several:
            needs = f" (needs {', '.join(stage.needs)})" if stage.needs else ""
            print(f"stage {stage_name}{needs}:")
        spec = stage.prepared.spec
        for name in spec.order:
            node = spec.nodes[name]
            what = f"call {node.call}" if node.call else node.type_name
            outs = ", ".join(f"{p}: {s}" for p, s in shapes[stage_name].get(name, {}).items())
            print(f"  {name:<16} {what:<24} -> {outs}")
        for name, node in spec.nodes.items():
            if node.role != "step":
                print(f"  {name:<16} {node.type_name:<24} ({node.role})")
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    from graphssl import registry
    from graphssl.describe import describe, first_sentence

    names = registry.names()
    if args.brief:
        for name in names:
            print(f"{name:<28} {first_sentence(registry.get(name).__doc__)}")
        return 0
    chosen = [n for n in names if not args.name or n == args.name or n.startswith(args.name.rstrip(".") + ".")]
    if not chosen:
        from graphssl.errors import did_you_mean

        print(f"unknown component {args.name!r}{did_you_mean(args.name, names)}", file=sys.stderr)
        return EXIT_INVALID
    blocks = ["\n".join(describe(n, registry.get(n), full_doc=len(chosen) == 1)) for n in chosen]
    print("\n\n".join(blocks))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from graphssl.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    from graphssl.names import identifier_problem
    from graphssl.scaffold import NewPipelineError, new_pipeline

    bad_name = identifier_problem(args.name, "the new pipeline's name")
    if bad_name:  # a name, not a path: the copy is ./NAME.yaml
        print(f"error: {bad_name} (it is written to ./NAME.yaml)", file=sys.stderr)
        return EXIT_INVALID
    try:
        written = new_pipeline(args.name, args.source)
    except NewPipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {written} (from {args.source}); edit it, then: graphssl check {written}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from graphssl.compare import CompareError, draw, find_runs, print_table

    try:
        runs = find_runs(args.tracking_uri, args.experiment, args.run_ids, limit=args.last)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_table(runs)
    if args.output:
        print(f"wrote {draw(runs, args.output, title=f'experiment {args.experiment}')}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from graphssl.picture import draw_graph
    from graphssl.plan import plan_pipeline

    if not args.pipeline:
        print("graphssl graph: give a pipeline file, e.g. graphssl graph pipelines/mae.yaml -o mae.png", file=sys.stderr)
        return EXIT_INVALID
    plan = plan_pipeline(args.pipeline, args.overrides)
    output = Path(args.output)
    for name, stage in plan.stages.items():
        out = output if len(plan.stages) == 1 else output.with_name(f"{output.stem}.{name}{output.suffix}")
        draw_graph(stage.prepared.spec, out, title=stage.prepared.cfg.name)
        print(f"wrote {out}")
    return 0


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
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a pipeline and dry-run it on a tiny batch; trains nothing")
    pipeline_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("components", help="components with their ports and parameters (all, one, or a family)")
    p.add_argument("name", nargs="?", help="a component (mask.block) or a family (mask)")
    p.add_argument("--brief", action="store_true", help="one line per component")
    p.set_defaults(func=cmd_components)

    p = sub.add_parser("compare", help="compare tracked runs: a table, and a picture of their curves")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs (ids, id prefixes or run names); default: the newest finished runs")
    p.add_argument("--experiment", default="graphssl", help="MLflow experiment name (default: graphssl)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--last", type=count(1), default=10, help="without RUN_IDs: how many of the newest runs (default 10)")
    p.add_argument("-o", "--output", help="write the picture here (png, svg, pdf)")
    p.set_defaults(func=cmd_compare)

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
                 "--nnodes", "--rdzv-endpoint", "--node-rank", "-o", "--output", "--from", "--last"}


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

        from graphssl.tracking import TrackingError

        from graphssl.redact import scrub

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
