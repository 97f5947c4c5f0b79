"""Nothing a checkpoint, a modules file or a shared tracking store holds may run code: every file graphssl
reads back is read with torch.load(weights_only=True). Each crafted file here would create a marker file
if it were unpickled; the marker must never appear."""
from __future__ import annotations

import torch

from graphssl.cli import main
from graphssl.plan import plan_pipeline
from hardening import MAE_NODES, VIT, all_runs, crafted_file, parent_of, store, tiny, write


def armed(path, marker) -> None:
    """The crafted file does run code when read unsafely (so the tests below can fail)."""
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


def student_nodes(source: str) -> dict:
    return {
        "view": {"type": "augment.crop", "images": "batch.images"},
        "mask": {"type": "mask.random", "images": "view.images", "ratio": 0.5, "patch_size": 8},
        "encoder": {**VIT, "images": "view.images", "mask": "mask.mask"},
        "target": {"type": "target.features", "source": source, "patch_size": 8, "images": "view.images"},
        "head": {"type": "head.features", "in_dim": 32, "out_dim": 32, "tokens": "encoder.patches"},
        "loss": {"type": "loss.cosine_masked", "pred": "head.pred", "target": "target.target", "mask": "mask.mask"},
    }


MODULES = {"nodes": {}, "pipeline": "teacher", "image_size": 16, "channels": 1}


def test_a_crafted_teacher_source_file_runs_no_code(workdir, capsys):
    marker = workdir / "marker"
    crafted = crafted_file(workdir / "teacher.modules.pt", MODULES, marker)
    armed(crafted, marker)
    path = write(workdir / "student.yaml", tiny(nodes=student_nodes(f"{crafted}#encoder")))
    for command in ("check", "run"):
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert "it holds objects other than tensors and plain values" in err and "Traceback" not in err
        assert not marker.exists()


def test_a_crafted_resume_folder_runs_no_code(workdir, capsys):
    marker = workdir / "marker"
    folder = workdir / "checkpoints" / "0123abcd"
    folder.mkdir(parents=True)
    state = {"step": 2, "stage": "tiny", "run_id": "0123abcd", "fingerprint": "f", "modules": {}, "optimizer": {},
             "rng": []}
    crafted = crafted_file(folder / "tiny.step2.state.pt", state, marker)
    armed(crafted, marker)
    path = write(workdir / "p.yaml", tiny())
    for resume in (str(folder), str(crafted)):
        assert main(["run", str(path), "--resume", resume]) == 2
        err = capsys.readouterr().err
        assert "cannot read checkpoint" in err and "it holds objects other than tensors and plain values" in err
        assert not marker.exists()


def test_a_poisoned_finished_run_in_a_shared_store_runs_no_code(workdir, capsys):
    """Someone with write access to the store plants a FINISHED stage run whose fingerprint matches the
    teacher stage: the next `graphssl run` would reuse it (the student needs the teacher)."""
    pipeline = {k: v for k, v in tiny("two").items() if k not in ("nodes", "objective")}
    pipeline["stages"] = {"teacher": {"nodes": MAE_NODES, "objective": {"loss": 1.0}},
                          "student": {"needs": ["teacher"], "nodes": student_nodes("teacher.encoder"),
                                      "objective": {"loss": 1.0}}}
    path = write(workdir / "two.yaml", pipeline)
    fingerprint = plan_pipeline(path).stages["teacher"].fingerprint

    marker = workdir / "marker"
    crafted = crafted_file(workdir / "teacher.modules.pt", MODULES, marker)
    armed(crafted, marker)
    client = store(workdir)
    experiment = client.create_experiment("graphssl")
    planted = client.create_run(experiment, run_name="teacher", tags={"graphssl.stage": "teacher",
                                                                      "graphssl.fingerprint": fingerprint}).info.run_id
    client.log_artifact(planted, str(crafted), "model")
    client.set_terminated(planted, "FINISHED")

    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert f"run {planted} of the tracking store has the same config and inputs, but its modules file cannot be used" in err
    assert "it holds objects other than tensors and plain values" in err and "--force" in err
    runs = [r for r in all_runs(client) if r.info.run_id != planted]
    assert parent_of(runs).info.status == "FAILED"
    assert all(r.info.status == "FAILED" for r in runs)
