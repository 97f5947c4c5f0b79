"""The pydantic schema of pipeline files, and pipeline problems with their YAML paths and lines.

Reading files is :mod:`graphssl.loading`'s; the ``nodes`` section is validated
per component by :mod:`graphssl.graph`; everything else is validated here.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from graphssl.budget import Budget
from graphssl.errors import Problem, did_you_mean
from graphssl.redact import MASK, scrub
from graphssl.schedules import Scheduled


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a NaN or infinite value is never meant


LossWeight = Annotated[float, Field(allow_inf_nan=False)]


class DataConfig(Strict):
    """Training and evaluation images."""

    dataset: Literal["fashion_mnist", "mnist", "image_folder", "shards", "cifar10"] = "fashion_mnist"
    root: Optional[str] = Field(None, description="dataset folder (image_folder: ROOT/train/CLASS/*, ROOT/test|val/CLASS/*, "
                                                  "or a folder of unlabeled images); default: the Debian package's path")
    shards: Optional[str] = Field(None, description="shards: the training WebDataset tar files, a path, glob or brace "
                                                    "spec (data/train-{000000..000146}.tar)")
    test_shards: Optional[str] = Field(None, description="shards: the labelled test/validation tar files, as shards")
    image_size: int = Field(32, ge=8, description="side of the square images the pipeline sees")
    channels: Literal[1, 3] = 3
    batch_size: int = Field(64, ge=1, description="images per step (per process)")
    limit: Optional[int] = Field(None, ge=1, description="use only N training images: the first N of an in-memory set "
                                                         "(stored in random order), a seeded class-stratified sample of a "
                                                         "folder or shards")
    normalize: Literal["dataset", "imagenet", "clip", "inception", "none"] = "dataset"
    workers: Optional[int] = Field(None, ge=0, description="loader worker processes of a folder or shards (0: decode in "
                                                           "the training process); default: from the CPU count")
    on_bad_image: Literal["skip", "error"] = Field("skip", description="an undecodable file: skip it (its count and first "
                                                                       "paths are reported) or stop with its name")
    eval_crop: float = Field(0.875, gt=0, le=1, description="evaluation transform of a folder or shards: resize the shorter "
                                                            "side to image_size / eval_crop, then the centre crop")


class TrainConfig(Strict):
    """Optimisation: AdamW with per-step warm-up + cosine lr, scheduled weight decay."""

    budget: Optional[Budget] = Field(None, description="instead of steps: {flops: 2e15}, {images: 1e6} or "
                                                      "{epochs: 3}; sets steps (rounded up) in the dry run")
    steps: Optional[int] = Field(None, ge=1, validate_default=True, description="training steps (or give a budget)")
    lr: float = Field(gt=0, description="base lr, before the lr_scaling rule")
    lr_scaling: Literal["none", "linear_256", "linear_512", "sqrt_1024"] = "none"
    min_lr: float = Field(0.0, ge=0)
    warmup: float = Field(0.0, ge=0, description="warm-up length: a fraction of steps if < 1, else steps")
    lr_convention: Literal["graphssl", "dino"] = Field(
        "graphssl", description="lr warm-up: graphssl = peak * step / warmup (MAE); dino = linspace(0, peak, warmup) "
                                "with the end point (DINO's cosine_scheduler); the cosine after it is the same")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's (beta1, beta2), each in [0, 1)")
    eps: float = Field(1e-8, gt=0)
    weight_decay: Scheduled = 0.05
    clip_grad: Optional[float] = Field(None, gt=0)
    clip_mode: Literal["global", "per_tensor"] = "global"
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise lr decay (DINOv2 0.9); 1 = off")
    patch_embed_lr: float = Field(1.0, gt=0, description="lr multiplier of patch embeddings (DINOv2 0.2)")
    log_every: int = Field(10, ge=1, description="steps between node metrics in MLflow and progress lines")
    flush_seconds: float = Field(10.0, ge=0, description="most seconds between metric writes to MLflow (also written "
                                                         "at checkpoints, evaluations and the end); 0: every log_every steps")
    checkpoint_every: Optional[int] = Field(None, ge=1, description="steps between resumable checkpoints "
                                                                   "(one is also written when a run is stopped)")
    keep_checkpoints: int = Field(2, ge=1, description="how many of a stage's newest checkpoints to keep")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast the forward pass")
    compile: bool = Field(False, description="torch.compile every module (first steps are slow)")
    fsdp: bool = Field(False, description="shard parameters with FSDP2 (fully_shard) instead of DDP, under torchrun")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW's betas are each in [0, 1) (got {list(betas)})")
        return betas


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
    limit: Optional[int] = Field(2000, ge=10, description="images per evaluation set (bank and queries): a fixed, seeded, "
                                                          "class-stratified subset of each split; null: the whole split")


class PipelineHeader(Strict):
    """What every pipeline file and every stage share."""

    name: str
    description: str = ""
    plugins: list[str] = Field(default_factory=list, description="Python files (relative to this file) or modules "
                                                             "to import first: they register the pipeline's own components")
    seed: int = Field(0, ge=0, lt=2**32, description="0 <= seed < 2**32")
    deterministic: bool = Field(False, description="torch deterministic algorithms: bit-identical reruns")
    device: Literal["cpu", "cuda", "auto"] = "auto"
    vars: dict[str, Any] = Field(default_factory=dict, description="free values for ${vars.x} interpolation")


class PipelineConfig(PipelineHeader):
    """One stage, resolved: a plain pipeline file, or a stage with the file's sections merged in."""

    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    nodes: dict[str, dict[str, Any]]
    objective: dict[str, LossWeight] = Field(description="loss node -> weight; the training loss is the weighted sum")


