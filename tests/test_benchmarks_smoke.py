"""The benchmark scripts run end to end (tiny sizes; no timing is asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import encoder_overrides  # noqa: E402


def test_encoder_overrides_resize_every_vit_and_the_width():
    overrides = encoder_overrides(REPO / "pipelines" / "dino.yaml", "vit_small_patch16_224", 12, 384, 6)
    assert "nodes.student.arch=vit_small_patch16_224" in overrides
    assert "nodes.student.depth=12" in overrides and "nodes.student.embed_dim=384" in overrides
    assert "vars.width=384" in overrides
    assert not any(o.startswith("nodes.student_local.") for o in overrides)  # a call node has no own config


def test_gpu_script_cpu_smoke_runs_the_throughput_code_path(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--cpu-smoke", "--pipelines", "mae"],
                          capture_output=True, text=True, env={**os.environ, "SMOKE_OUT": str(tmp_path), "PATH": _path()}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert result["settings"]["precision"] == "bf16" and result["settings"]["embed_dim"] == 64
    assert result["errors"] == {}
    assert result["pipelines"]["mae"]["images_per_s"] > 0


def _path() -> str:
    """The interpreter running the tests comes first, as ``python`` in gpu.sh."""
    return f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
