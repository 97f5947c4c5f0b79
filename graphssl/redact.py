"""Values a pipeline took from the environment (``${oc.env:NAME}``), kept out of what graphssl writes.

:mod:`graphssl.loading` finds them (see ``environment_paths``) and remembers their values here;
the tracker replaces them in run names, tags and parameters, the command line in its error
messages. Parameters are masked by path as well (``LoadedPipeline.masked``), which also covers
values too short to replace safely in free text.
"""
from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
MIN_FREE_TEXT = 4  # shorter values ("1", "cpu") are masked by their path only, not wherever they occur

_values: set[str] = set()


def remember(values) -> None:
    """Values from the environment that must not be written or shown in this process."""
    _values.update(v for v in map(str, values) if len(v) >= MIN_FREE_TEXT)


def scrub(text: str) -> str:
    """``text`` with every remembered value replaced by ``***`` (longest first)."""
    if not _values or not isinstance(text, str):
        return text
    for value in sorted(_values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


ENV_REFERENCE = re.compile(r"oc\.env\s*:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)")


def environment_values(data: Any, dotlist: list[str] = ()) -> set[str]:
    """The values of the environment variables that ``${oc.env:NAME}`` interpolations in the file
    (or the overrides) name; unset ones have none."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and "oc.env" in value:
            names.update(ENV_REFERENCE.findall(value))

    walk(data)
    walk(list(dotlist))
    return {os.environ[n] for n in names if os.environ.get(n)}


def environment_paths(written: Any, resolved: Any, env_values: set[str], path: str = "",
                      interpolated: bool = False) -> frozenset[str]:
    """Dotted paths of the resolved values that came from the environment: those written with
    ``oc.env``, and interpolations (``${vars.token}``) whose resolved text holds an environment
    value that the file reads. Masking a few values too many is safe; one too few is not."""
    found: set[str] = set()
    if isinstance(written, str) and "${" in written:
        if "oc.env" in written:
            return frozenset({path}) if path else frozenset()
        interpolated = True
    if isinstance(resolved, dict):
        for key, value in resolved.items():
            sub = f"{path}.{key}" if path else str(key)
            inner = written.get(key) if isinstance(written, dict) else None
            found |= environment_paths(inner, value, env_values, sub, interpolated)
    elif isinstance(resolved, list):
        for i, value in enumerate(resolved):
            inner = written[i] if isinstance(written, list) and i < len(written) else None
            found |= environment_paths(inner, value, env_values, f"{path}.{i}", interpolated)
    elif interpolated and any(v in str(resolved) for v in env_values):
        found.add(path)
    return frozenset(found)


def values_at(resolved: Any, paths: frozenset[str]) -> list[Any]:
    """The leaf values at (or under) ``paths``."""
    out = []

    def walk(value: Any, path: str, inside: bool) -> None:
        inside = inside or path in paths
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k), inside)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}.{i}", inside)
        elif inside and value is not None:
            out.append(value)

    walk(resolved, "", False)
    return out
