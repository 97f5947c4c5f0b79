"""``graphssl new NAME --from PIPELINE``: a copy of a shipped pipeline to edit (pipelines do not inherit).

The copy keeps the original's comments, gets ``name: NAME``, and its
``yaml-language-server`` line points at the schema from where the copy lives.
An existing file is never overwritten.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from graphssl.names import identifier_problem

SCHEMA_LINE = "# yaml-language-server: $schema="
SCHEMA_FILE = "pipeline.schema.json"
REPO = Path(__file__).resolve().parent.parent


class NewPipelineError(Exception):
    pass


def shipped_dirs() -> list[Path]:
    """Where shipped pipelines are found: the repository's pipelines/ (an editable install), then ./pipelines."""
    dirs = [REPO / "pipelines", Path.cwd() / "pipelines"]
    return list(dict.fromkeys(d.resolve() for d in dirs if d.is_dir()))


def shipped_pipelines() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in shipped_dirs():
        for path in sorted(d.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def find_source(source: str) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = shipped_pipelines()
    if source in shipped:
        return shipped[source]
    from graphssl.errors import did_you_mean

    names = ", ".join(sorted(shipped)) or "none found"
    raise NewPipelineError(f"no pipeline {source!r}{did_you_mean(source, list(shipped))} (shipped: {names})")


def find_schema(near: Path) -> Path | None:
    """The pipeline.schema.json of the source's repository, if there is one."""
    for d in (near.parent, *near.parents):
        if (d / SCHEMA_FILE).is_file():
            return d / SCHEMA_FILE
    return REPO / SCHEMA_FILE if (REPO / SCHEMA_FILE).is_file() else None


def new_pipeline(name: str, source: str, folder: str | Path = ".") -> Path:
    """Copy ``source`` to FOLDER/NAME.yaml with ``name: NAME``; returns the written path."""
    if (bad_name := identifier_problem(name, "the new pipeline's name")) is not None:  # a name, never a path
        raise NewPipelineError(bad_name)
    target = Path(name) if name.endswith((".yaml", ".yml")) else Path(folder) / f"{name}.yaml"
    stem = target.stem
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem):
        raise NewPipelineError(f"{stem!r} is not a usable pipeline name (letters, digits, '_', '-', '.')")
    if target.exists():
        raise NewPipelineError(f"{target} exists; not overwriting it (choose another name or remove it)")
    src = find_source(source)
    lines = src.read_text().splitlines(keepends=True)
    out, named = [], False
    schema = find_schema(src)
    for line in lines:
        if line.startswith(SCHEMA_LINE):
            if schema is not None:
                rel = os.path.relpath(schema.resolve(), target.resolve().parent)
                out.append(f"{SCHEMA_LINE}{Path(rel).as_posix()}\n")
            continue
        if not named and re.match(r"^name:\s", line):
            out.append(f"name: {stem}\n")
            named = True
            continue
        out.append(line)
    if not named:
        raise NewPipelineError(f"{src} has no top-level 'name:' line to replace")
    header = f"# Copied from {src.name} by `graphssl new {stem} --from {source}`.\n"
    first = 1 if out and out[0].startswith(SCHEMA_LINE) else 0
    out.insert(first, header)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "x") as f:  # "x": never overwrite, even in a race
        f.writelines(out)
    return target
