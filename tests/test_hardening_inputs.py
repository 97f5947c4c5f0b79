"""Inputs that must be refused before any run exists: names that are paths, unbounded YAML, command-line
values, a tracking URI whose folder is missing or a server that never answers, data the stage cannot use."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import PIPELINES
from graphssl import checkpoint, loading, store, tracking
from graphssl.build import build_trainer
from graphssl.cli import main
from graphssl.errors import PipelineError
from graphssl.plan import plan_pipeline
from graphssl.preflight import TRAINING_METRICS
from hardening import tiny, write

GALLERY = Path(__file__).resolve().parent / "bad_pipelines"


def test_the_gallery_holds_a_case_for_each_input_refused_before_a_run():
    names = {p.stem for p in GALLERY.glob("*.yaml")}
    for kind in ("adamw_betas_out_of_range", "seed_out_of_range", "objective_weight_nan", "lr_infinite", "empty_stages",
                 "override_malformed_value", "evaluator_metric_refused", "evaluator_metric_is_training_metric",
                 "evaluator_metric_twice", "batch_larger_than_dataset", "node_name_refused", "pipeline_name_escapes",
                 "stage_name_escapes", "vars_key_refused", "yaml_alias_bomb", "nested_too_deep"):
        assert kind in names, kind


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


# -- names that are paths --------------------------------------------------------------------
def test_new_takes_a_name_not_a_path(tmp_path, monkeypatch, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = files_under(tmp_path)
    for name in ("../../x", "sub/x", "/tmp/x", "x.yaml", ".hidden", ""):
        assert main(["new", name, "--from", "mae"]) == 2, name
        assert "is not allowed" in capsys.readouterr().err
    assert files_under(tmp_path) == before  # no folder, no file, anywhere
    assert main(["new", "my_mae-2", "--from", "mae"]) == 0
    assert (work / "my_mae-2.yaml").is_file()


@pytest.mark.parametrize("where,name", [("stage", "../../../x"), ("stage", "a/b"), ("node", "../x"), ("node", "loss/x"),
                                        ("pipeline", "../x"), ("pipeline", "a b")])
def test_names_are_identifiers(tmp_path, monkeypatch, capsys, where, name):
    workdir = tmp_path / "a" / "b" / "c"  # room for a name that climbs three folders up
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pipeline = tiny()
    if where == "stage":
        pipeline = {k: v for k, v in pipeline.items() if k not in ("nodes", "objective")}
        pipeline["stages"] = {name: {"nodes": tiny()["nodes"], "objective": {"loss": 1.0}}}
    elif where == "node":
        pipeline["nodes"][name] = {"type": "augment.crop", "images": "batch.images"}
    else:
        pipeline["name"] = name
    path = write(workdir / "p.yaml", pipeline)
    assert main(["run", str(path), "train.checkpoint_every=1"]) == 2
    err = capsys.readouterr().err
    assert f"a {where} name {name!r} is not allowed: a name has only letters, digits, '_' and '-'" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["p.yaml"]  # no store, no checkpoints
    assert files_under(tmp_path) == {tmp_path / "a", tmp_path / "a" / "b", workdir, workdir / "p.yaml"}


def test_a_checkpoint_never_names_a_folder_outside_checkpoints(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="is not a run id"):
        checkpoint.run_dir("../../x")
    for field, value in (("run_id", "../../escape"), ("stage", "../x"), ("step", "3")):
        state = {"step": 2, "stage": "mae", "run_id": "abc", "fingerprint": "f", "modules": {}, "optimizer": {}, "rng": [],
                 field: value}
        path = tmp_path / f"{field}.state.pt"
        torch.save(state, path)
        with pytest.raises(checkpoint.CheckpointError, match="cannot use checkpoint"):
            checkpoint.load(path)


def test_resume_of_a_path_that_is_not_there_is_a_clear_error(workdir, capsys):
    path = write(workdir / "p.yaml", tiny())
    assert main(["run", str(path), "--resume", "../../elsewhere"]) == 2
    err = capsys.readouterr().err
    assert "is not a run id" in err and "Traceback" not in err


# -- unbounded YAML -------------------------------------------------------------------------------
def refused(path, *overrides) -> str:
    with pytest.raises(PipelineError) as info:
        loading.load_yaml(path, list(overrides))
    return info.value.format()


def test_a_5000_deep_list_is_a_clear_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\nvars:\n  v: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "vars.v: mappings and lists nested more than 50 deep (line 3)" in refused(path)
    block = "name: deep\nvars:\n" + "".join("  " * (i + 1) + "- \n" for i in range(200))  # block style too
    path.write_text(block)
    assert "nested more than 50 deep" in refused(path)
    assert "nested more than 50 deep" in refused(PIPELINES / "mae.yaml", "nodes.mask.ratio=" + "[" * 5000 + "]" * 5000)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    lines = ["name: bomb", "vars:", "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  {c}: &{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdefgh", "bcdefghi")]  # 10**9 values
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 2500
    text = refused(path)
    assert "more than 20000 values" in text and "an alias *name counts as the values it stands for" in text
    assert loading.yaml_lines(path.read_text()) == {}  # nothing walks it either


def test_a_file_over_1_mb_and_an_endless_one_are_refused(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("name: huge\nvars:\n" + "".join(f"  k{i}: {i}\n" for i in range(200_000)))
    assert path.stat().st_size > 1_000_000
    assert "the pipeline file is larger than 1 MB" in refused(path)
    assert "the pipeline file is larger than 1 MB" in refused("/dev/zero")  # read no further than the limit


def test_a_malformed_override_names_its_key(tmp_path):
    text = refused(PIPELINES / "mae.yaml", "train.steps=5", "train.betas=[0.9,", "nodes.mask.ratio={a: ")
    assert "train.betas: cannot read the override value '[0.9,'" in text
    assert "nodes.mask.ratio: cannot read the override value '{a: '" in text
    assert "2 errors" in text


# -- the command line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [(["--nproc-per-node", "0"], "--nproc-per-node: 0 is less than 1"),
                                          (["--nnodes", "-1"], "--nnodes: -1 is less than 1"),
                                          (["--node-rank", "x"], "--node-rank: 'x' is not a whole number")])
def test_launch_counts_are_checked(workdir, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(["run", str(PIPELINES / "mae.yaml"), *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(workdir.iterdir()) == []


def test_a_sqlite_store_in_a_folder_that_does_not_exist_is_an_error(workdir, capsys):
    path = write(workdir / "p.yaml", tiny())
    missing = workdir / "typo" / "store"
    assert main(["run", str(path), "--tracking-uri", f"sqlite:///{missing}/mlflow.db"]) == 2
    err = capsys.readouterr().err
    assert f"the folder {missing} does not exist" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["p.yaml"]  # not created
    with pytest.raises(tracking.TrackingError, match="does not exist"):
        tracking.Tracker(f"file://{missing}/mlruns")


def test_a_server_that_accepts_but_never_answers_is_an_error_within_seconds(monkeypatch):
    monkeypatch.setattr(store, "PROBE_TIMEOUT_S", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        port = silent.getsockname()[1]
        with pytest.raises(tracking.TrackingError, match="accepted the connection but did not answer within 1 s"):
            tracking.Tracker(f"http://127.0.0.1:{port}")


# -- data the stage cannot use --------------------------------------------------------------------
def image_folder(root: Path, splits: tuple[str, ...], per_class: int = 2) -> Path:
    for split in splits:
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("L", (16, 16), 40 * i).save(root / split / cls / f"{i}.png")
    return root


def test_an_image_folder_without_a_test_split_is_an_error_only_for_evaluators(workdir, capsys):
    root = image_folder(workdir / "images", ("train",), per_class=4)
    pipeline = tiny(data={"dataset": "image_folder", "root": str(root), "limit": None})
    plan_pipeline(write(workdir / "no_eval.yaml", pipeline))  # nothing reads a test split: fine
    pipeline["nodes"]["knn"] = {"type": "eval.knn", "encoder": "encoder", "feature": "mean"}
    path = write(workdir / "eval.yaml", pipeline)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"data.root: image_folder: no test (or val) folder under {root}; the evaluators (knn) read labelled test images" in err
    assert not (workdir / "mlflow.db").exists()


def test_a_batch_larger_than_an_image_folder_is_an_error(workdir, capsys):
    root = image_folder(workdir / "images", ("train", "test"), per_class=2)
    path = write(workdir / "p.yaml", tiny(data={"dataset": "image_folder", "root": str(root), "limit": None}))
    assert main(["run", str(path)]) == 2
    assert "data.batch_size: a batch of 8 is more than the 4 training images" in capsys.readouterr().err
    with pytest.raises(PipelineError, match=r"a batch of 2 x 4 processes is more than the 4 training images"):
        plan_pipeline(path, ["data.batch_size=2"], processes=4)
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.parametrize("layout", ["flat", "nested", "tiff"])
def test_the_batch_check_counts_the_images_the_data_path_reads(workdir, layout):
    """An unlabeled train/ of images, class folders with sub-folders, and .tif files are all read by the data
    path; the preflight count must find them too instead of refusing the batch."""
    root = workdir / "images"
    for i in range(8):
        folder = {"flat": root / "train", "nested": root / "train" / "a" / f"part{i % 2}",
                  "tiff": root / "train" / "a"}[layout]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(folder / f"{i}.{'tif' if layout == 'tiff' else 'png'}")
    plan_pipeline(write(workdir / "p.yaml", tiny(data={"dataset": "image_folder", "root": str(root), "limit": None})),
                  ["data.batch_size=8"])
    with pytest.raises(PipelineError, match=r"a batch of 9 is more than the 8 training images"):
        plan_pipeline(workdir / "p.yaml", ["data.batch_size=9"])


def test_the_training_metric_names_evaluators_may_not_take_are_those_the_trainer_logs(workdir):
    plan = plan_pipeline(write(workdir / "p.yaml", tiny()))
    trainer = build_trainer(plan.last, plan, torch.device("cpu"))
    logged = {k for k in trainer.train_step(0) if not k.startswith("loss/")} | {"data_wait_s"}  # fit adds the wait
    assert logged == set(TRAINING_METRICS)
