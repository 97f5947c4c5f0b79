"""The commands behind ``graphssl``'s subcommands (the parser and the error handling are graphssl.cli's)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_INVALID = 2


def no_pipeline(command: str, example: str = "") -> int:
    print(f"graphssl {command}: give a pipeline file, e.g. graphssl {command} pipelines/mae.yaml{example}", file=sys.stderr)
    return EXIT_INVALID


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
                 run_name=args.run_name, force=args.force, resume=args.resume, register=args.register,
                 system_metrics=args.system_metrics)
    if os.environ.get("RANK", "0") == "0":
        print(f"finished run {run_id}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from graphssl.build import resolve_device
    from graphssl.flops import format_flops, summary
    from graphssl.plan import check_plan, plan_pipeline

    if not args.pipeline:
        return no_pipeline("check")
    plan = plan_pipeline(args.pipeline, args.overrides)
    first = next(iter(plan.stages.values())).prepared
    for stage in plan.stages.values():
        for w in stage.prepared.warnings:
            print(w.format(plan.source))
    shapes = check_plan(plan, resolve_device(first.cfg.device))
    n = sum(len(s.prepared.spec.nodes) for s in plan.stages.values())
    several = len(plan.stages) > 1
    print(f"{plan.source}: valid ({n} nodes{f', {len(plan.stages)} stages' if several else ''}); dry run of one training step passed")
    for stage_name, stage in plan.stages.items():
        if several:
            needs = f" (needs {', '.join(stage.needs)})" if stage.needs else ""
            print(f"stage {stage_name}{needs}:")
        spec, flops = stage.prepared.spec, stage.prepared.flops
        cost = {n: format_flops(flops.of_node(n)) if flops and flops.of_node(n) else "" for n in spec.nodes}
        for name in spec.order:
            node = spec.nodes[name]
            what = f"call {node.call}" if node.call else node.type_name
            outs = ", ".join(f"{p}: {s}" for p, s in shapes[stage_name].get(name, {}).items())
            print(f"  {name:<16} {what:<24} {cost[name]:>11}  -> {outs}")
        for name, node in spec.nodes.items():
            if node.role != "step":
                print(f"  {name:<16} {node.type_name:<24} {cost[name]:>11}  ({node.role})")
        if flops is not None:
            print(f"  {summary(flops)}")
        if stage.prepared.budget is not None:
            print(f"  {stage.prepared.budget.describe()}, for one process (a run with N processes resolves it for N)")
    return 0


def cmd_components(args: argparse.Namespace) -> int:
    from graphssl import registry
    from graphssl.describe import brief, describe
    from graphssl.plugins import load_plugins

    for _, message in load_plugins(args.plugin or None, Path.cwd()):
        print(f"error: {message}", file=sys.stderr)
        return EXIT_INVALID
    names = registry.names()
    if args.brief:
        for name in names:
            print(brief(name, registry.get(name)))
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
    from graphssl.compare import CompareError, find_runs, print_table
    from graphssl.compare_plot import draw, unplaced

    try:
        runs = find_runs(args.tracking_uri, args.experiment, args.run_ids, limit=args.last)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_table(runs)
    if args.output:
        for r in unplaced(runs, args.x):
            print(f"note: run {r.name} logged no {args.x} (made before graphssl counted them): not drawn against them")
        print(f"wrote {draw(runs, args.output, title=f'experiment {args.experiment}', x=args.x)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from graphssl.export import ExportError, export_run

    try:
        done = export_run(args.run_id, args.output, node=args.node, stage=args.stage, feature=args.feature,
                          tracking_uri=args.tracking_uri)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    pooled = "[CLS] (global_pool token)" if done.feature == "cls" else "mean patch token (global_pool avg)"
    print(f"wrote {done.folder}: node {done.node} ({done.architecture}), features: {pooled}\n"
          f"  timm.create_model(\"local-dir:{done.folder}\", pretrained=True)\n"
          f"  graphssl run PIPELINE nodes.ENCODER.checkpoint={done.folder}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from graphssl.picture import draw_graph
    from graphssl.plan import plan_pipeline

    if not args.pipeline:
        return no_pipeline("graph", " -o mae.png")
    plan = plan_pipeline(args.pipeline, args.overrides)
    output = Path(args.output)
    for name, stage in plan.stages.items():
        out = output if len(plan.stages) == 1 else output.with_name(f"{output.stem}.{name}{output.suffix}")
        draw_graph(stage.prepared.spec, out, title=stage.prepared.cfg.name)
        print(f"wrote {out}")
    return 0
