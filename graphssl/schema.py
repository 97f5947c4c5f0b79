"""A JSON Schema of pipeline YAML, generated from the pydantic models and the component registry.

Editors with the YAML language server read it from the first line of a pipeline:

    # yaml-language-server: $schema=../pipeline.schema.json

and then complete keys, show each parameter's description and default, and
mark unknown keys, unknown components and out-of-range values as you type.
``graphssl schema > pipeline.schema.json`` regenerates it (tests/support/schema_check.py checks
files against it as an editor would).

The schema checks what a single file can say; graphssl's own validation
(``graphssl check``) goes further: port types along edges, cycles, the objective.
Every value may also be an OmegaConf interpolation such as ``${vars.patch_size}``.
Draft-07, the draft that the YAML language server fully supports.
"""
from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel

from graphssl import registry
from graphssl.component import Component, In, role_of
from graphssl.config import SECTION_MODELS, PipelineConfig, StagedPipelineConfig

DRAFT = "http://json-schema.org/draft-07/schema#"
DEFS = "definitions"
REF = f"#/{DEFS}/{{model}}"
INTERPOLATION = {"type": "string", "pattern": r"\$\{[^}]+\}",
                 "description": "an OmegaConf interpolation, e.g. ${vars.patch_size}"}
REFERENCE = {"type": "string", "pattern": r"^[A-Za-z_][\w-]*\.\w+$", "description": "node.port, e.g. batch.images"}
_META = ("description", "default", "title", "examples")


