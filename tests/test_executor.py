"""The executor on a tiny graph of test-only components."""
from __future__ import annotations

import textwrap

import pytest
import torch
from pydantic import Field

from graphssl.component import Component, ComponentConfig, In, Out
from graphssl.executor import Executor, NodeError, NodeHook
from graphssl.instrument import NodeTimer
from graphssl.ports import IMAGES, LOSS, VECTOR
from graphssl import registry
from graphssl.build import build_modules, make_context, prepare


class Pool(Component):
    """images -> mean colour, times a learnable scale."""

    class Config(ComponentConfig):
        fail: bool = False

    inputs = {"images": In(IMAGES, "images")}
    outputs = {"vec": Out(VECTOR, "pooled")}

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, images):
        if self.config.fail:
            raise RuntimeError("boom")
        return {"vec": images.mean(dim=(-1, -2)) * self.scale}


class Square(Component):
    """Mean square of one or more vectors."""

    class Config(ComponentConfig):
        offset: float = Field(0.0)

    inputs = {"x": In(VECTOR, "vectors", many=True)}
    outputs = {"loss": Out(LOSS, "mean square")}

    def forward(self, x):
        return {"loss": sum((v + self.config.offset).pow(2).mean() for v in x)}


@pytest.fixture(autouse=True)
def test_components():
    """test.pool and test.square, registered for each test of this file only."""
    with registry.scope({"test.pool": Pool, "test.square": Square}):
        yield


def write(tmp_path, nodes: str, objective: str = "{sq: 1.0}"):
    path = tmp_path / "p.yaml"
    body = textwrap.indent(textwrap.dedent(nodes), "  ")
    path.write_text("name: tiny\ntrain: {steps: 2, lr: 0.1}\ndata: {image_size: 8}\n"
                    f"nodes:\n{body}objective: {objective}\n")
    return path


def test_shared_module_called_twice_and_losses_weighted(tmp_path):
    path = write(tmp_path, """\
        a:  {type: test.pool, images: batch.images}
        a2: {call: a, images: batch.images}
        sq: {type: test.square, x: [a.vec, a2.vec]}
        sq2: {type: test.square, x: [a.vec], offset: 1.0}
        """, "{sq: 1.0, sq2: 0.5}")
    prepared = prepare(path)
    assert prepared.spec.order.index("a") < prepared.spec.order.index("sq")
    modules = build_modules(prepared, make_context(prepared, None, torch.device("cpu")))
    assert set(modules) == {"a", "sq", "sq2"}  # the call node owns no module
    timer = NodeTimer()
    timer.active = True
    ex = Executor(prepared.spec, modules, [timer])
    images = torch.randn(3, 3, 8, 8)
    losses = ex({"images": images})
    v = images.mean(dim=(-1, -2))
    assert torch.allclose(losses[("sq", "loss")], 2 * v.pow(2).mean())
    assert torch.allclose(losses[("sq2", "loss")], (v + 1).pow(2).mean())
    total = ex.total_loss(losses)
    assert torch.allclose(total, 2 * v.pow(2).mean() + 0.5 * (v + 1).pow(2).mean())
    total.backward()
    assert modules["a"].scale.grad is not None
    assert timer.calls == {"a": 1, "a2": 1, "sq": 1, "sq2": 1}
    assert set(timer.pop_ms_per_call()) == {"a", "a2", "sq", "sq2"} and timer.calls == {}


def test_node_hooks_see_every_call_in_order_with_its_inputs_and_outputs(tmp_path):
    path = write(tmp_path, """\
        a:  {type: test.pool, images: batch.images}
        a2: {call: a, images: batch.images}
        sq: {type: test.square, x: [a.vec, a2.vec]}
        """, "{sq: 1.0}")
    prepared = prepare(path)
    seen = []

    class Record(NodeHook):
        def before_node(self, node, inputs):
            seen.append(("before", node.name, sorted(inputs)))

        def after_node(self, node, outputs, seconds):
            seen.append(("after", node.name, sorted(outputs)))
            assert seconds >= 0

    modules = build_modules(prepared, make_context(prepared, None, torch.device("cpu")))
    Executor(prepared.spec, modules, [Record()])({"images": torch.randn(2, 3, 8, 8)})
    assert seen == [("before", "a", ["images"]), ("after", "a", ["vec"]), ("before", "a2", ["images"]),
                    ("after", "a2", ["vec"]), ("before", "sq", ["x"]), ("after", "sq", ["loss"])]

    idle = NodeTimer()  # sampled hooks record nothing while inactive
    Executor(prepared.spec, modules, [idle])({"images": torch.randn(2, 3, 8, 8)})
    assert idle.calls == {}


def test_failure_names_node_component_and_shapes(tmp_path):
    path = write(tmp_path, """\
        a:  {type: test.pool, images: batch.images, fail: true}
        sq: {type: test.square, x: [a.vec]}
        """)
    prepared = prepare(path)
    ex = Executor(prepared.spec, build_modules(prepared, make_context(prepared, None, torch.device("cpu"))))
    with pytest.raises(NodeError) as info:
        ex({"images": torch.zeros(2, 3, 8, 8)})
    message = str(info.value)
    assert "'a'" in message and "test.pool" in message and "boom" in message
    assert "images=float32[2, 3, 8, 8]" in message


def test_intermediate_values_are_released(tmp_path):
    path = write(tmp_path, """\
        a:  {type: test.pool, images: batch.images}
        sq: {type: test.square, x: [a.vec]}
        """)
    prepared = prepare(path)
    ex = Executor(prepared.spec, build_modules(prepared, make_context(prepared, None, torch.device("cpu"))))
    released = {ref for planned in ex.plan for ref in planned.release}
    assert ("a", "vec") in released and ("batch", "images") in released
    assert ("sq", "loss") not in released  # the objective keeps its losses
