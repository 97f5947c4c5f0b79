"""Plain-text descriptions of components for ``graphssl components``: ports with shapes, parameters
with types, defaults (as you would write them in YAML), a one-line description, and where a
component that is not built in came from (an entry point's package, a plugin file or module)."""
from __future__ import annotations

import re
import types
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from graphssl import registry
from graphssl.component import Component, Owner, role_of


def first_sentence(text: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    if not text:
        return ""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    end = re.search(r"(?<!e\.g)(?<!i\.e)(?<!etc)\.\s", paragraph)
    return paragraph[: end.start() + 1] if end else paragraph


def type_name(annotation: Any) -> str:
    """int, float | schedule, cls | mean, list[float], [float, float], int | null ..."""
    if annotation is type(None):
        return "null"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin in (list, dict, set):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return annotation.__name__.lower()
        return {"str": "str", "int": "int", "float": "float", "bool": "bool"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def yaml_value(value: Any) -> str:
    """A default as written in a pipeline: 0.75, [0.2, 1.0], {start: 0.996, end: 1.0}, null."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip().removesuffix("\n...").strip()


def parameter_rows(cls: type[Component]) -> list[tuple[str, str, str, str]]:
    """(name, type, default or "required", description) per parameter."""
    rows = []
    for field, info in cls.Config.model_fields.items():
        default = "required" if info.is_required() else yaml_value(info.get_default(call_default_factory=True))
        rows.append((field, type_name(info.annotation), default, " ".join((info.description or "").split())))
    return rows


def _table(rows: list[tuple[str, ...]], indent: str = "    ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def origin_note(name: str) -> str:
    """"" for a built-in component, else where it came from: "entry point ...", "file ...", "module ..."."""
    origin = registry.origin(name)
    return "" if origin is None or origin == registry.BUILT_IN else str(origin)


def brief(name: str, cls: type[Component]) -> str:
    """One line: name, first sentence, and where it came from when it is not built in."""
    note = origin_note(name)
    return f"{name:<28} {first_sentence(cls.__doc__)}" + (f"  [{note}]" if note else "")


def describe(name: str, cls: type[Component], full_doc: bool = False) -> list[str]:
    """A component's block: header, inputs, outputs, parameters."""
    doc = " ".join((cls.__doc__ or "").split()) if full_doc else first_sentence(cls.__doc__)
    note = origin_note(name)
    lines = [f"{name}  ({role_of(cls)}{', ' + note if note else ''})  {doc}".rstrip()]
    if full_doc:
        lines.append(f"  class: {cls.__module__}.{cls.__qualname__}")
        lines.append(f"  from: {note or 'built-in'}")
    ports = [("in", p, str(d) + (" (optional)" if d.optional else ""), d.doc) for p, d in cls.inputs.items()]
    ports += [("out", p, str(o), o.doc) for p, o in cls.outputs.items()]
    if ports:
        lines.append("  ports:")
        lines += _table(ports)
    params = parameter_rows(cls)
    if params:
        lines.append("  parameters:")
        lines += _table(params)
    if issubclass(cls, Owner):
        lines.append("  (an owner: run its copies with call: NODE.MODULE)")
    return lines
