"""Pipeline YAML: loading (OmegaConf, overrides) and the pydantic schema.

The ``nodes`` section is validated per component by :mod:`graphssl.graph`;
everything else is validated here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from graphssl.budget import Budget
from graphssl.errors import PipelineError, Problem, did_you_mean
from graphssl.schedules import Scheduled


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    """Training and evaluation images."""

    dataset: Literal["fashion_mnist", "mnist", "image_folder", "cifar10"] = "fashion_mnist"
    root: Optional[str] = Field(None, description="dataset folder; default: the Debian package's path")
    image_size: int = Field(32, ge=8, description="side of the square images the pipeline sees")
    channels: Literal[1, 3] = 3
    batch_size: int = Field(64, ge=1, description="images per step (per process)")
    limit: Optional[int] = Field(None, ge=1, description="use only the first N training images")
    normalize: Literal["dataset", "imagenet", "clip", "inception", "none"] = "dataset"


class TrainConfig(Strict):
    """Optimisation: AdamW with per-step warm-up + cosine lr, scheduled weight decay."""

    budget: Optional[Budget] = Field(None, description="instead of steps: {flops: 2e15}, {images: 1e6} or "
                                                      "{epochs: 3}; sets steps (rounded up) in the dry run")
    steps: Optional[int] = Field(None, ge=1, validate_default=True, description="training steps (or give a budget)")
    lr: float = Field(gt=0, description="base lr, before the lr_scaling rule")
    lr_scaling: Literal["none", "linear_256", "linear_512", "sqrt_1024"] = "none"
    min_lr: float = Field(0.0, ge=0)
    warmup: float = Field(0.0, ge=0, description="warm-up length: a fraction of steps if < 1, else steps")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: Scheduled = 0.05
    clip_grad: Optional[float] = Field(None, gt=0)
    clip_mode: Literal["global", "per_tensor"] = "global"
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise lr decay (DINOv2 0.9); 1 = off")
    patch_embed_lr: float = Field(1.0, gt=0, description="lr multiplier of patch embeddings (DINOv2 0.2)")
    log_every: int = Field(10, ge=1, description="steps between node metrics in MLflow and progress lines")
    flush_seconds: float = Field(10.0, ge=0, description="most seconds between metric writes to MLflow (also written "
                                                         "at checkpoints, evaluations and the end); 0: every log_every steps")
    checkpoint_every: Optional[int] = Field(None, ge=1, description="steps between resumable checkpoints (also at the end)")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast the forward pass")
    compile: bool = Field(False, description="torch.compile every module (first steps are slow)")
    fsdp: bool = Field(False, description="shard parameters with FSDP2 (fully_shard) instead of DDP, under torchrun")

    @field_validator("steps")
    @classmethod
    def _steps_or_budget(cls, steps: Optional[int], info: ValidationInfo) -> Optional[int]:
        if "budget" not in info.data:  # the budget itself is invalid: its error says so
            return steps
        if steps is not None and info.data["budget"] is not None:
            raise ValueError(f"train.steps and train.budget are both set (got steps {steps} and a budget); a budget sets "
                             "the steps: remove one (on the command line: train.steps=null)")
        if steps is None and info.data["budget"] is None:
            raise ValueError("give train.steps or train.budget ({flops: ...}, {images: ...} or {epochs: ...}); got neither")
        return steps


class EvalConfig(Strict):
    every: Optional[int] = Field(None, ge=1, description="run evaluators every N steps (and always at the end)")
    limit: int = Field(2000, ge=10, description="images per evaluation set (bank and queries)")


class PipelineConfig(Strict):
    name: str
    description: str = ""
    seed: int = 0
    deterministic: bool = Field(False, description="torch deterministic algorithms: bit-identical reruns")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    vars: dict[str, Any] = Field(default_factory=dict, description="free values for ${vars.x} interpolation")
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    nodes: dict[str, dict[str, Any]]
    objective: dict[str, float] = Field(description="loss node -> weight; the training loss is the weighted sum")


class StageConfig(Strict):
    """One stage of a multi-stage pipeline; data/train/eval are merged over the pipeline's."""

    description: str = ""
    needs: list[str] = Field(default_factory=list, description="stages whose trained modules this stage loads")
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Any]]
    objective: dict[str, float]


class StagedPipelineConfig(Strict):
    """A pipeline of stages that form a DAG (BEiT: tokenizer, then BEiT; EVA: teacher, then student)."""

    name: str
    description: str = ""
    seed: int = 0
    deterministic: bool = Field(False, description="torch deterministic algorithms: bit-identical reruns")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    vars: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageConfig]


