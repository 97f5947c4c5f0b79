"""The gallery of broken pipelines in tests/bad_pipelines/: each must be rejected with exit code 2.

Every file starts with comment lines that say what it must produce:

    # expect: FRAGMENT         (one or more; each must appear in stderr)
    # expect-count: N          (the number of errors reported)
    # overrides: a=b c=d       (command-line overrides to pass)
    # requires: NAME           (a component name, or "stages": skipped when absent)

For every case, through ``graphssl check`` and ``graphssl run`` (in-process,
from an empty working directory with MLFLOW_TRACKING_URI unset): exit code 2,
every expected fragment in stderr, every error line carrying a YAML path (and
its line number when the path is in the file), no traceback, and nothing
written to the working directory (so no MLflow store, no run). A few cases
also run as real subprocesses, to prove that no traceback reaches the user.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import graphssl_cmd
from graphssl import registry
from graphssl.cli import main
from graphssl.config import line_of
from graphssl.loading import yaml_lines

GALLERY = Path(__file__).resolve().parent / "bad_pipelines"
EXIT_INVALID = 2
# "  FILE:LINE: error: PATH: message" or "  FILE: error: PATH: message"
ERROR_LINE = re.compile(r"^  (?P<source>.+?)(?::(?P<line>\d+))?: error: (?P<rest>.*)$")
YAML_PATH = re.compile(r"^(?P<path>[A-Za-z_][\w-]*(?:\.[\w-]+)*): ")


@dataclass
class Case:
    path: Path
    expects: list[str] = field(default_factory=list)
    count: int | None = None
    overrides: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem


def parse_case(path: Path) -> Case:
    case = Case(path)
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line[1:].strip().partition(":")
        value = value.strip()
        if not sep:
            continue
        if key == "expect":
            case.expects.append(value)
        elif key == "expect-count":
            case.count = int(value)
        elif key == "overrides":
            case.overrides += value.split()
        elif key == "requires":
            case.requires += [v.strip() for v in value.replace(",", " ").split()]
    return case


CASES = [parse_case(p) for p in sorted(GALLERY.glob("*.yaml"))]


def missing_requirement(case: Case) -> str | None:
    for need in case.requires:
        if need == "stages":
            if importlib.util.find_spec("graphssl.plan") is None:
                return "stages are not implemented (graphssl.plan is missing)"
        elif registry.get(need) is None:
            return f"component {need} is not registered"
    return None


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GRAPHSSL_DEBUG", raising=False)
    return work


def check_report(case: Case, err: str, out: str = "") -> None:
    """Assertions shared by the in-process and subprocess runs."""
    assert "Traceback" not in err + out
    for fragment in case.expects:
        assert fragment in err, f"{case.name}: expected {fragment!r} in:\n{err}"
    if case.count is not None:
        plural = "s" if case.count != 1 else ""
        assert f": {case.count} error{plural}\n" in err, f"{case.name}: expected {case.count} error{plural} in:\n{err}"
    errors = [m for m in map(ERROR_LINE.match, err.splitlines()) if m]
    assert errors, f"{case.name}: no error lines in:\n{err}"
    lines = yaml_lines(case.path.read_text())
    for m in errors:
        rest = m.group("rest")
        if rest.startswith("YAML syntax error"):
            assert m.group("line"), rest  # no path yet, but a line (and a column)
            continue
        found = YAML_PATH.match(rest)
        assert found, f"{case.name}: error without a YAML path: {rest!r}"
        known = line_of(lines, found.group("path"))
        if known is not None and not case.overrides and "duplicate key" not in rest:  # a duplicate: its second line
            assert m.group("line") == str(known), f"{case.name}: {rest!r} should be reported at line {known}"


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_pipeline_is_rejected(case: Case, command: str, empty_cwd, capsys):
    reason = missing_requirement(case)
    if reason:
        pytest.skip(reason)
    assert case.expects, f"{case.path} has no '# expect:' line"
    rc = main([command, str(case.path), *case.overrides])
    out, err = capsys.readouterr()
    assert rc == EXIT_INVALID, f"{case.name}: exit code {rc}\nstdout:\n{out}\nstderr:\n{err}"
    check_report(case, err, out)
    assert list(empty_cwd.iterdir()) == [], f"{case.name}: wrote {list(empty_cwd.iterdir())}"


SUBPROCESS_CASES = [  # (case, command): validation, YAML syntax and a dry-run failure, each from the shell
    ("two_errors_in_two_nodes", "run"),
    ("yaml_syntax_error", "check"),
    ("patch_size_not_dividing", "run"),
]


@pytest.mark.parametrize("name,command", SUBPROCESS_CASES, ids=[f"{n}-{c}" for n, c in SUBPROCESS_CASES])
def test_bad_pipeline_subprocess(name: str, command: str, empty_cwd):
    case = next(c for c in CASES if c.name == name)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GRAPHSSL_DEBUG")}
    result = subprocess.run(graphssl_cmd(command, str(case.path), *case.overrides), capture_output=True, text=True,
                            cwd=empty_cwd, env=env, timeout=300)
    assert result.returncode == EXIT_INVALID, result.stderr[-3000:]
    check_report(case, result.stderr, result.stdout)
    assert list(empty_cwd.iterdir()) == []


def test_gallery_covers_the_issue():
    """At least 25 cases, and one for each kind of error the issue lists."""
    assert len(CASES) >= 25
    names = {c.name for c in CASES}
    for kind in ("yaml_syntax_error", "unknown_component", "unknown_parameter", "wrong_parameter_type",
                 "mask_ratio_out_of_range", "negative_temperature", "ema_momentum_above_one", "missing_required_input",
                 "unknown_node", "unknown_port", "port_type_mismatch", "port_rank_mismatch", "cycle",
                 "duplicate_node_name", "ema_unknown_module", "loss_not_in_objective", "objective_not_a_loss",
                 "override_unknown_key", "patch_size_not_dividing", "teacher_student_grid_mismatch",
                 "missing_dataset_path", "unreadable_checkpoint", "stage_unknown_needs", "two_errors_in_two_nodes"):
        assert kind in names, kind
