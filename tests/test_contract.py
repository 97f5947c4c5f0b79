"""The registry's contract, for every built-in component (timm's pattern: one loop over the registry).

- its registry name's family (``mask`` of ``mask.block``) is the folder it lives in;
- its defaults validate, or what it needs is required and documented;
- it has a docstring, and every port has a doc;
- a step component built with tiny parameters, given every input at tiny sizes
  made from its port types, returns every declared output, of the declared
  types, with named dims that agree (graphssl.shapes);
- an owner provides frozen copies of the modules it names; an evaluator returns
  exactly the metric names it declares.

TINY gives the few parameters and inputs a component needs to be small or to
run at all: the fields it requires, sizes that fit 16 px images, and inputs
whose values must agree with each other (a mask and the visible tokens).
"""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from graphssl import registry
from graphssl.component import BuildContext, Evaluator, In, Owner, role_of
from graphssl.data import ImageSet
from graphssl.ports import LOGITS, PROBS
from graphssl.shapes import check_node
from support.tiny import example_value

BUILTINS = registry.builtin_names()
B = 2  # images per batch
SIZES = {"C": 3, "H": 16, "W": 16, "Hs": 16, "Ws": 16, "N": 16, "Nv": 4, "D": 8, "F": 8, "K": 8, "Kp": 8, "P": 48}
VIT = {"patch_size": 4, "depth": 1, "embed_dim": 8, "num_heads": 2}
VQVAE = {"patch_size": 4, "num_codes": 8, "code_dim": 4, "hidden_dim": 8, "num_res_blocks": 1}


def build(name: str, params: dict, **ctx) -> nn.Module:
    cls = registry.get(name)
    return cls(cls.Config(**params), BuildContext(image_size=16, channels=3, total_steps=4, **ctx))


def visible_tokens_and_mask(g: torch.Generator) -> dict[str, torch.Tensor]:
    """An MAE-style mask (12 of 16 tokens masked in every image) and the 4 visible tokens it leaves."""
    mask = torch.zeros(B, SIZES["N"], dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(SIZES["N"], generator=g)[:12]] = True
    return {"cls": torch.randn(B, 8, generator=g), "patches": torch.randn(B, SIZES["Nv"], 8, generator=g), "mask": mask}


def dino_views(g: torch.Generator) -> dict[str, object]:
    """Two global and three local student views; the teacher's distributions over the two global ones."""
    return {"student": [example_value(LOGITS, (2, B), SIZES, generator=g), example_value(LOGITS, (3, B), SIZES, generator=g)],
            "teacher": example_value(PROBS, (2, B), SIZES, generator=g).softmax(-1)}


TINY = {  # name -> params, and optionally: ctx (what the BuildContext needs), inputs (values that must agree), sizes
    "augment.multicrop": {"params": {"n_local": 2}},
    "encoder.vit": {"params": VIT, "sizes": {"Nv": 16}},  # mask_mode replace: every token comes out
    "head.dino": {"params": {"in_dim": 8, "out_dim": 8, "hidden_dim": 16, "bottleneck_dim": 8}},
    "head.features": {"params": {"in_dim": 8, "out_dim": 8}},
    "head.mae_decoder": {"params": {"embed_dim": 8, "depth": 1, "num_heads": 2, "patch_size": 4, "in_dim": 8},
                         "inputs": visible_tokens_and_mask},
    "head.pixels": {"params": {"in_dim": 8, "patch_size": 4}},
    "head.vocab": {"params": {"in_dim": 8, "num_codes": 8}},
    "loss.dino": {"params": {}, "inputs": dino_views},
    "mask.block": {"params": {"ratio": 0.4, "patch_size": 4, "min_num_patches": 2}},
    "mask.random": {"params": {"patch_size": 4}},
    "mask.random_coarse": {"params": {"patch_size": 4, "mask_patch_size": 8}},
    "target.patch_pixels": {"params": {"patch_size": 4}},
    "target.features": {"params": {"source": "first.encoder", "patch_size": 4},
                        "ctx": lambda: {"load_module": lambda source: build("encoder.vit", VIT)}},
    "target.tokenizer": {"params": {"source": "first.tokenizer", "patch_size": 4},
                         "ctx": lambda: {"load_module": lambda source: build("tokenizer.vqvae", VQVAE)}},
    "tokenizer.vqvae": {"params": VQVAE},
    "teacher.ema": {"params": {"of": ["student"]}, "ctx": lambda: {"modules": {"student": nn.Linear(4, 4)}}},
    "eval.knn": {"params": {"encoder": "encoder"}},
    "eval.linear": {"params": {"encoder": "encoder", "epochs": 2}},
}


def tiny(name: str) -> nn.Module:
    entry = TINY.get(name, {})
    return build(name, entry.get("params", {}), **entry.get("ctx", dict)())


