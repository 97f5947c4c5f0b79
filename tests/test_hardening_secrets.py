"""Values a pipeline reads from the environment (${oc.env:NAME}) never reach the tracking store, its
artifacts, the console or an error message: parameters show them masked, pipeline.yaml as written."""
from __future__ import annotations

import yaml

from graphssl.cli import main
from graphssl.loading import load_yaml
from graphssl.plan import plan_pipeline
from hardening import MAE_NODES, all_runs, store, tiny, write

SECRET = "s3cr3t-7f2a9c-token"


def files_holding(folder, text: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_a_secret_from_the_environment_is_in_no_param_tag_artifact_or_console_line(workdir, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHSSL_TEST_SECRET", SECRET)
    pipeline = tiny(description="owned by ${oc.env:GRAPHSSL_TEST_SECRET}",
                    vars={"token": "${oc.env:GRAPHSSL_TEST_SECRET}", "header": "Bearer ${vars.token}", "steps": 2})
    pipeline["train"]["steps"] = "${vars.steps}"
    path = write(workdir / "p.yaml", pipeline)
    assert main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err

    client = store(workdir)
    runs = all_runs(client)
    assert len(runs) > 3  # parent, stage, node runs
    for run in runs:
        for field in (run.data.params, run.data.tags):
            for key, value in field.items():
                assert SECRET not in key + value, (run.info.run_name, key)
        assert SECRET not in (run.info.run_name or "")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    params = parent.data.params
    assert params["vars.token"] == params["vars.header"] == params["description"] == "***"
    assert params["train.steps"] == "2"  # what is not from the environment is logged as resolved
    written = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "pipeline.yaml", str(workdir / "dl"))))
    assert written["vars"]["token"] == "${oc.env:GRAPHSSL_TEST_SECRET}"  # as written: repeatable, nothing leaked
    assert files_holding(workdir, SECRET) == []  # the store's database, every artifact, every file written


def test_a_secret_is_not_quoted_in_an_error_message(workdir, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHSSL_TEST_SECRET", SECRET)
    path = write(workdir / "p.yaml", tiny(seed="${oc.env:GRAPHSSL_TEST_SECRET}",
                                          vars={"where": "${oc.env:GRAPHSSL_TEST_SECRET}"},
                                          data={"root": "/nonexistent/${vars.where}"}))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "seed: Input should be a valid integer" in err and "(got ***)" in err
    assert SECRET not in err


def test_short_and_derived_values_are_masked_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSSL_TEST_STEPS", "3")
    pipeline = tiny(vars={"n": "${oc.decode:${oc.env:GRAPHSSL_TEST_STEPS}}"})
    pipeline["train"]["steps"] = "${vars.n}"
    loaded = load_yaml(write(tmp_path / "p.yaml", pipeline))
    assert loaded.raw["train"]["steps"] == 3
    masked = loaded.masked()
    assert masked["vars"]["n"] == masked["train"]["steps"] == "***"
    assert masked["train"]["lr"] == 1.0e-3 and masked["data"]["limit"] == 64


def test_a_stage_masks_what_it_takes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSSL_TEST_SECRET", SECRET)
    pipeline = {k: v for k, v in tiny("two", description="${oc.env:GRAPHSSL_TEST_SECRET}").items()
                if k not in ("nodes", "objective")}
    pipeline["stages"] = {"a": {"nodes": MAE_NODES, "objective": {"loss": 1.0},
                                "train": {"steps": "${oc.decode:${oc.env:GRAPHSSL_TEST_STEPS,2}}"}}}
    plan = plan_pipeline(write(tmp_path / "p.yaml", pipeline))
    masked = plan.stages["a"].prepared.loaded.masked()
    assert masked["description"] == "***" and masked["train"]["steps"] == "***" and masked["train"]["lr"] == 1.0e-3
