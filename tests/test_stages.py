"""Staged pipelines: reuse of unchanged stages, --force, invalidation, stage-graph errors, teacher loading.

Everything runs in process (runner.run / cli.main) on a tiny two-stage
pipeline written into tmp_path: an MAE-style teacher stage and an EVA-style
student stage that regresses the teacher's patch features.
"""
from __future__ import annotations

import pytest
import torch
import yaml
from mlflow import MlflowClient

from graphssl import build, cli, runner
from graphssl.artifacts import load_checkpoint_module, save_modules
from graphssl.plan import plan_pipeline

TRAIN = {"steps": 2, "lr": 1.0e-3, "log_every": 1}
DATA = {"dataset": "fashion_mnist", "image_size": 32, "channels": 3, "batch_size": 8, "limit": 64}
VIT = {"type": "encoder.vit", "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
TEACHER = {
    "view": {"type": "augment.crop", "images": "batch.images"},
    "mask": {"type": "mask.random", "images": "view.images", "ratio": 0.75, "patch_size": 8},
    "encoder": {**VIT, "pos_embed": "sincos", "mask_mode": "drop", "images": "view.images", "mask": "mask.mask"},
    "decoder": {"type": "head.mae_decoder", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8,
                "in_dim": 32, "cls": "encoder.cls", "patches": "encoder.patches", "mask": "mask.mask"},
    "target": {"type": "target.patch_pixels", "images": "view.images", "patch_size": 8},
    "loss": {"type": "loss.mse_masked", "pred": "decoder.pred", "target": "target.target", "mask": "mask.mask"},
}


def student_nodes(source: str = "teacher.encoder", patch_size: int = 8) -> dict:
    return {
        "view": {"type": "augment.crop", "images": "batch.images"},
        "mask": {"type": "mask.block", "images": "view.images", "num_masked": 6, "min_num_patches": 2,
                 "patch_size": patch_size},
        "encoder": {**VIT, "patch_size": patch_size, "images": "view.images", "mask": "mask.mask"},
        "target": {"type": "target.features", "source": source, "patch_size": patch_size, "images": "view.images"},
        "head": {"type": "head.features", "in_dim": 32, "out_dim": 32, "tokens": "encoder.patches"},
        "loss": {"type": "loss.cosine_masked", "pred": "head.pred", "target": "target.target", "mask": "mask.mask"},
        "knn": {"type": "eval.knn", "encoder": "encoder", "feature": "mean"},
    }


def staged(**stages) -> dict:
    return {"name": "tiny_staged", "device": "cpu", "data": DATA, "train": TRAIN, "eval": {"limit": 20},
            "stages": stages}


def two_stage() -> dict:
    return staged(teacher={"nodes": TEACHER, "objective": {"loss": 1.0}},
                  student={"needs": ["teacher"], "nodes": student_nodes(), "objective": {"loss": 1.0}})


def write(path, pipeline: dict):
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def training_runs(workdir) -> dict[str, int]:
    """Stage runs that trained (not the "(reused)" markers), counted per stage."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("graphssl")
    counts: dict[str, int] = {}
    for r in client.search_runs([exp.experiment_id]):
        tags = r.data.tags
        if "graphssl.stage" in tags and "graphssl.reused_from" not in tags:
            counts[tags["graphssl.stage"]] = counts.get(tags["graphssl.stage"], 0) + 1
    return counts


def run(path, *overrides, force=False):
    lines: list[str] = []
    runner.run(path, list(overrides), force=force, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    return lines


def test_unchanged_stages_that_later_stages_need_are_reused_force_retrains_and_a_change_retrains_dependents(workdir):
    path = write(workdir / "two.yaml", two_stage())
    first = run(path)
    assert training_runs(workdir) == {"teacher": 1, "student": 1}
    assert not any("reusing" in line for line in first)

    # the teacher (needed by the student) is reused; the pipeline's product, the student, is trained again
    second = run(path)
    assert any(line.startswith("stage teacher: unchanged config and inputs, reusing run") for line in second), second
    assert any(line.startswith("stage student: training") for line in second), second
    assert training_runs(workdir) == {"teacher": 1, "student": 2}

    forced = run(path, force=True)
    assert not any("reusing" in line for line in forced)
    assert training_runs(workdir) == {"teacher": 2, "student": 3}

    # a change in stage 1 changes its fingerprint and, through needs, stage 2's
    changed = run(path, "stages.teacher.nodes.mask.ratio=0.5")
    assert any(line.startswith("stage teacher: training") for line in changed), changed
    assert any(line.startswith("stage student: training") for line in changed), changed
    assert training_runs(workdir) == {"teacher": 3, "student": 4}

    # a change in stage 2 only retrains stage 2
    only_student = run(path, "stages.teacher.nodes.mask.ratio=0.5", "stages.student.nodes.mask.num_masked=5")
    assert any(line.startswith("stage teacher: unchanged") for line in only_student), only_student
    assert training_runs(workdir) == {"teacher": 3, "student": 5}


def test_a_stage_section_override_reaches_a_stage_that_does_not_write_the_section(workdir):
    path = write(workdir / "two.yaml", two_stage())
    plan = plan_pipeline(path, ["stages.student.eval.limit=30", "train.steps=3"])
    assert plan.stages["student"].prepared.cfg.eval.limit == 30 and plan.stages["teacher"].prepared.cfg.eval.limit == 20
    assert [s.prepared.cfg.train.steps for s in plan.stages.values()] == [3, 3]


def check(path) -> tuple[int, str]:
    """`graphssl check` in process: exit code and everything it printed."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check", str(path)])
    return code, out.getvalue() + err.getvalue()


