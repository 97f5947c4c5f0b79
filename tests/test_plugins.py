"""A pipeline's own components without a package (``plugins:``), and where each component came from."""
from __future__ import annotations

import pytest

from graphssl import registry
from graphssl.build import prepare
from graphssl.cli import main
from graphssl.errors import PipelineError

LOSS_FILE = '''
import torch

from graphssl.component import Component, In, Out
from graphssl.ports import LOSS, VECTOR
from graphssl.registry import register


@register("loss.mean_square")
class MeanSquare(Component):
    """Mean square of a vector."""

    inputs = {"x": In(VECTOR, "vectors")}
    outputs = {"loss": Out(LOSS, "scalar")}

    def forward(self, x):
        return {"loss": x.pow(2).mean()}
'''

PIPELINE = """\
name: plugged
device: cpu
plugins: [{plugin}]
data: {{image_size: 16, batch_size: 2, limit: 4}}
train: {{steps: 1, lr: 0.1}}
nodes:
  encoder: {{type: encoder.vit, patch_size: 8, depth: 1, embed_dim: 16, num_heads: 2, images: batch.images}}
  loss:    {{type: loss.mean_square, x: encoder.cls}}
objective: {{loss: 1.0}}
"""


def write_pipeline(folder, plugin: str = "my_losses.py"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "p.yaml"
    path.write_text(PIPELINE.format(plugin=plugin))
    return path


def test_a_plugin_file_next_to_the_pipeline_registers_its_components(tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    write_pipeline(folder)
    (folder / "my_losses.py").write_text(LOSS_FILE)
    monkeypatch.chdir(tmp_path)  # paths are relative to the pipeline file, not to the working directory
    prepared = prepare(folder / "p.yaml")
    assert prepared.spec.nodes["loss"].type_name == "loss.mean_square"
    assert str(registry.origin("loss.mean_square")) == f"file {(folder / 'my_losses.py').resolve()}"
    assert registry.origin("mask.block") == registry.BUILT_IN


def test_the_same_file_again_is_the_same_module_even_after_the_registry_forgot_it(tmp_path):
    path = write_pipeline(tmp_path)
    (tmp_path / "my_losses.py").write_text(LOSS_FILE)
    with registry.scope():
        first = prepare(path).spec.nodes["loss"].cls
    assert registry.get("loss.mean_square") is None  # the scope took it away
    assert prepare(path).spec.nodes["loss"].cls is first  # imported once, registered again


def test_a_dotted_module_name_is_imported(tmp_path, monkeypatch):
    (tmp_path / "lab_losses.py").write_text(LOSS_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    prepare(write_pipeline(tmp_path / "p", plugin="lab_losses"))
    assert str(registry.origin("loss.mean_square")) == "module lab_losses"


BROKEN = {
    "missing_file": (None, "cannot import plugin 'my_losses.py': no file "),
    "syntax_error": ("def broken(:\n", "cannot import plugin 'my_losses.py': SyntaxError: "),
    "raises_on_import": ("x = 1\nraise RuntimeError('no GPU here')\n",
                         "cannot import plugin 'my_losses.py': RuntimeError: no GPU here (my_losses.py:2)"),
    "imports_a_missing_module": ("import not_installed_anywhere\n",
                                 "cannot import plugin 'my_losses.py': ModuleNotFoundError: No module named 'not_installed_anywhere'"),
    "takes_a_built_in_name": (LOSS_FILE.replace('"loss.mean_square"', '"mask.block"'),
                              "RegistryError: component name 'mask.block' is already registered by "
                              "graphssl.components.mask.block.BlockMask (built-in)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_plugin_that_does_not_import_is_a_validation_error_naming_it(case, tmp_path, capsys):
    code, fragment = BROKEN[case]
    path = write_pipeline(tmp_path)
    if code is not None:
        (tmp_path / "my_losses.py").write_text(code)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: error: plugins.0: " in err and fragment in err and "Traceback" not in err, err
    assert registry.get("mask.block").__module__ == "graphssl.components.mask.block"


def test_a_plugin_that_failed_half_way_leaves_nothing_and_imports_once_fixed(tmp_path):
    path = write_pipeline(tmp_path)
    (tmp_path / "my_losses.py").write_text(LOSS_FILE + "\nraise ImportError('half way')\n")
    with pytest.raises(PipelineError, match="half way"):
        prepare(path)
    assert registry.get("loss.mean_square") is None
    (tmp_path / "my_losses.py").write_text(LOSS_FILE)
    assert prepare(path).spec.nodes["loss"].type_name == "loss.mean_square"


def test_plugins_must_be_a_list_of_names(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(plugin="my_losses.py").replace("plugins: [my_losses.py]", "plugins: my_losses.py"))
    with pytest.raises(PipelineError) as info:
        prepare(path)
    (problem,) = info.value.problems
    assert problem.path == "plugins" and problem.line == 3 and "is a list of files or modules" in problem.message


def test_components_shows_where_a_component_came_from(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_losses.py").write_text(LOSS_FILE)
    monkeypatch.chdir(tmp_path)
    assert main(["components", "loss"]) == 0
    assert "loss.mean_square" not in capsys.readouterr().out
    assert main(["components", "--plugin", "my_losses.py", "loss"]) == 0
    out = capsys.readouterr().out
    where = (tmp_path / "my_losses.py").resolve()
    assert f"loss.mean_square  (step, file {where})  Mean square of a vector." in out
    assert "loss.dino  (step)  Soft cross-entropy" in out  # built-ins carry no note
    assert main(["components", "--plugin", "my_losses.py", "loss.mean_square"]) == 0
    assert f"  from: file {where}" in capsys.readouterr().out
    assert main(["components", "--plugin", "my_losses.py", "--brief"]) == 0
    assert f"[file {where}]" in capsys.readouterr().out
    assert main(["components", "--plugin", "nope.py"]) == 2
    assert "cannot import plugin 'nope.py': no file" in capsys.readouterr().err


def test_an_installed_plugin_of_the_same_name_does_not_collide_with_a_test(tmp_path):
    """A user who installed the README's component as a package: each test sees the built-ins only."""
    from graphssl.component import Component

    class Installed(Component):
        """Stands for an entry point's component."""

    ep = registry.Origin("entry point", "my_components = my_package.components (package my-package 1.0)")
    with registry.scope():
        with registry.importing(ep):
            registry.register("loss.mean_square")(Installed)
        assert str(registry.origin("loss.mean_square")) == f"entry point {ep.where}"
        with registry.scope(builtins_only=True):  # what conftest gives every test
            (tmp_path / "my_losses.py").write_text(LOSS_FILE)
            assert prepare(write_pipeline(tmp_path)).spec.nodes["loss"].cls is not Installed
        assert registry.get("loss.mean_square") is Installed


def test_entry_point_origins_name_the_entry_point():
    from importlib.metadata import EntryPoint

    ep = EntryPoint("my_components", "my_package.components", registry.ENTRY_POINT_GROUP)
    assert str(registry._entry_point_origin(ep)) == "entry point my_components = my_package.components"


def test_registry_checks_the_typed_roles():
    from graphssl.component import ComponentConfig, Evaluator, Owner

    class NoCopies(Owner):
        """An owner without copies."""

    with registry.scope(), pytest.raises(registry.RegistryError, match="an Owner implements provides and copy_of"):
        registry.register("teacher.none")(NoCopies)

    class Unnamed(Evaluator):
        """An evaluator whose metric has no name."""

        class Config(ComponentConfig):
            every: int | None = None

        def evaluate(self, resolve, data, limit):
            return {}

    with registry.scope(), pytest.raises(registry.RegistryError, match="has a 'metric' field, or the class overrides metric_names"):
        registry.register("eval.unnamed")(Unnamed)