def tiny_inputs(name: str, g: torch.Generator) -> dict[str, object]:
    """Every input port, optional ones too: the table's values, else random values of the port's type."""
    cls = registry.get(name)
    given = TINY.get(name, {}).get("inputs", lambda g: {})(g)
    inputs = {}
    for port, decl in cls.inputs.items():
        if port in given:
            inputs[port] = given[port]
            continue
        value = example_value(decl.types[0], (B,), SIZES, decl.dims, generator=g)
        inputs[port] = [value] if decl.many else value
    return inputs


def test_the_table_names_only_built_in_components():
    assert len(BUILTINS) >= 27
    assert set(TINY) <= set(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_family_is_the_folder(name):
    module = registry.get(name).__module__.split(".")
    assert module[:2] == ["graphssl", "components"] and len(module) == 4, module
    assert name.split(".")[0] == module[2], f"{name} lives in components/{module[2]}/"


@pytest.mark.parametrize("name", BUILTINS)
def test_defaults_validate_or_what_is_needed_is_required_and_documented(name):
    cls = registry.get(name)
    required = [f for f, info in cls.Config.model_fields.items() if info.is_required()]
    for f in required:
        assert cls.Config.model_fields[f].description, f"{name}.{f} is required but has no description"
    try:
        cls.Config()
    except ValidationError as e:
        missing = {str(err["loc"][0]) for err in e.errors() if err["type"] == "missing"}
        assert missing == set(required), e
        if not missing:  # a model validator: its message says which parameters to give
            assert any(f in str(e) for f in cls.Config.model_fields), e
        assert name in TINY, f"{name} needs parameters: give them in TINY"
    else:
        assert not required
    cls.Config(**TINY.get(name, {}).get("params", {}))  # the table's parameters are valid


@pytest.mark.parametrize("name", BUILTINS)
def test_docstring_and_every_port_documented(name):
    cls = registry.get(name)
    assert (cls.__doc__ or "").strip(), f"{name} has no docstring"
    for port, decl in [*cls.inputs.items(), *cls.outputs.items()]:
        assert decl.doc.strip(), f"{name}.{port} has no doc"
    if role_of(cls) != "step":
        assert not cls.inputs and not cls.outputs, f"an {role_of(cls)} has no ports"
    else:
        assert cls.outputs, f"{name} has no outputs"


STEPS = [n for n in BUILTINS if role_of(registry.get(n)) == "step"]


@pytest.mark.parametrize("name", STEPS)
def test_tiny_run_gives_every_declared_output_of_its_type(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cls = registry.get(name)
    module = tiny(name).train()
    inputs = tiny_inputs(name, g)
    assert check_node(name, cls, inputs) == [], "the test's own inputs do not fit the ports"
    outputs = module(**inputs)
    assert set(outputs) == set(cls.outputs), f"{name} returned {sorted(outputs)} for every input given"
    # SIZES are what the tiny parameters make (P = 4 * 4 * 3, K = 8 codes or prototypes, ...)
    assert check_node(name, cls, inputs, outputs, sizes={**SIZES, **TINY.get(name, {}).get("sizes", {})}) == []


def test_the_check_fails_a_component_that_breaks_its_ports():
    """The check the tiny runs pass can fail: a mask over fewer tokens than the logits."""
    cls = registry.get("loss.cross_entropy_masked")
    g = torch.Generator().manual_seed(0)
    inputs = tiny_inputs("loss.cross_entropy_masked", g)
    inputs["mask"] = inputs["mask"][:, :8]
    (problem,) = check_node("loss", cls, inputs)
    assert "input 'mask': expected token_mask bool[*,N] with N=16 as in input 'logits'" in str(problem)


@pytest.mark.parametrize("name", [n for n in BUILTINS if issubclass(registry.get(n), Owner)])
def test_owner_provides_frozen_copies(name):
    cls = registry.get(name)
    owner = tiny(name)
    provided = cls.provides(owner.config)
    assert provided == TINY[name]["params"]["of"]
    for node in provided:
        copy = owner.copy_of(node)
        assert isinstance(copy, nn.Module) and not any(p.requires_grad for p in copy.parameters())


class TinyData:
    """Labelled 16 px splits, as Data.eval_set returns them."""

    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(0)
        self.sets = {split: ImageSet(torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8),
                                     torch.arange(n) % 2) for split in ("train", "test")}

    def eval_set(self, split: str, limit: int) -> ImageSet:
        s = self.sets[split]
        return ImageSet(s.images[:limit], s.labels[:limit])

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255


@pytest.mark.parametrize("name", [n for n in BUILTINS if issubclass(registry.get(n), Evaluator)])
def test_evaluator_returns_the_metrics_it_declares(name):
    cls = registry.get(name)
    evaluator = tiny(name)
    encoder = build("encoder.vit", VIT)
    asked = []

    def resolve(ref: str) -> nn.Module:
        asked.append(ref)
        return encoder

    metrics = evaluator.evaluate(resolve, TinyData(), limit=20)
    assert set(metrics) == set(cls.metric_names(evaluator.config)) and asked == ["encoder"]
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert cls.every(cls.Config(**{**TINY[name]["params"], "every": 5})) == 5
    assert isinstance(cls.inputs, dict) and not any(isinstance(d, In) for d in cls.inputs.values())