class StageConfig(Strict):
    """One stage of a multi-stage pipeline; data/train/eval are merged over the pipeline's."""

    description: str = ""
    needs: list[str] = Field(default_factory=list, description="stages whose trained modules this stage loads")
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Any]]
    objective: dict[str, LossWeight]


class StagedPipelineConfig(PipelineHeader):
    """A pipeline of stages that form a DAG (BEiT: tokenizer, then BEiT; EVA: teacher, then student)."""

    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageConfig]


SECTION_MODELS: dict[str, type[BaseModel]] = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def line_of(lines: dict[str, int], path: str) -> int | None:
    """The line of ``path`` or of its nearest ancestor present in the file."""
    parts = path.split(".")
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None


class LoadedPipeline:
    """A pipeline file after YAML parsing, overrides and interpolation.

    For one stage of a staged pipeline, ``prefix`` is "stages.NAME." and
    problems are reported at the stage's path when the key is the stage's own.
    ``written``: the file with the overrides merged in and interpolations not resolved (what is
    logged as the pipeline); ``secrets``: the dotted paths whose resolved values came from the
    environment, ``secret_values`` those values (kept out of messages and the tracking store).
    """

    def __init__(self, path: str, raw: dict[str, Any], lines: dict[str, int], prefix: str = "",
                 overrides: list[str] = (), written: dict[str, Any] | None = None,
                 secrets: frozenset[str] = frozenset(), secret_values: frozenset[str] = frozenset()):
        self.path = path
        self.raw = raw
        self.lines = lines
        self.prefix = prefix
        self.overrides = list(overrides)
        self.written = raw if written is None else written
        self.secrets = frozenset(secrets)
        self.secret_values = frozenset(secret_values)

    def is_secret(self, path: str) -> bool:
        """Does the value at ``path`` (or one inside it, or the one it is inside) come from the environment?"""
        return any(s == path or s.startswith(path + ".") or path.startswith(s + ".") for s in self.secrets)

    def masked(self) -> dict[str, Any]:
        """``raw`` with every value that came from the environment replaced by ``***``."""
        def mask(value: Any, path: str) -> Any:
            if path and path in self.secrets:
                return MASK
            if isinstance(value, dict):
                return {k: mask(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
            if isinstance(value, list):
                return [mask(v, f"{path}.{i}") for i, v in enumerate(value)]
            return value
        return mask(self.raw, "") if self.secrets else self.raw

    def problem(self, path: str, message: str, warning: bool = False) -> Problem:
        if self.prefix and (path.startswith(("nodes", "objective")) or f"{self.prefix}{path}" in self.lines or not path):
            path = f"{self.prefix}{path}".rstrip(".")
        if self.secrets:
            if self.is_secret(path.removeprefix(self.prefix)) or self.is_secret(path):
                message = re.sub(r"\(got .*\)$", f"(got {MASK})", message, flags=re.S)
            message = scrub(message)
        return Problem(path, message, line_of(self.lines, path), warning)


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