SECTION_MODELS: dict[str, type[BaseModel]] = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def yaml_lines(text: str, duplicates: list[Problem] | None = None) -> dict[str, int]:
    """Map dotted YAML paths to 1-based line numbers (for error messages).

    A key repeated in one mapping (which PyYAML silently resolves to the last
    value) is appended to ``duplicates`` as a Problem at its second line.
    """
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                sub = f"{path}.{key.value}" if path else str(key.value)
                line = key.start_mark.line + 1
                ident = (key.tag, str(key.value))
                if isinstance(key, yaml.ScalarNode) and key.value != "<<" and ident in seen:
                    if duplicates is not None:
                        duplicates.append(Problem(sub, f"duplicate key {key.value!r} (first at line {seen[ident]}); "
                                                       "YAML would silently keep only the last one", line))
                    walk(value, sub)
                    continue
                seen[ident] = line
                lines[sub] = line
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{path}.{i}"] = item.start_mark.line + 1
                walk(item, f"{path}.{i}")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def line_of(lines: dict[str, int], path: str) -> int | None:
    """The line of ``path`` or of its nearest ancestor present in the file."""
    parts = path.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None


def _override_known(raw: dict[str, Any], key: str) -> tuple[bool, list[str]]:
    """Is an override key a real key (in the file or the schema)? Also candidates for a hint."""
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        if i == 0:
            return part in PipelineConfig.model_fields, list(PipelineConfig.model_fields)
        if i in (1, 2) and parts[0] in SECTION_MODELS:
            return _section_key(SECTION_MODELS[parts[0]], parts[1:])
        if parts[0] in ("nodes", "vars") and i >= 2:
            return True, []  # a node parameter: the component's schema decides
        if parts[0] == "stages" and len(parts) > 3 and parts[2] in SECTION_MODELS and i == 3:
            return _section_key(SECTION_MODELS[parts[2]], parts[3:])
        if parts[0] == "stages" and len(parts) > 3 and parts[2] == "nodes" and i >= 4:
            return True, []
        if parts[0] in SECTION_MODELS and i == 1 and "stages" in raw:
            return _section_key(SECTION_MODELS[parts[0]], parts[1:])
        return False, list(node) if isinstance(node, dict) else []
    return True, []


def _section_key(model: type[BaseModel], parts: list[str]) -> tuple[bool, list[str]]:
    """Is ``parts`` (below a section) a key of the section's schema? A field that is itself a model
    (``train.budget``) takes one more part: ``train.budget.flops``."""
    fields = list(model.model_fields)
    if parts[0] not in fields or len(parts) > 2:
        return False, fields
    if len(parts) == 1:
        return True, fields
    nested = [c for c in (model.model_fields[parts[0]].annotation, *get_args(model.model_fields[parts[0]].annotation))
              if isinstance(c, type) and issubclass(c, BaseModel)]
    sub = list(nested[0].model_fields) if nested else []
    return parts[1] in sub, sub


def _first_missing(raw: dict[str, Any], key: str) -> str:
    """The first part of a dotted key that the file does not have (the one to suggest a fix for)."""
    node: Any = raw
    for part in key.split("."):
        if not (isinstance(node, dict) and part in node):
            return part
        node = node[part]
    return key.split(".")[-1]


class LoadedPipeline:
    """A pipeline file after YAML parsing, overrides and interpolation.

    For one stage of a staged pipeline, ``prefix`` is "stages.NAME." and
    problems are reported at the stage's path when the key is the stage's own.
    """

    def __init__(self, path: str, raw: dict[str, Any], lines: dict[str, int], prefix: str = "",
                 overrides: list[str] = ()):
        self.path = path
        self.raw = raw
        self.lines = lines
        self.prefix = prefix
        self.overrides = list(overrides)

    def problem(self, path: str, message: str, warning: bool = False) -> Problem:
        if self.prefix and (path.startswith(("nodes", "objective")) or f"{self.prefix}{path}" in self.lines or not path):
            path = f"{self.prefix}{path}".rstrip(".")
        return Problem(path, message, line_of(self.lines, path), warning)


