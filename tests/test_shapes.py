"""Port types checked on real tensors (graphssl.shapes) and in the dry run: named dims bound across a node's ports."""
from __future__ import annotations

import textwrap

import pytest
import torch

from graphssl import registry
from graphssl.build import dry_run, prepare
from graphssl.component import Component, In, Out
from graphssl.errors import PipelineError
from graphssl.executor import Executor
from graphssl.ports import IMAGES, LOSS, PATCHES, TOKEN_MASK, TOKENS, VECTOR
from graphssl.shapes import PortChecks, PortTypeError, check_node


def loss_cls():
    return registry.get("loss.mse_masked")


def test_named_dims_are_bound_across_a_nodes_inputs():
    ok = check_node("loss", loss_cls(), {"pred": torch.zeros(2, 16, 48), "target": torch.zeros(2, 16, 48),
                                         "mask": torch.zeros(2, 16, dtype=torch.bool)})
    assert ok == []
    (p,) = check_node("loss", loss_cls(), {"pred": torch.zeros(2, 4, 48), "target": torch.zeros(2, 16, 48),
                                           "mask": torch.zeros(2, 4, dtype=torch.bool)})
    assert p.path == "nodes.loss.target"
    assert str(p) == ("node 'loss' (loss.mse_masked) input 'target': expected patches float[*,N,P] with N=4 "
                      "as in input 'pred', got float32[2, 16, 48]")
    (p,) = check_node("loss", loss_cls(), {"pred": torch.zeros(2, 4, 48), "target": torch.zeros(2, 4, 12),
                                           "mask": torch.zeros(2, 4, dtype=torch.bool)})
    assert "with P=48 as in input 'pred'" in str(p)


def test_leading_dims_are_bound_unless_a_port_frees_them():
    (p,) = check_node("loss", loss_cls(), {"pred": torch.zeros(2, 4, 48), "target": torch.zeros(3, 4, 48),
                                           "mask": torch.zeros(2, 4, dtype=torch.bool)})
    assert "with * = [2] as in input 'pred'" in str(p)
    dino = registry.get("loss.dino")  # student views [V_i,B,K] and the teacher's [Vt,B,K]: leading dims free, K bound
    views = [torch.zeros(2, 3, 8), torch.zeros(6, 3, 8)]
    assert check_node("loss", dino, {"student": views, "teacher": torch.zeros(2, 3, 8)}) == []
    (p,) = check_node("loss", dino, {"student": [views[0], torch.zeros(6, 3, 5)], "teacher": torch.zeros(2, 3, 8)})
    assert p.port == "student[1]" and "with K=8 as in input 'student[0]'" in str(p)


def test_renamed_dims_are_not_bound():
    encoder_out = {"cls": torch.zeros(2, 8), "patches": torch.zeros(2, 4, 8)}  # drop mode: 4 of 16 tokens
    inputs = {"images": torch.zeros(2, 3, 16, 16), "mask": torch.zeros(2, 16, dtype=torch.bool)}
    assert check_node("encoder", registry.get("encoder.vit"), inputs, encoder_out) == []
    encoder_out["cls"] = torch.zeros(2, 6)
    (p,) = check_node("encoder", registry.get("encoder.vit"), inputs, encoder_out)
    assert p.output and p.path == "nodes.encoder" and "output 'patches'" in str(p) and "D=6 as in output 'cls'" in str(p)


def test_dtype_rank_and_undeclared_outputs():
    cls = registry.get("mask.random")
    images = {"images": torch.zeros(2, 3, 16, 16)}
    (p,) = check_node("mask", cls, images, {"mask": torch.zeros(2, 16)})
    assert str(p) == "node 'mask' (mask.random) output 'mask': expected token_mask bool[*,N], got float32[2, 16]"
    (p,) = check_node("mask", cls, {"images": torch.zeros(3, 16, 16)})
    assert "expected images float[*,C,H,W], got float32[3, 16, 16]" in str(p)
    (p,) = check_node("mask", cls, {"images": torch.zeros(1, 2, 2, 3, 16, 16)})
    assert "with * = [B] or [V,B]" in str(p)
    (p,) = check_node("mask", cls, images, {"mask": torch.zeros(2, 16, dtype=torch.bool), "ratio": torch.zeros(())})
    assert "output 'ratio': expected one of its declared outputs (mask), got float32[]" in str(p)
    (p,) = check_node("loss", loss_cls(), {}, {"loss": torch.zeros(2)})
    assert "expected loss float[], got float32[2]" in str(p)


class Pool(Component):
    """images -> one vector per image (the mean colour), times a learnable scale."""

    inputs = {"images": In(IMAGES, "images")}
    outputs = {"vec": Out(VECTOR, "pooled")}

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, images):
        return {"vec": images.mean(dim=(-1, -2)) * self.scale}


class RowPool(Pool):
    """Declares one vector per image but gives one per image row: [B,H,W] fits [*,D] only with * = [B,H]."""

    def forward(self, images):
        return {"vec": images.mean(dim=1) * self.scale}


class Square(Component):
    """Mean square."""

    inputs = {"x": In(VECTOR, "vectors")}
    outputs = {"loss": Out(LOSS, "mean square")}

    def forward(self, x):
        return {"loss": x.pow(2).mean()}


def write(tmp_path, nodes: str):
    path = tmp_path / "p.yaml"
    body = textwrap.indent(textwrap.dedent(nodes), "  ")
    path.write_text(f"name: tiny\ndevice: cpu\ntrain: {{steps: 1, lr: 0.1}}\ndata: {{image_size: 8, batch_size: 2, limit: 4}}\n"
                    f"nodes:\n{body}objective: {{sq: 1.0}}\n")
    return path


def test_the_dry_run_names_the_node_and_port_whose_output_breaks_its_type(tmp_path):
    with registry.scope({"test.rows": RowPool, "test.square": Square}):
        path = write(tmp_path, """\
            pool: {type: test.rows, images: batch.images}
            sq:   {type: test.square, x: pool.vec}
            """)
        prepared = prepare(path)  # the edge types agree
        with pytest.raises(PipelineError) as info:
            dry_run(prepared, torch.device("cpu"))
    (p,) = info.value.problems
    assert p.path == "nodes.pool" and p.line == 6
    assert p.message == ("dry run: node 'pool' (test.rows) output 'vec': expected vector float[*,D] "
                         "with * = [2] as in input 'images', got float32[2, 8, 8]")


def test_port_checks_hook_runs_around_every_node(tmp_path):
    with registry.scope({"test.pool": Pool, "test.square": Square}):
        prepared = prepare(write(tmp_path, """\
            pool: {type: test.pool, images: batch.images}
            sq:   {type: test.square, x: pool.vec}
            """))
        from graphssl.build import build_modules, make_context

        modules = build_modules(prepared, make_context(prepared, None, torch.device("cpu")))
        executor = Executor(prepared.spec, modules, hooks=[PortChecks()])
        executor({"images": torch.zeros(2, 3, 8, 8)})
        with pytest.raises(PortTypeError, match=r"node 'pool' \(test.pool\) input 'images': expected images float"):
            executor({"images": torch.zeros(2, 8, 8, dtype=torch.long)})


def test_port_dims_must_name_each_trailing_dim():
    with pytest.raises(ValueError, match="must name each trailing dim"):
        In(TOKENS, "tokens", dims=("N",))
    with pytest.raises(ValueError, match="must name each trailing dim"):
        Out(PATCHES, "patches", dims=("N", "P", "Q"))
    assert In(TOKEN_MASK, "mask", dims=("M",)).dims == ("M",)
