"""Validation before anything runs: load_yaml, the section schema and build_graph, through prepare().

Each test writes a small pipeline to tmp_path and checks the problems: their
YAML paths, line numbers and messages (both ends of a mismatched edge, the
members of a cycle, did-you-mean suggestions), that all of a file's errors
come together, warnings for dead nodes, and command-line overrides.
"""
from __future__ import annotations

import pytest

from graphssl import registry
from graphssl.loading import load_yaml, yaml_lines
from graphssl.errors import PipelineError, Problem
from graphssl.build import prepare

BASE = """\
name: tiny
device: cpu
data: {dataset: fashion_mnist, image_size: 32, channels: 3, batch_size: 4, limit: 8}
train: {steps: 2, lr: 1.0e-3}
nodes:
  view:    {type: augment.crop, images: batch.images}
  mask:    {type: mask.random, images: view.images, ratio: 0.75, patch_size: 8}
  encoder: {type: encoder.vit, patch_size: 8, depth: 1, embed_dim: 64, num_heads: 2, pos_embed: sincos,
            mask_mode: drop, images: view.images, mask: mask.mask}
  decoder: {type: head.mae_decoder, embed_dim: 32, depth: 1, num_heads: 2, patch_size: 8, in_dim: 64,
            cls: encoder.cls, patches: encoder.patches, mask: mask.mask}
  target:  {type: target.patch_pixels, images: view.images, patch_size: 8}
  loss:    {type: loss.mse_masked, pred: decoder.pred, target: target.target, mask: mask.mask}
objective: {loss: 1.0}
"""