def _draft07(schema: Any) -> Any:
    """Pydantic writes draft 2020-12: turn ``prefixItems`` (tuples) into draft-07 ``items`` lists; drop titles."""
    if isinstance(schema, list):
        return [_draft07(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", DEFS, "$defs") and isinstance(value, dict):
            out[key] = {k: _draft07(v) for k, v in value.items()}
        else:
            out[key] = _draft07(value)
    if "prefixItems" in out:
        out["items"] = out.pop("prefixItems")
        out["additionalItems"] = False
    return out


def _or_interpolation(prop: dict[str, Any]) -> dict[str, Any]:
    """A property schema that also accepts ``${...}``; description and default stay on top for hovers."""
    meta = {k: prop[k] for k in _META if k in prop and k != "title"}
    body = {k: v for k, v in prop.items() if k not in _META}
    if not body:  # anything goes already
        return prop
    alternatives = body["anyOf"] if list(body) == ["anyOf"] else [body]
    return {**meta, "anyOf": [*alternatives, {"$ref": f"#/{DEFS}/Interpolation"}]}


def _interpolatable(model_schema: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(model_schema)
    if "properties" in out:
        out["properties"] = {k: v if k in skip else _or_interpolation(v) for k, v in out["properties"].items()}
    return out


def _model_schema(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """The model's own schema; its nested models go into ``defs`` (by name, once)."""
    schema = _draft07(model.model_json_schema(ref_template=REF, mode="validation"))
    for name, sub in schema.pop("$defs", {}).items():
        if name in defs and defs[name] != _interpolatable(sub):
            raise ValueError(f"two different models are named {name!r} in the pipeline schema")
        defs[name] = _interpolatable(sub)
    return schema


def _port_schema(decl: In) -> dict[str, Any]:
    kinds = " | ".join(str(t) for t in decl.types)
    optional = " (optional)" if decl.optional else ""
    desc = f"input {kinds}{optional}: {decl.doc}"
    if decl.many:
        return {"description": f"{desc}; one reference or a list",
                "anyOf": [{"$ref": f"#/{DEFS}/Reference"}, {"type": "array", "items": {"$ref": f"#/{DEFS}/Reference"}, "minItems": 1},
                          {"$ref": f"#/{DEFS}/Interpolation"}]}
    return {"description": desc, "anyOf": [{"$ref": f"#/{DEFS}/Reference"}, {"$ref": f"#/{DEFS}/Interpolation"}]}


def component_schema(name: str, cls: type[Component], defs: dict[str, Any]) -> dict[str, Any]:
    """A node of component ``name``: ``type`` plus its parameters (pydantic) and its input ports."""
    config = _model_schema(cls.Config, defs)
    doc = " ".join((cls.__doc__ or "").split())
    props: dict[str, Any] = {"type": {"const": name, "description": doc}}
    for key, prop in config.get("properties", {}).items():
        props[key] = _or_interpolation(prop)
    for port, decl in cls.inputs.items():
        props[port] = _port_schema(decl)
    required = ["type", *config.get("required", []), *(p for p, d in cls.inputs.items() if not d.optional)]
    outputs = ", ".join(f"{p}: {o}" for p, o in cls.outputs.items())
    return {"type": "object", "description": f"{name} ({role_of(cls)}){' -> ' + outputs if outputs else ''}. {doc}",
            "properties": props, "required": required, "additionalProperties": False}


def _or_ref(definition: str) -> dict[str, Any]:
    """A whole mapping (a node, a section) may also be one interpolation: ``teacher_probs: ${vars.choice}``."""
    return {"anyOf": [{"$ref": f"#/{DEFS}/{definition}"}, {"$ref": f"#/{DEFS}/Interpolation"}]}


def _partial(schema: dict[str, Any]) -> dict[str, Any]:
    """A section that a stage may override in part: the same keys, none required."""
    out = copy.deepcopy(schema)
    out.pop("required", None)
    return out


def pipeline_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a pipeline file: single-stage or staged."""
    defs: dict[str, Any] = {"Interpolation": INTERPOLATION, "Reference": REFERENCE}
    names = registry.names()
    cases = []
    for name in names:
        key = f"node:{name}"
        defs[key] = component_schema(name, registry.get(name), defs)
        cases.append({"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                      "then": {"$ref": f"#/{DEFS}/{key}"}})
    defs["CallNode"] = {
        "type": "object",
        "description": "runs another node's module with shared weights (call: student) or an owner's copy "
                       "(call: teacher.student); the other keys are that component's inputs",
        "properties": {"call": {"type": "string", "description": "a node name, or OWNER.NODE for an owner's copy"}},
        "required": ["call"],
        "additionalProperties": {"anyOf": [{"$ref": f"#/{DEFS}/Reference"},
                                           {"type": "array", "items": {"$ref": f"#/{DEFS}/Reference"}},
                                           {"$ref": f"#/{DEFS}/Interpolation"}]},
    }
    cases.append({"if": {"required": ["call"], "not": {"required": ["type"]}}, "then": {"$ref": f"#/{DEFS}/CallNode"}})
    defs["Node"] = {
        "type": "object",
        "description": "a graph node: type: COMPONENT with its parameters and inputs, or call: NODE with inputs",
        "properties": {"type": {"enum": names, "description": "the component (graphssl components lists them)"},
                       "call": {"type": "string", "description": "run this node's module (shared weights)"}},
        "oneOf": [{"required": ["type"], "not": {"required": ["call"]}}, {"required": ["call"], "not": {"required": ["type"]}}],
        "allOf": cases,
    }
    defs["Nodes"] = {"type": "object", "description": "node name -> node; inputs are node.port references",
                     "propertyNames": {"pattern": r"^[^.]+$", "not": {"const": "batch"}},
                     "additionalProperties": _or_ref("Node"), "minProperties": 1}
    defs["Objective"] = {"type": "object", "description": "loss node (or node.port) -> weight; the training loss is the weighted sum",
                         "additionalProperties": {"anyOf": [{"type": "number"}, {"$ref": f"#/{DEFS}/Interpolation"}]},
                         "minProperties": 1}

    sections: dict[str, str] = {}
    for section, model in SECTION_MODELS.items():
        name = model.__name__
        if name not in defs:
            defs[name] = _interpolatable(_model_schema(model, defs))
        defs[f"{name}Override"] = _partial(defs[name])
        sections[section] = f"{name}Override"

    def top(model: type[BaseModel]) -> dict[str, Any]:
        schema = _interpolatable(_model_schema(model, defs), skip=("nodes", "objective", "stages", *SECTION_MODELS))
        props = schema["properties"]
        for key in list(props):
            meta = {k: props[key][k] for k in ("description",) if k in props[key]}
            if key == "nodes":
                props[key] = {**meta, **_or_ref("Nodes")}
            elif key == "objective":
                props[key] = {**meta, **_or_ref("Objective")}
            elif key in sections and props[key].get("type") == "object" and "$ref" not in props[key]:
                props[key] = {**meta, **_or_ref(sections[key])}  # a free dict: a stage's or a staged pipeline's partial section
            elif key in sections and "$ref" in props[key]:
                props[key] = {**meta, **_or_ref(props[key]["$ref"].rsplit("/", 1)[-1])}
        return schema

    stage_model = StagedPipelineConfig.model_fields["stages"].annotation.__args__[-1]
    single = top(PipelineConfig)
    staged = top(StagedPipelineConfig)
    defs[stage_model.__name__] = top(stage_model)
    staged["properties"]["stages"] = {**{k: v for k, v in staged["properties"]["stages"].items() if k == "description"},
                                      "type": "object", "minProperties": 1,
                                      "additionalProperties": _or_ref(stage_model.__name__)}
    defs.pop(PipelineConfig.__name__, None)
    defs.pop(StagedPipelineConfig.__name__, None)
    defs["SingleStagePipeline"] = single
    defs["StagedPipeline"] = staged
    return {
        "$schema": DRAFT,
        "title": "graphssl pipeline",
        "description": "A graphssl pipeline: components wired into a graph (nodes:) or stages of such graphs (stages:). "
                       "Generated by `graphssl schema`.",
        "type": "object",
        "if": {"required": ["stages"]},
        "then": {"$ref": f"#/{DEFS}/StagedPipeline"},
        "else": {"$ref": f"#/{DEFS}/SingleStagePipeline"},
        DEFS: dict(sorted(defs.items())),
    }


def schema_text() -> str:
    """The schema as written to pipeline.schema.json (stable key order, trailing newline)."""
    return json.dumps(pipeline_schema(), indent=1, ensure_ascii=False) + "\n"
