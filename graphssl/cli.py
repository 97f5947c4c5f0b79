"""graphssl's command line: run, check, components, graph."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from graphssl.errors import PipelineError

EXIT_INVALID = 2


def _print_problems(err: PipelineError) -> None:
    print(err.format(), file=sys.stderr)


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


def cmd_run(args: argparse.Namespace) -> int:
    from graphssl.runner import run

    if (args.nproc_per_node or 1) * (args.nnodes or 1) > 1 and "WORLD_SIZE" not in os.environ:
        from graphssl.distributed import launch
        from graphssl.stages import plan_pipeline

        plan_pipeline(args.pipeline, args.overrides)  # report a broken pipeline once, before any process starts
        return launch(_without_launch_flags(args.argv), args.nproc_per_node or 1, args.nnodes or 1,
                      args.rdzv_endpoint, args.node_rank)

    run_id = run(args.pipeline, args.overrides, tracking_uri=args.tracking_uri, experiment=args.experiment,
                 run_name=args.run_name, force=args.force, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"finished run {run_id}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from graphssl.runner import check_plan, resolve_device
    from graphssl.stages import plan_pipeline

    plan = plan_pipeline(args.pipeline, args.overrides)
    first = next(iter(plan.stages.values())).prepared
    for stage in plan.stages.values():
        for w in stage.prepared.warnings:
            print(w.format(plan.source))
    shapes = check_plan(plan, resolve_device(first.cfg.device))
    n = sum(len(s.prepared.spec.nodes) for s in plan.stages.values())
    print(f"{plan.source}: valid ({n} nodes{f', {len(plan.stages)} stages' if plan.staged else ''}); dry run on a tiny batch passed")
    for stage_name, stage in plan.stages.items():
        if plan.staged:
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

    if not args.name:
        for name in registry.names():
            cls = registry.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:<28} {doc}")
        return 0
    cls = registry.get(args.name)
    if cls is None:
        from graphssl.errors import did_you_mean

        print(f"unknown component {args.name!r}{did_you_mean(args.name, registry.names())}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.name}  ({cls.__module__}.{cls.__qualname__}, role: {cls.role})")
    print("  " + " ".join((cls.__doc__ or "").split()))
    if cls.inputs:
        print("inputs:")
        for port, decl in cls.inputs.items():
            opt = " (optional)" if decl.optional else ""
            print(f"  {port:<14} {decl}{opt}: {decl.doc}")
    if cls.outputs:
        print("outputs:")
        for port, out in cls.outputs.items():
            print(f"  {port:<14} {out}: {out.doc}")
    print("parameters:")
    for field, info in cls.Config.model_fields.items():
        default = "required" if info.is_required() else f"default {info.get_default(call_default_factory=True)!r}"
        annotation = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
        print(f"  {field:<14} {annotation} ({default}){': ' + info.description if info.description else ''}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from graphssl.picture import draw_graph
    from graphssl.stages import plan_pipeline

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
        p.add_argument("pipeline", help="a pipeline YAML file")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=50 data.batch_size=32")

    p = sub.add_parser("run", help="train a pipeline, tracked in MLflow")
    pipeline_args(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: graphssl)")
    p.add_argument("--run-name", help="name of the parent run (default: the pipeline's name)")
    p.add_argument("--force", action="store_true", help="retrain every stage, even unchanged ones")
    p.add_argument("--resume", metavar="RUN_ID_OR_PATH", help="continue a stopped run from its last checkpoint")
    p.add_argument("--nproc-per-node", type=int, help="processes per machine (DDP through torchrun; gloo on CPU, NCCL on GPU)")
    p.add_argument("--nnodes", type=int, help="machines taking part (run the same command on each)")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous of a multi-machine run")
    p.add_argument("--node-rank", type=int, help="this machine's rank in a multi-machine run")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a pipeline and dry-run it on a tiny batch; trains nothing")
    pipeline_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("components", help="list components, or show one's parameters and ports")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_components)

    p = sub.add_parser("graph", help="draw a pipeline's graph")
    pipeline_args(p)
    p.add_argument("-o", "--output", default="graph.png", help="output picture (png, svg, pdf)")
    p.set_defaults(func=cmd_graph)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except PipelineError as err:
        _print_problems(err)
        return EXIT_INVALID
    except Exception as err:
        from graphssl.checkpoint import CheckpointError
        from graphssl.runner import Stopped

        if isinstance(err, CheckpointError):
            print(f"error: {err}", file=sys.stderr)
            return EXIT_INVALID
        if isinstance(err, Stopped):
            print(f"stopped: checkpoint written at step {err.step} ({err.checkpoint})", file=sys.stderr)
            return 130
        if os.environ.get("GRAPHSSL_DEBUG"):
            raise
        print(f"error: {err}\n(set GRAPHSSL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