def test_dangling_needs_is_rejected_at_check_time(workdir):
    pipeline = two_stage()
    pipeline["stages"]["student"]["needs"] = ["teachr"]
    code, text = check(write(workdir / "dangling.yaml", pipeline))
    assert code == 2
    assert "stages.student.needs: unknown stage 'teachr'" in text and 'did you mean "teacher"' in text
    assert "Traceback" not in text


def test_a_cycle_between_stages_is_rejected_at_check_time(workdir):
    pipeline = two_stage()
    pipeline["stages"]["teacher"]["needs"] = ["student"]
    code, text = check(write(workdir / "cycle.yaml", pipeline))
    assert code == 2
    assert "stages form a cycle" in text and "teacher" in text and "student" in text
    assert "Traceback" not in text


def test_loading_from_a_stage_not_in_needs_is_rejected(workdir):
    pipeline = two_stage()
    pipeline["stages"]["student"]["needs"] = []
    code, text = check(write(workdir / "no_needs.yaml", pipeline))
    assert code == 2
    assert "does not list it in needs" in text


def test_teacher_student_grid_mismatch_is_rejected_at_check_time(workdir):
    # the teacher sees 8 px patches (4x4 grid), the student 4 px patches (8x8 grid)
    pipeline = staged(teacher={"nodes": TEACHER, "objective": {"loss": 1.0}},
                      student={"needs": ["teacher"], "nodes": student_nodes(patch_size=4), "objective": {"loss": 1.0}})
    code, text = check(write(workdir / "grid.yaml", pipeline))
    assert code == 2
    assert "stages.student.nodes.target" in text
    assert "teacher grid 4x4 (16 tokens) does not match the student grid 8x8 (64 tokens" in text
    assert "Traceback" not in text


def test_teacher_loads_from_a_checkpoint_file(workdir):
    # train nothing: build the teacher stage's modules, give the encoder known weights, save them
    single = {"name": "teacher_only", "device": "cpu", "data": DATA, "train": TRAIN, "nodes": TEACHER,
              "objective": {"loss": 1.0}}
    prepared = build.prepare(write(workdir / "teacher.yaml", single))
    torch.manual_seed(0)
    modules = build.build_modules(prepared, build.make_context(prepared, None, torch.device("cpu")))
    with torch.no_grad():
        for i, p in enumerate(modules["encoder"].parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).view_as(p) * (i + 1) / 10)
    ckpt = workdir / "teacher.modules.pt"
    save_modules(modules, prepared, ckpt)

    loaded = load_checkpoint_module(ckpt, "encoder", torch.device("cpu"))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for name, value in modules["encoder"].state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    with pytest.raises(ValueError, match="holds several modules"):
        load_checkpoint_module(ckpt, None, torch.device("cpu"))
    with pytest.raises(ValueError, match='has no module .*did you mean "encoder"'):
        load_checkpoint_module(ckpt, "encodr", torch.device("cpu"))

    # a single-stage student whose target reads PATH#NODE: checked, then trained for 2 steps
    student = {"name": "student_from_file", "device": "cpu", "data": DATA, "train": TRAIN, "eval": {"limit": 20},
               "nodes": student_nodes(source=f"{ckpt}#encoder"), "objective": {"loss": 1.0}}
    path = write(workdir / "student.yaml", student)
    code, text = check(path)
    assert code == 0, text
    prepared = build.prepare(path)
    ctx = build.make_context(prepared, None, torch.device("cpu"))
    built = build.build_modules(prepared, ctx)
    teacher = built["target"].teacher
    for name, value in modules["encoder"].state_dict().items():
        assert torch.equal(teacher.state_dict()[name], value), name
    images = torch.randn(2, 3, 32, 32)
    expected = modules["encoder"].eval()(images=images)["patches"]
    assert torch.allclose(built["target"](images=images)["target"], expected, atol=1e-6)
    run(path)  # trains with the file's teacher

    # a missing file is a clear build error at check time
    student["nodes"]["target"]["source"] = str(workdir / "missing.modules.pt") + "#encoder"
    code, text = check(write(workdir / "missing.yaml", student))
    assert code == 2 and "does not exist" in text and "Traceback" not in text