def edit(*pairs: tuple[str, str], text: str = BASE) -> str:
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def write(tmp_path, text: str, name: str = "p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path, text: str, overrides: list[str] = ()) -> list[Problem]:
    with pytest.raises(PipelineError) as info:
        prepare(write(tmp_path, text), list(overrides))
    found = info.value.problems
    assert found, "a PipelineError without problems"
    return found


def one(found: list[Problem], path: str) -> Problem:
    at = [p for p in found if p.path == path]
    assert len(at) == 1, f"expected one problem at {path}, got: {[p.format() for p in found]}"
    return at[0]


def line_containing(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


def requires(name: str) -> None:
    assert registry.get(name) is not None, f"the built-in {name} is not registered"


# --------------------------------------------------------------------------- valid files


def test_base_pipeline_is_valid(tmp_path):
    prepared = prepare(write(tmp_path, BASE))
    assert prepared.warnings == []
    order = prepared.spec.order
    assert set(order) == {"view", "mask", "encoder", "decoder", "target", "loss"}
    assert order.index("view") < order.index("mask") < order.index("encoder") < order.index("decoder") < order.index("loss")
    assert prepared.spec.objective == {("loss", "loss"): 1.0}


def test_dead_node_is_a_warning_not_an_error(tmp_path):
    text = edit(("objective:", "  extra:   {type: target.patch_pixels, images: view.images, patch_size: 8, norm_pix: false}\nobjective:"))
    prepared = prepare(write(tmp_path, text))
    assert [w.path for w in prepared.warnings] == ["nodes.extra"]
    warning = prepared.warnings[0]
    assert warning.warning and warning.line == line_containing(text, "extra:")
    assert "no node or objective uses this node's outputs" in warning.message
    assert ": warning: nodes.extra:" in warning.format("p.yaml")
    # warnings never make a pipeline invalid
    assert PipelineError([warning, Problem("x", "bad")]).problems == [Problem("x", "bad")]


# --------------------------------------------------------------------------- each kind of error


def test_port_type_mismatch_names_both_ends(tmp_path):
    text = edit(("pred: decoder.pred", "pred: encoder.patches"))
    p = one(problems(tmp_path, text), "nodes.loss.pred")
    assert p.message == ("port type mismatch: encoder.patches gives tokens float[*,N,D], "
                         "but loss.pred expects patches float[*,N,P]")
    assert p.line == line_containing(text, "loss:")


def test_port_rank_mismatch_says_rank(tmp_path):
    text = edit(("cls: encoder.cls", "cls: encoder.patches"))
    p = one(problems(tmp_path, text), "nodes.decoder.cls")
    assert p.message.startswith("port rank mismatch: encoder.patches gives tokens float[*,N,D] (2 trailing dims), "
                                "but decoder.cls expects vector float[*,D] (1 trailing dim)")
    # the continuation line of the flow mapping, where cls: is written
    assert p.line == line_containing(text, "cls: encoder.patches")


def test_dtype_mismatch_is_a_type_mismatch(tmp_path):
    text = edit(("target: target.target, mask: mask.mask}", "target: target.target, mask: view.images}"))
    p = one(problems(tmp_path, text), "nodes.loss.mask")
    assert p.message.startswith("port type mismatch: view.images gives images float[*,C,H,W], but loss.mask expects token_mask")


def test_cycles_list_their_members_in_file_order(tmp_path):
    text = edit(("  view:    {type: augment.crop, images: batch.images}\n",
                 "  view:    {type: augment.crop, images: batch.images}\n"
                 "  a:       {type: augment.crop, images: c.images}\n"
                 "  b:       {type: augment.crop, images: a.images}\n"
                 "  c:       {type: augment.crop, images: b.images}\n"
                 "  d:       {type: augment.crop, images: d.images}\n"))
    found = [p for p in problems(tmp_path, text) if "cycle" in p.message]
    assert [(p.path, p.message) for p in found] == [
        ("nodes.a", "cycle in the graph: a -> b -> c -> a"),
        ("nodes.d", "cycle in the graph: d -> d"),
    ]
    assert found[0].line == line_containing(text, "  a: ")


def test_missing_required_input_at_the_input_path(tmp_path):
    text = edit(("target: target.target, mask: mask.mask}", "target: target.target}"))
    p = one(problems(tmp_path, text), "nodes.loss.mask")
    assert p.message.startswith("missing required input 'mask' (token_mask bool[*,N])")
    assert p.line == line_containing(text, "  loss:")


@pytest.mark.parametrize("old,new,path,message", [
    ("type: mask.random", "type: mask.randm", "nodes.mask.type",
     "unknown component 'mask.randm' (did you mean \"mask.random\"?)"),
    ("ratio: 0.75", "ratoi: 0.75", "nodes.mask.ratoi",
     "unknown parameter or input of mask.random (did you mean \"ratio\"?)"),
    ("{type: mask.random, images: view.images", "{type: mask.random, images: veiw.images", "nodes.mask.images",
     "unknown node 'veiw' (did you mean \"view\"?)"),
    ("target: target.target, mask: mask.mask}", "target: target.target, mask: mask.mak}", "nodes.loss.mask",
     "node 'mask' has no output 'mak' (it has: mask) (did you mean \"mask\"?)"),
    ("objective: {loss: 1.0}", "objective: {los: 1.0}", "objective.los", "unknown node 'los' (did you mean \"loss\"?)"),
    ("batch_size: 4", "batch_sise: 4", "data.batch_sise", "unknown key (did you mean \"batch_size\"?)"),
    ("train: {", "trian: {", "trian", "unknown key (did you mean \"train\"?)"),
    ("pos_embed: sincos", "pos_embed: sincoss", "nodes.encoder.pos_embed",
     "Input should be 'learned' or 'sincos' (got 'sincoss')"),
])
def test_messages_and_suggestions(tmp_path, old, new, path, message):
    text = edit((old, new))
    p = one(problems(tmp_path, text), path)
    assert p.message == message
    assert p.line == line_containing(text, new)


def test_unknown_module_of_an_evaluator(tmp_path):
    text = edit(("objective:", "  knn:     {type: eval.knn, encoder: encodr, k: 5}\nobjective:"))
    p = one(problems(tmp_path, text), "nodes.knn.encoder")
    assert p.message == "unknown module 'encodr' (did you mean \"encoder\"?)"


def test_call_node_errors(tmp_path):
    text = edit(("objective:", "  enc2:    {call: encodr, images: view.images}\n"
                               "  enc3:    {call: encoder, images: view.images, depth: 2}\n"
                               "  enc4:    {call: loss}\n"
                               "objective:"))
    found = problems(tmp_path, text)
    assert one(found, "nodes.enc2.call").message == "cannot call 'encodr': no such node or module copy (did you mean \"encoder\"?)"
    assert "a call node takes only inputs of encoder.vit (images, mask)" in one(found, "nodes.enc3.depth").message
    assert one(found, "nodes.enc4.pred").message.startswith("missing required input 'pred'")


def test_a_call_node_calls_a_module_not_another_call_node(tmp_path):
    # whichever comes first in the file: both are reported, and nothing that reads them is reported again
    text = edit(("objective:", "  enc3:    {call: enc2, images: view.images}\n"
                               "  enc2:    {call: encoder, images: view.images}\n"
                               "  enc4:    {call: enc4, images: view.images}\n"
                               "  head2:   {type: head.pixels, in_dim: 64, patch_size: 8, tokens: enc3.patches}\n"
                               "objective:"))
    found = problems(tmp_path, text)
    assert one(found, "nodes.enc3.call").message == "cannot call 'enc2': it is a call node itself; call 'encoder' instead"
    assert one(found, "nodes.enc4.call").message == "a call node cannot call itself"
    assert not [p for p in found if p.path.startswith("nodes.head2")]  # it reads enc3: not reported again


def test_objective_errors(tmp_path):
    text = edit(("objective: {loss: 1.0}", "objective: {loss: heavy, decoder: 1.0}"))
    found = problems(tmp_path, text)
    assert "is not a loss node" in one(found, "objective.decoder").message
    assert any(p.path == "objective.loss" for p in found)  # the weight is not a number


def test_every_error_of_a_file_comes_together(tmp_path):
    text = edit(("batch_size: 4", "batch_size: 0"), ("lr: 1.0e-3", "lr: -1"), ("type: mask.random", "type: mask.blok"),
                ("embed_dim: 32, depth: 1", "embed_dim: 32, dpeth: 1"), ("objective: {loss: 1.0}", "objective: {loss: 1.0, los: 1.0}"))
    found = problems(tmp_path, text)
    assert {p.path for p in found} == {"data.batch_size", "train.lr", "nodes.mask.type", "nodes.decoder.dpeth", "objective.los"}
    lines = yaml_lines(text)
    for p in found:  # each at the line of its own key
        assert p.line == lines[p.path], p
    # no cascade: the nodes that read the invalid mask node report nothing more
    assert not any("unknown node 'mask'" in p.message for p in found)
    report = PipelineError(found, "p.yaml").format()
    assert report.startswith("p.yaml: 5 errors\n")
    assert f"  p.yaml:{lines['nodes.mask.type']}: error: nodes.mask.type: unknown component 'mask.blok'" in report


def test_all_errors_of_one_node_come_together(tmp_path):
    text = edit(("ratio: 0.75, patch_size: 8", "ratio: 1.5, patch_size: 0, colour: red"))
    found = problems(tmp_path, text)
    assert {p.path for p in found} == {"nodes.mask.ratio", "nodes.mask.patch_size", "nodes.mask.colour"}


def test_union_values_report_only_the_branch_meant(tmp_path):
    requires("teacher.ema")
    teacher = "  teacher: {type: teacher.ema, of: [encoder], momentum: MOMENTUM}\nobjective:"
    found = problems(tmp_path, edit(("objective:", teacher.replace("MOMENTUM", "abc"))))
    assert [(p.path, p.message) for p in found] == [
        ("nodes.teacher.momentum", "Input should be a valid number, unable to parse string as a number (got 'abc')")]
    found = problems(tmp_path, edit(("objective:", teacher.replace("MOMENTUM", "{start: 0.99, ned: 1.0}"))))
    assert sorted(p.path for p in found) == ["nodes.teacher.momentum.end", "nodes.teacher.momentum.ned"]
    assert one(found, "nodes.teacher.momentum.ned").message == "unknown key (did you mean \"end\"?)"
    found = problems(tmp_path, edit(("objective:", teacher.replace("MOMENTUM", "{start: 0.99, end: 1.2}"))))
    assert one(found, "nodes.teacher.momentum").message == "the schedule end must be <= 1.0, got 1.2"


def test_owner_copy_errors(tmp_path):
    requires("teacher.ema")
    owner = "  teacher: {type: teacher.ema, of: [OF]}\n  t_enc:   {call: teacher.CALL, images: view.images}\nobjective:"
    found = problems(tmp_path, edit(("objective:", owner.replace("OF", "encodr").replace("CALL", "encoder"))))
    assert [(p.path, p.message) for p in found] == [("nodes.teacher.of", "unknown module 'encodr' (did you mean \"encoder\"?)")]
    found = problems(tmp_path, edit(("objective:", owner.replace("OF", "encoder").replace("CALL", "encodr"))))
    assert one(found, "nodes.t_enc.call").message == "'teacher' holds no copy of 'encodr' (it copies: encoder) (did you mean \"encoder\"?)"


# --------------------------------------------------------------------------- the YAML itself


def test_duplicate_keys_are_errors_with_both_lines(tmp_path):
    text = edit(("  mask:    {type: mask.random, images: view.images, ratio: 0.75, patch_size: 8}\n",
                 "  mask:\n    type: mask.random\n    images: view.images\n    ratio: 0.75\n    ratio: 0.5\n    patch_size: 8\n"),
                ("objective: {loss: 1.0}", "objective: {loss: 1.0}\ntrain: {steps: 3, lr: 1.0e-3}"))
    found = problems(tmp_path, text)
    first_ratio = line_containing(text, "ratio: 0.75")
    assert [(p.path, p.line) for p in found] == [("nodes.mask.ratio", first_ratio + 1),
                                                 ("train", line_containing(text, "train: {steps: 3"))]
    assert found[0].message.startswith(f"duplicate key 'ratio' (first at line {first_ratio})")
    assert found[1].message.startswith(f"duplicate key 'train' (first at line {line_containing(text, 'train: {steps: 2')})")
    # yaml_lines alone keeps the first occurrence and does not complain
    assert yaml_lines(text)["nodes.mask.ratio"] == first_ratio


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    text = edit(("{type: augment.crop, images: batch.images}", "{type: augment.crop, images: batch.images"))
    [p] = problems(tmp_path, text)
    line = line_containing(text, "  mask:")
    assert p.line == line and p.message.startswith(f"YAML syntax error at line {line}, column ")


@pytest.mark.parametrize("text", [
    "",
    "- a\n- b\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: [a, b]\nobjective: {a: 1}\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: {a: crop}\nobjective: {a: 1}\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: {5: {type: augment.crop, images: batch.images}}\nobjective: {5: 1}\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: {a: {type: [augment.crop]}}\nobjective: {a: 1}\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: {a: {call: {x: 1}}}\nobjective: {a: 1}\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: {a: {type: augment.crop, images: {x: 1}, 3: 4}}\nobjective: {a: x}\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: {}\nobjective: {}\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: {batch: {type: augment.crop, images: batch.images}}\nobjective: {}\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes: {a: {type: augment.crop, images: batch.images, size: .inf}}\nobjective: 3\n",
    "name: x\ntrain: {steps: 1, lr: 1.0}\nnodes:\n  a: {type: augment.crop, images: batch.images, size: 2020-01-01}\nobjective: {}\n",
])
def test_odd_files_are_rejected_with_messages(tmp_path, text):
    for p in problems(tmp_path, text):
        assert p.message and isinstance(p.path, str)


def test_unreadable_files(tmp_path):
    with pytest.raises(PipelineError, match="cannot read the pipeline file"):
        prepare(tmp_path / "missing.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01name")
    with pytest.raises(PipelineError, match="cannot read the pipeline file"):
        prepare(binary)


# --------------------------------------------------------------------------- overrides


def test_overrides_change_values(tmp_path):
    prepared = prepare(write(tmp_path, BASE), ["train.steps=7", "nodes.mask.ratio=0.5", "train.log_every=3", "eval.every=2"])
    assert prepared.cfg.train.steps == 7 and prepared.cfg.train.log_every == 3 and prepared.cfg.eval.every == 2
    assert prepared.spec.nodes["mask"].config.ratio == 0.5


def test_override_problems(tmp_path):
    found = problems(tmp_path, BASE, ["train.stpes=5", "dat.limit=4", "nodes.maks.ratio=0.5", "train.steps", "data.batch_size=2"])
    assert [(p.path, p.message) for p in found] == [
        ("train.stpes", "override of a key that does not exist (did you mean \"steps\"?)"),
        ("dat.limit", "override of a key that does not exist (did you mean \"data\"?)"),
        ("nodes.maks.ratio", "override of a key that does not exist (did you mean \"mask\"?)"),
        ("train.steps", "override 'train.steps': overrides are written key=value, e.g. train.steps=50"),
    ]


def test_override_values_are_validated_like_the_file(tmp_path):
    found = problems(tmp_path, BASE, ["nodes.mask.ratio=1.5", "nodes.mask.ratoi=0.5", "train.steps=0"])
    assert {p.path for p in found} == {"nodes.mask.ratio", "nodes.mask.ratoi", "train.steps"}
    assert one(found, "nodes.mask.ratoi").message == "unknown parameter or input of mask.random (did you mean \"ratio\"?)"


def test_interpolation_errors(tmp_path):
    text = edit(("train:", "vars: {p: 8}\ntrain:"), ("ratio: 0.75, patch_size: 8", 'ratio: 0.75, patch_size: "${vars.q}"'))
    [p] = problems(tmp_path, text)
    assert p.path == "nodes.mask.patch_size" and "vars.q" in p.message and p.line == line_containing(text, "vars.q")
    loaded = load_yaml(write(tmp_path, edit(("train:", "vars: {p: 8}\ntrain:"), ("patch_size: 8}", 'patch_size: "${vars.p}"}'))))
    assert loaded.raw["nodes"]["mask"]["patch_size"] == 8


# --------------------------------------------------------------------------- stages


STAGED = """\
name: staged
device: cpu
data: {dataset: fashion_mnist, image_size: 32, channels: 3, batch_size: 4, limit: 8}
train: {steps: 2, lr: 1.0e-3}
stages:
  first:
    nodes:
      view:    {type: augment.crop, images: batch.images}
      mask:    {type: mask.random, images: view.images, ratio: 0.75, patch_size: 8}
      encoder: {type: encoder.vit, patch_size: 8, depth: 1, embed_dim: 64, num_heads: 2, images: view.images, mask: mask.mask}
      head:    {type: head.pixels, in_dim: 64, patch_size: 8, tokens: encoder.patches}
      target:  {type: target.patch_pixels, images: view.images, patch_size: 8, norm_pix: false}
      loss:    {type: loss.l1_masked, pred: head.pred, target: target.target, mask: mask.mask}
    objective: {loss: 1.0}
  second:
    needs: [first]
    train: {steps: 3}
    nodes:
      view:    {type: augment.crop, images: batch.images}
      mask:    {type: mask.random, images: view.images, ratio: 0.75, patch_size: 8}
      encoder: {type: encoder.vit, patch_size: 8, depth: 1, embed_dim: 64, num_heads: 2, images: view.images, mask: mask.mask}
      head:    {type: head.pixels, in_dim: 64, patch_size: 8, tokens: encoder.patches}
      target:  {type: target.patch_pixels, images: view.images, patch_size: 8, norm_pix: false}
      loss:    {type: loss.l1_masked, pred: head.pred, target: target.target, mask: mask.mask}
    objective: {loss: 1.0}
"""


def test_stage_problems_carry_the_stage_path_and_line(tmp_path):
    from graphssl import plan as stages

    plan = stages.plan_pipeline(write(tmp_path, STAGED))
    assert list(plan.stages) == ["first", "second"] and plan.stages["second"].prepared.cfg.train.steps == 3
    text = STAGED.replace("needs: [first]", "needs: [frist]").replace("ratio: 0.75, patch_size: 8}", "ratoi: 0.75, patch_size: 8}")
    with pytest.raises(PipelineError) as info:
        stages.plan_pipeline(write(tmp_path, text))
    found = info.value.problems
    lines = [i for i, line in enumerate(text.splitlines(), 1) if "ratoi" in line]
    assert sorted((p.path, p.line) for p in found if "ratoi" in p.path) == [
        ("stages.first.nodes.mask.ratoi", lines[0]), ("stages.second.nodes.mask.ratoi", lines[1])]
    assert one(found, "stages.second.needs").message == "unknown stage 'frist' (did you mean \"first\"?)"
