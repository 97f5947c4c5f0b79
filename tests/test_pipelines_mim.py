"""The masked-image-modeling pipelines: a short run of each, EVA-CLIP's offline failure, and the claims
that BEiT and EVA are one graph with three nodes changed and that every MIM pipeline uses one encoder type."""
from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from conftest import PIPELINES, graphssl_cmd

TINY = ["train.steps=2", "train.log_every=1", "data.limit=128", "data.batch_size=16", "eval.limit=50", "device=cpu"]
SMALL_VIT = ["depth=1", "embed_dim=64", "num_heads=2"]

# node-size overrides that keep each run to a few seconds (the wiring is what is tested)
RUNS = {
    "simmim": [f"nodes.encoder.{o}" for o in SMALL_VIT] + ["nodes.head.in_dim=64"],
    "beit": [f"stages.beit.nodes.encoder.{o}" for o in SMALL_VIT] + [
        "stages.beit.nodes.head.in_dim=64",
        "stages.tokenizer.nodes.tokenizer.hidden_dim=16", "stages.tokenizer.nodes.tokenizer.num_res_blocks=0"],
    "eva": [f"stages.student.nodes.encoder.{o}" for o in SMALL_VIT] + [
        "stages.student.nodes.head.in_dim=64", "stages.teacher.nodes.decoder.depth=1",
        "stages.teacher.nodes.encoder.depth=1"],
}


def load(name: str) -> dict:
    return yaml.safe_load((PIPELINES / f"{name}.yaml").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_pipeline_runs_end_to_end(name, workdir):
    result = subprocess.run(graphssl_cmd("run", str(PIPELINES / f"{name}.yaml"), *TINY, *RUNS[name]),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "knn_top1_init=" in result.stdout and "knn_top1=" in result.stdout
    assert "Traceback" not in result.stderr


def test_eva_clip_check_fails_offline_with_one_clear_line(workdir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty_hub_cache"),
           "HF_HOME": str(tmp_path / "empty_hf_home")}
    result = subprocess.run(graphssl_cmd("check", str(PIPELINES / "eva_clip.yaml")), capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    assert "nodes.target: cannot build target.features" in errors[0]
    assert "could not load pretrained weights for vit_base_patch16_clip_224.openai" in errors[0]
    assert "offline" in errors[0]


def student_stage(pipeline: dict) -> tuple[str, dict]:
    """The last stage (the one that trains the evaluated encoder)."""
    name = list(pipeline["stages"])[-1]
    return name, pipeline["stages"][name]


def test_beit_and_eva_differ_only_in_target_head_and_loss():
    beit, eva = load("beit"), load("eva")
    (beit_name, beit_student), (eva_name, eva_student) = student_stage(beit), student_stage(eva)
    assert (beit_name, eva_name) == ("beit", "student")
    assert beit_student["needs"] == ["tokenizer"] and eva_student["needs"] == ["teacher"]

    changed = {"target", "head", "loss"}
    assert set(beit_student["nodes"]) == set(eva_student["nodes"])
    assert changed <= set(beit_student["nodes"])
    for node in set(beit_student["nodes"]) - changed:
        assert beit_student["nodes"][node] == eva_student["nodes"][node], node
    assert {n: beit_student["nodes"][n]["type"] for n in changed} == {
        "target": "target.tokenizer", "head": "head.vocab", "loss": "loss.cross_entropy_masked"}
    assert {n: eva_student["nodes"][n]["type"] for n in changed} == {
        "target": "target.features", "head": "head.features", "loss": "loss.cosine_masked"}
    assert beit_student["nodes"]["target"]["source"] == "tokenizer.tokenizer"
    assert eva_student["nodes"]["target"]["source"] == "teacher.encoder"

    # the rest of the student stage is the same, but for the optimiser's betas and eps:
    # BEiT (0.9, 0.999) / 1e-8, EVA (0.9, 0.98) / 1e-6
    rest = lambda stage: {k: v for k, v in stage.items() if k not in ("nodes", "needs", "description")}  # noqa: E731
    b, e = rest(beit_student), rest(eva_student)
    assert {k: v for k, v in b.get("train", {}).items() if k not in ("betas", "eps")} == \
        {k: v for k, v in e.get("train", {}).items() if k not in ("betas", "eps")}
    assert (b["train"]["betas"], b["train"]["eps"]) == ([0.9, 0.999], 1.0e-8)
    assert (e["train"]["betas"], e["train"]["eps"]) == ([0.9, 0.98], 1.0e-6)
    b.pop("train"), e.pop("train")
    assert b == e
    # and the pipelines' shared sections are the same
    for key in ("seed", "device", "vars", "data", "train", "eval"):
        assert beit.get(key) == eva.get(key), key


def test_every_mim_pipeline_uses_the_same_encoder_component():
    for name in ("mae", "simmim", "beit", "eva", "eva_clip"):
        pipeline = load(name)
        stages = pipeline["stages"].values() if "stages" in pipeline else [pipeline]
        encoders = [node for stage in stages for node in stage["nodes"].values()
                    if node.get("type", "").startswith("encoder.")]
        assert encoders, name
        assert {node["type"] for node in encoders} == {"encoder.vit"}, name
        knn = [node for stage in stages for node in stage["nodes"].values() if node.get("type") == "eval.knn"]
        assert knn, name


def test_eva_clip_student_grid_aligns_with_the_teacher():
    pipeline = load("eva_clip")
    nodes, vars_ = pipeline["nodes"], pipeline["vars"]
    target = nodes["target"]
    assert target["source"] == "timm:vit_base_patch16_clip_224.openai"
    student_grid = pipeline["data"]["image_size"] // int(str(vars_["patch_size"]))
    assert student_grid == target["image_size"] // 16 == 14  # the CLIP-B/16 teacher's 14x14 grid
