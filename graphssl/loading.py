"""Reading a pipeline file: YAML with line numbers, duplicate keys, ``key=value`` overrides, interpolation.

The result is a :class:`graphssl.config.LoadedPipeline`: the resolved mapping and where each key
was written, for error messages. Validation is :mod:`graphssl.config`'s and the graph's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel

from graphssl.config import SECTION_MODELS, LoadedPipeline, PipelineConfig, line_of
from graphssl.errors import PipelineError, Problem, did_you_mean
from graphssl.redact import environment_paths, environment_values, remember, scrub, values_at


def yaml_lines(text: str, duplicates: list[Problem] | None = None) -> dict[str, int]:
    """Map dotted YAML paths to 1-based line numbers (for error messages).

    A key repeated in one mapping (which PyYAML silently resolves to the last
    value) is appended to ``duplicates`` as a Problem at its second line.
    """
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                sub = f"{path}.{key.value}" if path else str(key.value)
                line = key.start_mark.line + 1
                ident = (key.tag, str(key.value))
                if isinstance(key, yaml.ScalarNode) and key.value != "<<" and ident in seen:
                    if duplicates is not None:
                        duplicates.append(Problem(sub, f"duplicate key {key.value!r} (first at line {seen[ident]}); "
                                                       "YAML would silently keep only the last one", line))
                    walk(value, sub)
                    continue
                seen[ident] = line
                lines[sub] = line
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{path}.{i}"] = item.start_mark.line + 1
                walk(item, f"{path}.{i}")

    if structure_problem(text) is not None:
        return lines  # too deep or too large to walk (an alias bomb)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def _override_known(raw: dict[str, Any], key: str) -> tuple[bool, list[str]]:
    """Is an override key a real key (in the file or the schema)? Also candidates for a hint."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        if i == 0:
            return part in PipelineConfig.model_fields, list(PipelineConfig.model_fields)
        if i in (1, 2) and parts[0] in SECTION_MODELS:
            return _section_key(SECTION_MODELS[parts[0]], parts[1:])
        if parts[0] in ("nodes", "vars") and i >= 2:
            return True, []  # a node parameter: the component's schema decides
        if parts[0] == "stages" and len(parts) > 3 and parts[2] in SECTION_MODELS and i in (2, 3, 4):
            return _section_key(SECTION_MODELS[parts[2]], parts[3:])  # the stage may not write the section yet
        if parts[0] == "stages" and len(parts) > 3 and parts[2] == "nodes" and i >= 4:
            return True, []
        if parts[0] in SECTION_MODELS and i == 1 and "stages" in raw:
            return _section_key(SECTION_MODELS[parts[0]], parts[1:])
        return False, list(node) if isinstance(node, dict) else []
    return True, []


def _section_key(model: type[BaseModel], parts: list[str]) -> tuple[bool, list[str]]:
    """Is ``parts`` (below a section) a key of the section's schema? A field that is itself a model
    (``train.budget``) takes one more part: ``train.budget.flops``."""
    fields = list(model.model_fields)
    if parts[0] not in fields or len(parts) > 2:
        return False, fields
    if len(parts) == 1:
        return True, fields
    nested = [c for c in (model.model_fields[parts[0]].annotation, *get_args(model.model_fields[parts[0]].annotation))
              if isinstance(c, type) and issubclass(c, BaseModel)]
    sub = list(nested[0].model_fields) if nested else []
    return parts[1] in sub, sub


def _first_missing(raw: dict[str, Any], key: str) -> str:
    """The first part of a dotted key that the file does not have (the one to suggest a fix for)."""
    node: Any = raw
    for part in key.split("."):
        if not (isinstance(node, dict) and part in node):
            return part
        node = node[part]
    return key.split(".")[-1]


MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 50  # mappings and lists inside each other
MAX_VALUES = 20_000  # values in the file, an alias (*name) counting as the values it stands for


def structure_problem(text: str) -> Problem | None:
    """A file nested too deep or too large once its aliases are expanded (a YAML "billion laughs"),
    found on PyYAML's event stream before anything is built from it: no recursion, and it stops at
    the first excess. The problem's path is where it happens (its first levels, at their line).

    A syntax error is left to the parser's own report (None).
    """
    frames: list[_Frame] = []  # the open mappings and lists, outermost first
    anchors: dict[str, int] = {}  # anchor -> values in the anchored node

    def where(levels: list[_Frame], message: str, line: int) -> Problem:
        parts, key_line = [], None
        for frame in levels[:3]:  # the mapping keys that lead there, up to the first list
            if not frame.mapping or frame.key is None:
                break
            parts.append(str(frame.key))
            key_line = frame.key_line
        return Problem(".".join(parts), message, key_line or line)

    def add(count: int, anchor: str | None, line: int) -> Problem | None:
        """A node of ``count`` values is complete in the innermost open collection."""
        if anchor:
            anchors[anchor] = count
        if not frames:
            return None
        top = frames[-1]
        top.count += count
        if top.count > MAX_VALUES:
            return where(frames[:-1], f"more than {MAX_VALUES} values (line {line}; an alias *name counts "
                                      "as the values it stands for); a pipeline needs far fewer", line)
        top.advance()
        return None

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            line = event.start_mark.line + 1
            found = None
            if isinstance(event, yaml.ScalarEvent) and frames and frames[-1].mapping and frames[-1].expects_key:
                frames[-1].key, frames[-1].key_line = event.value, line
                frames[-1].count += 1
                frames[-1].expects_key = False
                continue
            if isinstance(event, yaml.CollectionStartEvent):
                frames.append(_Frame(isinstance(event, yaml.MappingStartEvent), event.anchor))
                if len(frames) > MAX_DEPTH:
                    return where(frames, f"mappings and lists nested more than {MAX_DEPTH} deep (line {line})", line)
            elif isinstance(event, yaml.CollectionEndEvent):
                frame = frames.pop()
                found = add(frame.count, frame.anchor, line)
            elif isinstance(event, yaml.ScalarEvent):
                found = add(1, event.anchor, line)
            elif isinstance(event, yaml.AliasEvent):
                found = add(anchors.get(event.anchor, 1), None, line)
            if found is not None:
                return found
    except yaml.YAMLError:
        return None
    return None


