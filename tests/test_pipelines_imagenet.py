"""Every paper-scale recipe in pipelines/imagenet/ validates and dry-runs (`graphssl check`) on a tiny generated folder."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import PIPELINES, graphssl_cmd
from imagegen import make_folder

RECIPES = sorted((PIPELINES / "imagenet").glob("*.yaml"))
LIGHT = "dino_vit_s16"  # in the default run; the others (ViT-B, 65536-prototype patch heads) are slow on a CPU


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imagenet"), classes=2, per_class=2, test_per_class=1, sizes=(60, 120))


def test_every_method_has_a_recipe():
    assert {p.stem for p in RECIPES} >= {"mae_vit_b16", "dino_vit_s16", "ibot_vit_s16", "dinov2_vit_s14", "simmim_vit_b16"}


@pytest.mark.parametrize("recipe", [pytest.param(p, id=p.stem, marks=() if p.stem == LIGHT else pytest.mark.slow)
                                    for p in RECIPES])
def test_recipe_passes_graphssl_check(recipe, tiny_folder, workdir):
    result = subprocess.run(graphssl_cmd("check", str(recipe), f"data.root={tiny_folder}", "data.batch_size=2",
                                         "data.workers=0", "device=cpu"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "dry run of one training step passed" in result.stdout
    assert "224" in result.stdout  # the views are at the paper's size
