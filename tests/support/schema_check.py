"""Pipeline files checked against the JSON Schema as an editor would (jsonschema): for the schema tests."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from graphssl.schema import DEFS, pipeline_schema


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML with YAML 1.2's floats (``5e-4`` is a number, as in editors, not the string YAML 1.1 makes of it)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _explain(err):
    """The most telling error under ``err`` (as jsonschema's best_match), never the "or an interpolation" alternative."""
    from jsonschema.exceptions import relevance

    interp = {"$ref": f"#/{DEFS}/Interpolation"}
    while err.context:
        context = list(err.context)
        if err.validator in ("anyOf", "oneOf") and isinstance(err.validator_value, list):
            context = [e for e in context if err.validator_value[e.relative_schema_path[0]] != interp] or context
        err = min(context, key=relevance)
    return err


def schema_errors(path: str | Path, schema: dict[str, Any] | None = None) -> list[str]:
    """The schema's complaints about a pipeline file as an editor would show them: "line N: path: message"."""
    import jsonschema

    from graphssl.loading import yaml_lines

    text = Path(path).read_text()
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as e:
        return [f"YAML syntax error: {e}"]
    validator = jsonschema.Draft7Validator(schema or pipeline_schema())
    lines = yaml_lines(text)
    out = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        best = _explain(err)
        where = ".".join(str(p) for p in best.absolute_path)
        parts = where.split(".") if where else []
        line = next((lines[".".join(parts[:i])] for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in lines), None)
        out.append(f"{f'line {line}: ' if line else ''}{where or '(top)'}: {best.message}")
    return out
