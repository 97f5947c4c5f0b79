"""Property-based tests (hypothesis).

- Maskers: for any valid ratio and grid, a mask of the right shape, dtype and
  count (mask.random: exactly N - int(N * (1 - ratio)) per image;
  mask.random_coarse: ceil(ratio * cells) whole cells; mask.block: never more
  than its budget).
- Graph validation: random wirings of a few components are either accepted
  (and then their dry run passes, or fails with a PipelineError naming a node)
  or rejected with problems that each carry a YAML path and a message; nothing
  else is ever raised.
"""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from graphssl import registry
from graphssl.component import BuildContext
from graphssl.errors import PipelineError

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ratios = st.floats(min_value=0.01, max_value=0.99, allow_nan=False)
leads = st.lists(st.integers(1, 3), min_size=1, max_size=2)


def masker(name: str, **params):
    cls = registry.get(name)
    assert cls is not None, f"the built-in {name} is not registered"
    return cls(cls.Config(**params), BuildContext(image_size=32, channels=3))


@PROPERTY
@given(ratio=ratios, gh=st.integers(1, 8), gw=st.integers(1, 8), patch=st.sampled_from([1, 2, 4]), lead=leads)
def test_random_mask_count_and_shape(ratio, gh, gw, patch, lead):
    mask = masker("mask.random", ratio=ratio, patch_size=patch)(images=torch.zeros(*lead, 3, gh * patch, gw * patch))["mask"]
    n = gh * gw
    assert mask.dtype == torch.bool and tuple(mask.shape) == (*lead, n)
    assert (mask.sum(-1) == n - int(n * (1 - ratio))).all()


@PROPERTY
@given(ratio=ratios, cells_h=st.integers(1, 4), cells_w=st.integers(1, 4), scale=st.integers(1, 3),
       patch=st.sampled_from([1, 2, 4]), lead=leads)
def test_random_coarse_mask_count_shape_and_cells(ratio, cells_h, cells_w, scale, patch, lead):
    cell = scale * patch
    m = masker("mask.random_coarse", ratio=ratio, mask_patch_size=cell, patch_size=patch)
    mask = m(images=torch.zeros(*lead, 3, cells_h * cell, cells_w * cell))["mask"]
    gh, gw = cells_h * scale, cells_w * scale
    assert mask.dtype == torch.bool and tuple(mask.shape) == (*lead, gh * gw)
    assert (mask.sum(-1) == math.ceil(ratio * cells_h * cells_w) * scale * scale).all()
    # whole cells: every scale x scale block of the token grid is all masked or all visible
    blocks = mask.reshape(-1, cells_h, scale, cells_w, scale).float()
    per_block = blocks.mean(dim=(2, 4))
    assert ((per_block == 0) | (per_block == 1)).all()


@PROPERTY
@given(ratio=ratios, gh=st.integers(2, 8), gw=st.integers(2, 8), min_patches=st.integers(1, 4), lead=leads,
       use_count=st.booleans())
def test_block_mask_shape_and_budget(ratio, gh, gw, min_patches, lead, use_count):
    n = gh * gw
    budget = max(1, int(ratio * n)) if use_count else int(ratio * n)
    budget = min(budget, n - 1)
    params = {"num_masked": budget} if use_count else {"ratio": ratio}
    m = masker("mask.block", patch_size=4, min_num_patches=min_patches, **params)
    mask = m(images=torch.zeros(*lead, 3, gh * 4, gw * 4))["mask"]
    assert mask.dtype == torch.bool and tuple(mask.shape) == (*lead, n)
    assert (mask.sum(-1) <= budget).all()


# --------------------------------------------------------------------------- random wirings

