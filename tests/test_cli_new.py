"""`graphssl new NAME --from PIPELINE` (a copy to edit) and `graphssl components` (ports and parameters)."""
from __future__ import annotations

import os
import re

from conftest import PIPELINES, REPO
from graphssl import registry
from graphssl.cli import main
from support.schema_check import schema_errors
from graphssl.plan import plan_pipeline


def test_new_copies_a_shipped_pipeline_with_its_name_and_schema_line(workdir, capsys):
    assert main(["new", "my_mae", "--from", "mae"]) == 0
    assert "wrote my_mae.yaml" in capsys.readouterr().out
    copy = (workdir / "my_mae.yaml").read_text().splitlines()
    original = (PIPELINES / "mae.yaml").read_text().splitlines()
    schema_ref = copy[0].removeprefix("# yaml-language-server: $schema=")
    assert copy[0] != schema_ref and os.path.samefile(workdir / schema_ref, REPO / "pipeline.schema.json")
    assert copy[1].startswith("# Copied from mae.yaml")
    assert "name: my_mae" in copy and "name: mae" not in copy
    # everything else is the original, comments included
    assert [line for line in copy[2:] if line != "name: my_mae"] == [line for line in original[1:] if line != "name: mae"]
    plan = plan_pipeline(workdir / "my_mae.yaml")
    assert plan.name == "my_mae"
    assert schema_errors(workdir / "my_mae.yaml") == []


def test_new_refuses_to_overwrite(workdir, capsys):
    (workdir / "taken.yaml").write_text("mine\n")
    assert main(["new", "taken", "--from", "mae"]) == 1
    assert "not overwriting" in capsys.readouterr().err
    assert (workdir / "taken.yaml").read_text() == "mine\n"


def test_new_from_a_file_in_any_argument_order(workdir):
    assert main(["new", "--from", str(PIPELINES / "mae.yaml"), "other"]) == 0
    text = (workdir / "other.yaml").read_text()
    assert re.search(r"^name: other$", text, re.M)
    ref = text.splitlines()[0].removeprefix("# yaml-language-server: $schema=")
    assert os.path.samefile(workdir / ref, REPO / "pipeline.schema.json")


def test_new_from_an_unknown_pipeline_suggests_one(workdir, capsys):
    assert main(["new", "x", "--from", "maee"]) == 1
    err = capsys.readouterr().err
    assert 'did you mean "mae"' in err and "shipped:" in err
    assert not (workdir / "x.yaml").exists()


def test_components_lists_ports_with_shapes_and_parameters_with_types_and_defaults(capsys):
    assert main(["components"]) == 0
    out = capsys.readouterr().out
    for name in registry.names():
        assert re.search(rf"^{re.escape(name)}  \(", out, re.M), name
    block = out.split("\nmask.random  (")[1].split("\n\n")[0]
    assert re.search(r"in\s+images\s+images float\[\*,C,H,W\]\s+\S", block)
    assert re.search(r"out\s+mask\s+token_mask bool\[\*,N\]", block)
    assert re.search(r"ratio\s+float\s+0\.75\s+fraction of tokens masked", block)
    ema = out.split("\nteacher.ema  (")[1].split("\n\n")[0]
    assert re.search(r"momentum\s+float \| schedule\s+\{start: 0\.996, end: 1\.0", ema)
    assert re.search(r"of\s+list\[str\]\s+required", ema)


def test_components_of_one_family_one_component_and_brief(capsys):
    assert main(["components", "mask"]) == 0
    out = capsys.readouterr().out
    assert {line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")} == \
        {n for n in registry.names() if n.startswith("mask.")}
    assert main(["components", "eval.linear"]) == 0
    out = capsys.readouterr().out
    assert "class: graphssl.components.eval.linear.LinearProbeEval" in out and re.search(r"epochs\s+int\s+100", out)
    assert main(["components", "--brief"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(registry.names())
    assert main(["components", "mask.blok"]) == 2
    assert 'did you mean "mask.block"' in capsys.readouterr().err