class _Frame:
    """An open mapping or list while scanning events: where in it the next node goes, and its size so far."""

    def __init__(self, mapping: bool, anchor: str | None):
        self.mapping, self.anchor, self.count = mapping, anchor, 1
        self.key: str | None = None
        self.key_line: int | None = None
        self.index: int | None = None if mapping else 0
        self.expects_key = mapping

    def advance(self) -> None:
        """A value is complete: a mapping expects a key, a list its next item."""
        if self.mapping:
            self.expects_key = True
        else:
            self.index += 1


def read_text(path: str | Path, source: str) -> str:
    """The file's text, refused beyond MAX_FILE_BYTES (read no further than that: a FIFO or /dev/zero too)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise PipelineError([Problem("", f"cannot read the pipeline file: {e.strerror}")], source) from None
    if len(data) > MAX_FILE_BYTES:
        raise PipelineError([Problem("", f"the pipeline file is larger than {MAX_FILE_BYTES // 1_000_000} MB; "
                                         "a pipeline is a few kB")], source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PipelineError([Problem("", f"cannot read the pipeline file: not UTF-8 text ({e.reason})")], source) from None


def parse_override(item: str) -> tuple[str, Problem | None]:
    """(key, problem) of one ``key=value`` override; its value is read as YAML, like OmegaConf does."""
    key, _, value = item.partition("=")
    if len(value) > MAX_FILE_BYTES:
        return key, Problem(key, f"override value of {len(value)} characters; the limit is {MAX_FILE_BYTES}")
    found = structure_problem(value)
    if found is not None:
        return key, Problem(key, f"override value: {found.message}")
    try:
        OmegaConf.from_dotlist([item])
    except Exception as e:  # yaml or omegaconf: the first line says what is wrong, the key says where
        what = (getattr(e, "problem", None) or str(e).splitlines()[0]).strip()
        return key, Problem(key, f"cannot read the override value {value!r}: {what}")
    return key, None


def load_yaml(path: str | Path, overrides: list[str] = ()) -> LoadedPipeline:
    """Parse the file, apply ``key=value`` overrides and resolve interpolation.

    Raises PipelineError (every problem at once) on a syntax error, a bad
    override or a broken interpolation. Values that come from the environment
    (``${oc.env:NAME}``) are recorded so that they are masked wherever graphssl writes.
    """
    source = str(path)
    text = read_text(path, source)
    too_big = structure_problem(text)
    if too_big is not None:
        raise PipelineError([too_big], source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(e, "problem", None) or str(e)
        raise PipelineError([Problem("", f"YAML syntax error at {where}{what}", mark.line + 1 if mark else None)], source) from None
    if not isinstance(data, dict):
        raise PipelineError([Problem("", "a pipeline file must be a YAML mapping (name:, data:, train:, nodes:, ...)")], source)
    duplicates: list[Problem] = []
    lines = yaml_lines(text, duplicates)
    if duplicates:
        raise PipelineError(sorted(duplicates, key=lambda p: p.line or 0), source)
    problems: list[Problem] = []
    dotlist = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            problems.append(Problem(item or "override", f"override {item!r}: overrides are written key=value, e.g. train.steps=50"))
            continue
        known, candidates = _override_known(data, key)
        if not known:
            hint = did_you_mean(_first_missing(data, key), candidates) or did_you_mean(key.split(".")[-1], candidates)
            problems.append(Problem(key, f"override of a key that does not exist{hint}"))
            continue
        _, unreadable = parse_override(item)
        if unreadable is not None:
            problems.append(unreadable)
            continue
        dotlist.append(item)
    if problems:
        raise PipelineError(problems, source)
    remember(environment_values(data, dotlist))  # before resolving: its errors may quote them
    try:
        conf = OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(stage_dotlist(data, dotlist)))
        written = OmegaConf.to_container(conf, resolve=False)
        resolved = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = scrub(str(e).splitlines()[0])
        raise PipelineError([Problem(str(key), f"cannot resolve: {msg}", line_of(lines, str(key)))], source) from None
    from graphssl.plugins import load_plugins  # the pipeline's own components register before it is validated

    plugin_problems = load_plugins(resolved.get("plugins"), Path(path).resolve().parent)
    if plugin_problems:
        raise PipelineError([Problem(p, msg, line_of(lines, p)) for p, msg in plugin_problems], source)
    secrets = environment_paths(written, resolved, environment_values(data, dotlist))
    values = {str(v) for v in values_at(resolved, secrets)}
    remember(values)
    return LoadedPipeline(source, resolved, lines, overrides=dotlist, written=written, secrets=secrets,
                          secret_values=frozenset(values))


def stage_dotlist(data: dict[str, Any], dotlist: list[str]) -> list[str]:
    """Overrides as applied: in a staged file, ``train.steps=5`` also sets every stage's ``train.steps``,
    so that it wins over the stage's own value (the stage's sections are merged over the file's)."""
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return dotlist
    out = []
    for item in dotlist:
        out.append(item)
        if item.split(".", 1)[0] in SECTION_MODELS:
            out += [f"stages.{name}.{item}" for name, body in stages.items() if isinstance(body, dict)]
    return out