# name -> (component, parameters, input ports); tiny sizes so a dry run costs little
POOL = {
    "crop": ("augment.crop", {}, ["images"]),
    "mask": ("mask.random", {"ratio": 0.5, "patch_size": 8}, ["images"]),
    "enc": ("encoder.vit", {"patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2}, ["images", "mask"]),
    "enc_drop": ("encoder.vit", {"patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2, "mask_mode": "drop"},
                 ["images", "mask"]),
    "head": ("head.pixels", {"in_dim": 16, "patch_size": 8}, ["tokens"]),
    "feat": ("head.features", {"in_dim": 16, "out_dim": 16}, ["tokens"]),
    "pix": ("target.patch_pixels", {"patch_size": 8, "norm_pix": False}, ["images"]),
    "l1": ("loss.l1_masked", {}, ["pred", "target", "mask"]),
    "mse": ("loss.mse_masked", {}, ["pred", "target", "mask"]),
    "cos": ("loss.cosine_masked", {}, ["pred", "target", "mask"]),
}
PORTS = ["images", "mask", "cls", "patches", "pred", "target", "tokens", "loss"]


def typed_refs(names: list[str], port_types: tuple) -> list[str]:
    """References among ``names`` (and batch.images) whose output type an input of ``port_types`` accepts."""
    from graphssl.graph import SOURCE_OUTPUTS

    refs = [f"batch.{p}" for p, out in SOURCE_OUTPUTS.items() if out.type in port_types]
    for other in names:
        cls = registry.get(POOL[other][0])
        refs += [f"{other}.{p}" for p, out in cls.outputs.items() if out.type in port_types]
    return refs


MUTATIONS = ["wrong_ref", "garbage", "drop_input", "self_ref", "objective_extra", "objective_drop", "unknown_param"]


@st.composite
def wirings(draw):
    """A well-typed random wiring, then up to two mutations that may break it (so both branches are exercised)."""
    names = draw(st.lists(st.sampled_from(sorted(POOL)), min_size=1, max_size=5, unique=True))
    if draw(st.booleans()):  # add suppliers for the inputs nothing feeds yet, so that most wirings are complete
        for _ in range(len(POOL)):
            missing = [decl.types for n in names for port, decl in registry.get(POOL[n][0]).inputs.items()
                       if port in POOL[n][2] and not decl.optional and not typed_refs([m for m in names if m != n], decl.types)]
            if not missing:
                break
            suppliers = [s for s in sorted(POOL) if s not in names
                         and any(out.type in missing[0] for out in registry.get(POOL[s][0]).outputs.values())]
            if not suppliers:
                break
            names.append(draw(st.sampled_from(suppliers)))
    nodes = {}
    for name in names:
        kind, params, inputs = POOL[name]
        body = {"type": kind, **params}
        for port in inputs:
            decl = registry.get(kind).inputs[port]
            typed = typed_refs([n for n in names if n != name], decl.types)
            if typed and (not decl.optional or draw(st.booleans())):
                body[port] = draw(st.sampled_from(typed))
            elif not typed and not decl.optional:  # nothing fits: a wrong reference
                body[port] = f"{draw(st.sampled_from(names))}.{draw(st.sampled_from(PORTS))}"
        nodes[name] = body
    losses = [n for n in names if POOL[n][0].startswith("loss.")]
    objective = {n: 1.0 for n in losses} or {names[0]: 1.0}
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        name = draw(st.sampled_from(names))
        inputs = POOL[name][2]
        port = draw(st.sampled_from(inputs))
        if mutation == "wrong_ref":
            nodes[name][port] = f"{draw(st.sampled_from(names))}.{draw(st.sampled_from(PORTS))}"
        elif mutation == "garbage":
            nodes[name][port] = draw(st.sampled_from(["nowhere.x", "images", 3, ["batch.images"], None, "a.b.c"]))
        elif mutation == "drop_input":
            nodes[name].pop(port, None)
        elif mutation == "self_ref":
            nodes[name][port] = f"{name}.{draw(st.sampled_from(list(registry.get(POOL[name][0]).outputs)))}"
        elif mutation == "objective_extra":
            objective[name] = 1.0
        elif mutation == "objective_drop" and objective:
            objective.pop(draw(st.sampled_from(sorted(objective))))
        elif mutation == "unknown_param":
            nodes[name]["colour"] = 1
    return nodes, objective


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """A tiny image folder (8 train, 4 test images, two classes): a dry run reads it in milliseconds."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 4), ("test", 2)):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@PROPERTY
@given(wiring=wirings())
def test_random_wirings_are_accepted_and_run_or_rejected_with_messages(wiring, image_root, tmp_path_factory):
    from graphssl.build import dry_run, prepare

    nodes, objective = wiring
    text = yaml.safe_dump({
        "name": "random", "device": "cpu",
        "data": {"dataset": "image_folder", "root": str(image_root), "image_size": 32, "channels": 3, "batch_size": 4},
        "train": {"steps": 2, "lr": 1.0e-3},
        "nodes": nodes, "objective": objective,
    }, sort_keys=False)
    path = tmp_path_factory.mktemp("wiring") / "p.yaml"
    path.write_text(text)
    try:
        prepared = prepare(path)
    except PipelineError as e:
        event("rejected by validation")
        assert e.problems
        for p in e.problems:
            assert p.message and p.path.split(".")[0] in ("nodes", "objective"), p.format()
            assert p.line is not None, p.format()  # every path here is in the file
        return
    assert prepared.spec.objective  # accepted: something to train
    try:
        shapes = dry_run(prepared, torch.device("cpu"))
    except PipelineError as e:  # a shape problem only a real batch reveals: named by node
        event("rejected by the dry run")
        assert e.problems and all(p.path.startswith(("nodes.", "objective")) for p in e.problems), e.format()
        return
    event("accepted, dry run passed")
    assert set(shapes) == set(prepared.spec.order)
