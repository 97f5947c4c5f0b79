"""The README's commands are real: every `graphssl` command in a bash block parses with the CLI, names shipped files, and its
overrides validate against the pipeline it runs; its test command is the one .ci/run runs."""
from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO
from graphssl.cli import build_parser
from graphssl.plan import plan_pipeline

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


def readme_component() -> str:
    return re.search(r"## Write your own component\n.*?```python\n(.*?)```", README, flags=re.S).group(1)


def test_readme_component_example_registers_and_computes_its_formula():
    import torch

    from graphssl.component import BuildContext
    from graphssl.registry import get

    namespace = {"__name__": "test_readme_component"}
    exec(compile(readme_component(), "README.md", "exec"), namespace)  # registered for this test only (conftest)
    cls = get("loss.smooth_l1_masked")
    assert cls is not None and cls.Config(beta=0.5).beta == 0.5
    node = cls(cls.Config(beta=1.0), BuildContext(image_size=32, channels=3))
    pred = torch.tensor([[[0.0, 0.0], [3.0, 1.0]]])
    target = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])
    mask = torch.tensor([[False, True]])
    # only the masked token counts: mean(smooth_l1(3), smooth_l1(1)) = mean(3 - 0.5, 0.5 * 1^2) = 1.5
    assert torch.isclose(node(pred=pred, target=target, mask=mask)["loss"], torch.tensor(1.5))


def test_readme_component_plugs_into_the_readme_pipeline_through_graphssl_check(tmp_path, capsys):
    """The pipeline of "Write your own pipeline", with the loss node and plugins: line that "Write your own
    component" shows, and the component saved as my_losses.py next to it: `graphssl check` passes."""
    from graphssl.cli import main
    from graphssl.registry import get, origin

    pipeline = re.search(r"## Write your own pipeline\n.*?```yaml\n(name: my_mim\n.*?)```", README, flags=re.S).group(1)
    snippet = re.search(r"## Write your own component\n.*?```yaml\n(plugins: .*?)```", README, flags=re.S).group(1)
    plugins_line = snippet.splitlines()[0]
    loss_line = next(line for line in snippet.splitlines() if line.startswith("  loss:"))
    lines = pipeline.splitlines()
    (old_loss,) = [i for i, line in enumerate(lines) if line.startswith("  loss:")]
    assert "loss.mse_masked" in lines[old_loss]
    lines[old_loss] = loss_line
    lines.insert(1, plugins_line)
    (tmp_path / "my_mim.yaml").write_text("\n".join(lines) + "\n")
    (tmp_path / "my_losses.py").write_text(readme_component())
    small = ["nodes.encoder.depth=1", "nodes.decoder.depth=1", "device=cpu"]
    assert main(["check", str(tmp_path / "my_mim.yaml"), *small]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "dry run of one training step passed" in out and "loss.smooth_l1_masked" in out
    assert str(origin("loss.smooth_l1_masked")) == f"file {(tmp_path / 'my_losses.py').resolve()}"
    assert get("loss.smooth_l1_masked").Config().beta == 1.0