def load_yaml(path: str | Path, overrides: list[str] = ()) -> LoadedPipeline:
    """Parse the file, apply ``key=value`` overrides and resolve interpolation.

    Raises PipelineError (every problem at once) on a syntax error, a bad
    override or a broken interpolation.
    """
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PipelineError([Problem("", f"cannot read the pipeline file: {e.strerror}")], source) from None
    except UnicodeDecodeError as e:
        raise PipelineError([Problem("", f"cannot read the pipeline file: not UTF-8 text ({e.reason})")], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(e, "problem", None) or str(e)
        raise PipelineError([Problem("", f"YAML syntax error at {where}{what}", mark.line + 1 if mark else None)], source) from None
    if not isinstance(data, dict):
        raise PipelineError([Problem("", "a pipeline file must be a YAML mapping (name:, data:, train:, nodes:, ...)")], source)
    duplicates: list[Problem] = []
    lines = yaml_lines(text, duplicates)
    if duplicates:
        raise PipelineError(sorted(duplicates, key=lambda p: p.line or 0), source)
    problems: list[Problem] = []
    dotlist = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            problems.append(Problem(item or "override", f"override {item!r}: overrides are written key=value, e.g. train.steps=50"))
            continue
        known, candidates = _override_known(data, key)
        if not known:
            hint = did_you_mean(_first_missing(data, key), candidates) or did_you_mean(key.split(".")[-1], candidates)
            problems.append(Problem(key, f"override of a key that does not exist{hint}"))
            continue
        dotlist.append(item)
    if problems:
        raise PipelineError(problems, source)
    try:
        conf = OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(dotlist))
        resolved = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(e).splitlines()[0]
        raise PipelineError([Problem(str(key), f"cannot resolve: {msg}", line_of(lines, str(key)))], source) from None
    return LoadedPipeline(source, resolved, lines, overrides=dotlist)


def validate_sections(loaded: LoadedPipeline) -> tuple[PipelineConfig | None, list[Problem]]:
    """pydantic validation of everything; node bodies are checked later per component."""
    try:
        return PipelineConfig.model_validate(loaded.raw), []
    except ValidationError as e:
        return None, [loaded.problem(path, msg) for path, msg in pydantic_problems(e, model=PipelineConfig)]


def fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The field names of the (nested) model found at ``loc`` inside ``model``: hints for unknown keys."""
    parts = iter(loc)
    for part in parts:
        info = model.model_fields.get(part)
        if info is None:
            return []
        annotation = info.annotation
        found = None
        for candidate in (annotation, *get_args(annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found = candidate
                break
            if get_origin(candidate) is dict:  # dict[str, Model]: the next part is a free key
                value = get_args(candidate)[-1] if get_args(candidate) else None
                if isinstance(value, type) and issubclass(value, BaseModel) and next(parts, None) is not None:
                    found = value
                    break
        if found is None:
            return []
        model = found
    return list(model.model_fields)


SCALAR_TYPE_ERRORS = {"float_type", "float_parsing", "int_type", "int_parsing", "string_type", "bool_type", "bool_parsing"}
MAPPING_TYPE_ERRORS = {"model_type", "dict_type", "model_attributes_type"}


def pydantic_problems(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """(dotted path, message) for every error of a ValidationError, less the noise of union branches.

    A value such as ``float | Schedule`` fails in every branch; a mapping is
    clearly meant for the Schedule and a number for the float, so the other
    branch's "wrong type" error is dropped where the field has other errors.
    """
    items = [(pydantic_problem(err, prefix, model), err) for err in error.errors()]
    out = []
    for (path, msg), err in items:
        kind, value = err.get("type", ""), err.get("input")
        other_branch = kind in (SCALAR_TYPE_ERRORS if isinstance(value, dict) else MAPPING_TYPE_ERRORS)
        if other_branch and any(o is not err and (p == path or p.startswith(path + ".")) for (p, _), o in items):
            continue
        out.append((path, msg))
    return out


def pydantic_problem(err: dict[str, Any], prefix: str = "", model: type[BaseModel] | None = None) -> tuple[str, str]:
    """(dotted path, message) from one pydantic error; ``model`` (the validated schema) adds did-you-mean hints."""
    loc = [str(x) for x in err["loc"] if not str(x).startswith(("function-", "tagged-union"))]
    # Union members (float | Schedule) add their type name to the path; drop it.
    loc = [x for x in loc if x not in ("float", "Schedule", "int", "str", "list[float]", "tuple[float, float]")]
    is_key = "[key]" in loc  # the error is about a mapping key, not its value
    loc = [x for x in loc if x != "[key]"]
    path = ".".join(([prefix] if prefix else []) + loc)
    kind = err.get("type", "")
    if is_key:
        return path, f"a key here must be a word: {err['msg']} (got {err.get('input')!r})"
    if kind == "extra_forbidden":
        hint = did_you_mean(loc[-1], fields_at(model, loc[:-1])) if model is not None and loc else ""
        return path, f"unknown key{hint}"
    if kind == "missing":
        return path, "required key is missing"
    value = err.get("input")
    msg = err["msg"]
    if kind == "value_error":  # a validator's own message: drop pydantic's prefix, keep its "got"
        msg = msg.removeprefix("Value error, ")
        if "got" in msg:
            return path, msg
    if isinstance(value, dict):  # a whole mapping (a model validator): the message says what is wrong
        return path, msg
    return path, f"{msg} (got {value!r})"
