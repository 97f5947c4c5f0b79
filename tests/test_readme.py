"""The README's commands are real: every `graphssl` command in a bash block parses with the CLI, names shipped files, and its
overrides validate against the pipeline it runs; its test command is the one .ci/run runs."""
from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO
from graphssl.cli import build_parser
from graphssl.stages import plan_pipeline

README = (REPO / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """argv of every `graphssl ...` command in the README's bash blocks (after `&&` too)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["graphssl"]:
                    commands.append(words[1:])
                elif words[:3] == ["torchrun", "--nproc-per-node", "2"] and "graphssl" in words:
                    commands.append(words[words.index("graphssl") + 1:])
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_eva_first_and_every_subcommand():
    assert COMMANDS[0] == ["run", "pipelines/eva.yaml"]
    shown = {argv[0] for argv in COMMANDS}
    assert {"run", "check", "components", "compare", "graph", "new"} <= shown


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_command_parses_and_names_real_files(argv):
    args = build_parser().parse_args(argv)
    pipeline = getattr(args, "pipeline", None)
    if pipeline and pipeline.startswith("pipelines/"):
        assert (REPO / pipeline).is_file(), pipeline
        plan_pipeline(REPO / pipeline, list(args.overrides))  # overrides name real keys with valid values


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    test_command = re.search(r"## Run the tests\n\n```bash\n(.*?)\n```", README, flags=re.S).group(1)
    assert "python3 -m pytest -q" in test_command
    assert ci.rstrip().endswith("python3 -m pytest -q")
