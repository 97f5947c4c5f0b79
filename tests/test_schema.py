"""The JSON Schema of pipeline YAML (`graphssl schema`): up to date, valid draft-07, accepts every shipped
pipeline, rejects broken ones at the right path."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import PIPELINES, REPO
from graphssl import registry
from graphssl.cli import main
from graphssl.schema import pipeline_schema, schema_text
from support.schema_check import schema_errors

SCHEMA_LINE = "# yaml-language-server: $schema=../pipeline.schema.json"
SHIPPED = sorted(PIPELINES.glob("*.yaml"))
BAD = REPO / "tests" / "bad_pipelines"


@pytest.fixture(scope="module")
def schema():
    with registry.scope(builtins_only=True):  # set up before conftest's per-test scope: say it here too
        return pipeline_schema()


def test_committed_schema_is_what_graphssl_schema_prints(capsys):
    # the built-in components only (conftest's builtin_registry), whatever plug-ins this machine has installed
    assert registry.names() == registry.builtin_names()
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == schema_text()
    committed = (REPO / "pipeline.schema.json").read_text()
    assert committed == printed, "pipeline.schema.json is stale: run `graphssl schema > pipeline.schema.json`"


def test_schema_is_valid_draft7_and_names_every_component(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["definitions"]["Node"]["properties"]["type"]["enum"] == registry.names()
    knn = schema["definitions"]["node:eval.knn"]["properties"]
    assert knn["k"]["default"] == 20 and "description" in knn["feature"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_pipeline_starts_with_the_schema_line_and_validates(path, schema):
    assert path.read_text().splitlines()[0] == SCHEMA_LINE
    assert schema_errors(path, schema) == []


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def mae() -> dict:
    return yaml.safe_load((PIPELINES / "mae.yaml").read_text())


def broken(edit) -> dict:
    data = mae()
    edit(data)
    return data


BROKEN = {
    "unknown_component": (lambda d: d["nodes"]["mask"].update(type="mask.randon"), "nodes.mask.type", "is not one of"),
    "unknown_parameter": (lambda d: d["nodes"]["target"].update(norm_pixels=True), "nodes.target", "'norm_pixels' was unexpected"),
    "ratio_out_of_range": (lambda d: d["nodes"]["mask"].update(ratio=1.5), "nodes.mask.ratio", "maximum"),
    "wrong_type": (lambda d: d["nodes"]["encoder"].update(depth="six"), "nodes.encoder.depth", "is not of type 'integer'"),
    "missing_input": (lambda d: d["nodes"]["loss"].pop("mask"), "nodes.loss", "'mask' is a required property"),
    "not_a_reference": (lambda d: d["nodes"]["loss"].update(pred="decoder"), "nodes.loss.pred", "does not match"),
    "list_into_one_port": (lambda d: d["nodes"]["loss"].update(pred=["decoder.pred", "target.target"]), "nodes.loss.pred", "not of type"),
    "unknown_section_key": (lambda d: d["train"].update(stepz=3), "train", "'stepz' was unexpected"),
    "missing_train": (lambda d: d.pop("train"), "(top)", "'train' is a required property"),
    "bad_enum": (lambda d: d["data"].update(dataset="fashon_mnist"), "data.dataset", "is not one of"),
    "type_and_call": (lambda d: d["nodes"]["view"].update(call="encoder"), "nodes.view", ""),
    "bad_schedule": (lambda d: d["train"].update(weight_decay={"start": 0.04, "ned": 0.4}), "train.weight_decay", "'ned' was unexpected"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_pipelines_are_rejected_at_their_path(case, tmp_path, schema):
    edit, where, message = BROKEN[case]
    errors = schema_errors(write(tmp_path, case, broken(edit)), schema)
    assert errors, f"{case} passed the schema"
    assert any(f"{where}: " in e and message in e for e in errors), errors


def test_errors_carry_the_line_of_the_file(schema):
    errors = schema_errors(BAD / "unknown_parameter.yaml", schema)
    assert len(errors) == 1 and errors[0].startswith("line ") and "'ratoi' was unexpected" in errors[0]


@pytest.mark.parametrize("name", ["unknown_component", "unknown_parameter", "mask_ratio_out_of_range", "wrong_parameter_type",
                                  "missing_required_input", "not_a_reference", "negative_temperature", "type_and_call",
                                  "missing_train_section", "two_errors_in_two_nodes"])
def test_bad_pipeline_gallery_files_the_schema_can_see_are_rejected(name, schema):
    path = BAD / f"{name}.yaml"
    assert path.exists(), f"{path.name} is not in the gallery"
    assert schema_errors(path, schema)


def test_interpolations_call_nodes_yaml12_floats_and_staged_pipelines_are_accepted(tmp_path, schema):
    data = mae()
    data["vars"]["ratio"] = 0.6
    data["nodes"]["mask"]["ratio"] = "${vars.ratio}"
    data["nodes"]["encoder"]["depth"] = "${oc.env:DEPTH,2}"
    data["nodes"]["again"] = {"call": "encoder", "images": "view.images"}
    path = write(tmp_path, "ok", data)
    path.write_text(path.read_text().replace("lr: 0.0015", "lr: 15e-4"))  # YAML 1.2 float (PyYAML: a string)
    assert "15e-4" in path.read_text()
    assert schema_errors(path, schema) == []

    staged = {"name": "two_stages", "train": {"steps": 10, "lr": 1e-3},
              "stages": {"first": {"nodes": mae()["nodes"], "objective": {"loss": 1.0}},
                         "second": {"needs": ["first"], "train": {"steps": 5}, "nodes": mae()["nodes"], "objective": {"loss": 1.0}}}}
    assert schema_errors(write(tmp_path, "staged", staged), schema) == []
    staged["stages"]["second"]["train"]["stepz"] = 5
    errors = schema_errors(write(tmp_path, "staged_bad", staged), schema)
    assert any("stages.second.train" in e and "'stepz' was unexpected" in e for e in errors), errors


def test_schema_file_is_json_with_a_draft07_header():
    data = json.loads((REPO / "pipeline.schema.json").read_text())
    assert data["$schema"] == "http://json-schema.org/draft-07/schema#"
