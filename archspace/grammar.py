"""The archspace grammar, version 1: the typed schema of a design file.

A design file has four sections:

    schema_version: 1
    name: gdn-mqar
    model:    # the architecture: width, depth, token mixers, channel mixer, hybrid layout
    task:     # what to train and evaluate on: mqar | mad_* | lm (TASK_SPECS)
    train:    # optimiser, schedule, budget, precision, clipping, seed, checkpointing

A memory mixer is a point on the axes of the Miras framework (Behrouz et al. 2025,
https://arxiv.org/abs/2504.13173): memory structure x attentional bias x retention gate x update
algorithm (+ feature map and hierarchy). The token-mixer keys are not written here: their values,
defaults, bounds and docs are declared once by the block configs (blocks/config.py, the axis files of
blocks/axis.py), the named presets in blocks/presets.py and the incompatibility table in
blocks/compat.py; this module derives the YAML schema from them (MixerSpec, MoMSpec, TitansSpec), and
checks a design by building its configs, so an error of a block's config points at its YAML key.

This module validates only; archspace.compiler resolves a validated design into per-layer configs.
It must stay cheap to import (no torch, no Lightning): `archspace validate` runs through it.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from . import yamlio
from .blocks.compat import check as check_compat
from .blocks.config import AttentionConfig, ConvConfig, InvalidConfig, MemoryConfig, MoMConfig, TitansConfig
from .blocks.presets import PRESETS
from .errors import ConfigError, closest
from .specbase import Spec as _Spec
from .tasks.registry import TASKS
from .tasks.specs import MQARTaskSpec  # noqa: F401 - the default task section

SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
def _config_fields(cls, skip: tuple = ()) -> dict:
    """pydantic fields from a block config's declarations (blocks/config.py): type, default, bounds, doc.
    A ``derived`` field becomes optional (null: the compiler derives it); ``grammar_default`` replaces a
    required field's missing default."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name == "kind":
            continue
        meta = f.metadata
        bounds = {k: meta[k] for k in ("ge", "gt", "le") if k in meta}
        ann, default = f.type, f.default
        if meta.get("derived"):
            ann, default = Optional[f.type], None
        elif "grammar_default" in meta:
            default = meta["grammar_default"]
        if isinstance(default, tuple):  # a list-valued option (the config keeps a tuple, YAML writes a list)
            default = list(default)
        out[f.name] = (ann, Field(default, description=meta.get("doc", ""), **bounds))
    return out


MoMSpec = create_model("MoMSpec", __base__=_Spec, __doc__=MoMConfig.__doc__.split("\n\n")[0],
                       **_config_fields(MoMConfig, skip=("memory",)))
TitansSpec = create_model(
    "TitansSpec", __base__=_Spec, __doc__=TitansConfig.__doc__.split("\n\n")[0] + " (the attention branch is the "
    "model's `attention` mixer)",
    **_config_fields(TitansConfig, skip=("memory", "attention")),
    window=(Optional[int], Field(64, ge=1, description="mag/mal: sliding-window length of the attention branch "
                                 "(null = global)")))

_MEMORY_FIELDS = _config_fields(MemoryConfig, skip=("d_model",))
_ATTENTION_FIELDS = _config_fields(AttentionConfig, skip=("d_model", "heads", "short_conv"))  # shared: from memory
_SHARED_KEYS = ("heads", "short_conv")
MEMORY_ONLY_KEYS = tuple(k for k in _MEMORY_FIELDS if k not in _SHARED_KEYS) + ("mom", "titans")
ATTENTION_ONLY_KEYS = tuple(_ATTENTION_FIELDS)
# The keys each mixer type reads (a conv mixer, Zoology's BaseConv, reads the memory mixers' conv keys, and lets
# `heads` pass unused so a space can swap presets under a shared head count); a key that only other types read is
# refused with the types it applies to.
CONV_KEYS = tuple(f.name for f in dataclasses.fields(ConvConfig) if f.name not in ("d_model", "kind"))
_TYPE_KEYS = {"memory": (*_MEMORY_FIELDS, "mom", "titans"), "attention": (*_ATTENTION_FIELDS, *_SHARED_KEYS),
              "conv": (*CONV_KEYS, "heads")}

MixerSpec = create_model(
    "MixerSpec", __base__=_Spec,
    __doc__="A token mixer: a memory mixer (the axes of blocks/axis.py), softmax attention or a gated short "
            "convolution.",
    preset=(Optional[str], Field(None, description="named grammar point: " + ", ".join(PRESETS))),
    type=(Literal["memory", "attention", "conv"], Field("memory", description="memory mixer, softmax attention, or "
                                                         "gated short convolution (Zoology's BaseConv)")),
    **_MEMORY_FIELDS,
    mom=(Optional[MoMSpec], Field(None, description="make this memory a Mixture-of-Memories")),
    titans=(Optional[TitansSpec], Field(None, description="compose this memory with attention, Titans-style")),
    **_ATTENTION_FIELDS,
)


class HybridSpec(_Spec):
    """Where memory layers (M) and attention layers (A) go."""

    ratio: Optional[str] = Field(None, description='memory : attention layers, e.g. "3:1"; "1:0" pure memory, "0:1" pure attention')
    placement: Literal["interleave", "top", "bottom", "middle"] = Field(
        "interleave", description="where attention layers go for a ratio")
    pattern: Optional[Any] = Field(None, description='explicit per-layer pattern: "MMAM", "MMMA x 4", "MA x 2 MM" '
                                   'or a list ["M", "A", ...]; letters M (mixer), A (attention) or a key of `mixers`')


class MLPSpec(_Spec):
    kind: Literal["swiglu", "moe", "none"] = Field("swiglu", description="channel mixer: SwiGLU, Mixture-of-Experts of SwiGLUs, or none")
    hidden: Optional[int] = Field(None, ge=1, description="hidden width (per expert for moe; default hidden_mult * d_model)")
    hidden_mult: float = Field(2.0, gt=0, le=64, description="hidden = round(hidden_mult * d_model)")
    experts: int = Field(8, ge=1, le=1024, description="moe: number of experts")
    top_k: int = Field(2, ge=1, le=1024, description="moe: experts per token (weights renormalised)")
    aux_loss_weight: float = Field(0.01, ge=0, description="moe: load-balancing loss weight (logged as train/aux_loss)")
    capacity: Optional[float] = Field(None, gt=0, description="moe: capacity factor, an expert takes at most "
                                      "ceil(capacity * tokens * top_k / experts) tokens (null = no cap)")

    @model_validator(mode="after")
    def _k(self):
        if self.kind == "moe" and self.top_k > self.experts:
            raise ValueError(f"top_k {self.top_k} exceeds experts {self.experts}")
        return self


class ModelSpec(_Spec):
    vocab_size: Optional[int] = Field(None, ge=2, description="vocabulary (default: the task's)")
    d_model: int = Field(128, ge=4, le=65536, description="model width")
    n_layers: Optional[int] = Field(None, ge=1, le=512, description="depth (default 2, or the pattern's length)")
    mixer: MixerSpec = Field(default_factory=lambda: MixerSpec(preset="gated_deltanet"),
                             description="the memory mixer of M layers")
    attention: MixerSpec = Field(default_factory=lambda: MixerSpec(preset="attention"),
                                 description="the token mixer of A layers")
    mixers: dict[str, MixerSpec] = Field(default_factory=dict, description="more token mixers for hybrid patterns, "
                                         "by one upper-case letter (not M or A), e.g. {G: {preset: gla}, S: {preset: swa}}")
    hybrid: HybridSpec = Field(default_factory=HybridSpec, description="layer layout")
    mlp: MLPSpec = Field(default_factory=MLPSpec, description="channel mixer of every layer")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon")
    tie_embeddings: bool = Field(True, description="share input embedding and output head")


TASK_SPECS: dict[str, type[BaseModel]] = {name: task.spec for name, task in TASKS.items()}
AnyTaskSpec = Annotated[Union[tuple(TASK_SPECS.values())], Field(discriminator="name")]


class TaskSpec:
    """The task section: one of TASK_SPECS, chosen by `name` (default mqar).

    Pydantic validates it as a discriminated union; `model_fields` is the union of every task's keys (so
    key-path tools see `task.seed`, `task.vocab_size`, ...), and `TaskSpec.model_validate(dict)` dispatches.
    """

    model_fields: dict = {}

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        return handler.generate_schema(AnyTaskSpec)

    @classmethod
    def variant(cls, name: Any) -> Optional[type[BaseModel]]:
        return TASK_SPECS.get(name) if isinstance(name, str) else None

    @classmethod
    def model_validate(cls, data: Any) -> BaseModel:
        if isinstance(data, dict) and "name" not in data:
            data = {**data, "name": "mqar"}
        spec = cls.variant(data.get("name")) if isinstance(data, dict) else None
        if spec is None:
            return MQARTaskSpec.model_validate(data)  # raises the usual ValidationError
        return spec.model_validate(_int_to_float(data, spec))


for _spec in TASK_SPECS.values():
    for _k, _f in _spec.model_fields.items():
        TaskSpec.model_fields.setdefault(_k, _f)


def task_seq_len(task: dict) -> int:
    """Longest training sequence of a resolved task section (model cost, export)."""
    return TASKS[task.get("name", "mqar")].seq_len(task)


class TrainSpec(_Spec):
    max_steps: int = Field(2000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1, description="sequences per step")
    lr: float = Field(1e-3, gt=0, le=10, description="peak learning rate")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay (matrices only)")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="optimizer")
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.98], min_length=2, max_length=2, description="Adam betas")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warm-up")
    warmup_steps: int = Field(100, ge=0, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr for cosine and linear")
    precision: Literal["32", "bf16-mixed", "16-mixed"] = Field("32", description="Lightning precision")
    grad_clip: Optional[float] = Field(1.0, ge=0, description="gradient-norm clip (null = off)")
    seed: int = Field(0, ge=0, description="seed for initialisation and data order")
    eval_every: int = Field(250, ge=1, description="validate every N steps")
    checkpoint: bool = Field(True, description="save the last and best checkpoints in the run directory")
    accelerator: Literal["auto", "cpu", "gpu"] = Field("cpu", description="device")
    devices: int = Field(1, ge=1, description="devices per run (several GPUs train with DDP)")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    tokens: Optional[float] = Field(None, gt=0, description="token budget: the steps become ceil(tokens / (batch_size x "
                                    "training sequence length)); an explicit max_steps caps them (archspace.budget)")
    flops: Optional[float] = Field(None, gt=0, description="training-FLOP budget (3 x forward FLOPs per token of the "
                                   "accounting): the steps become ceil(flops / (training FLOPs per token x batch_size x "
                                   "training sequence length)); an explicit max_steps caps them (archspace.budget)")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_number(cls, v):
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_floats(cls, v):
        if isinstance(v, list):
            return [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
        return v


class Design(_Spec):
    """One architecture with its task and training recipe."""

    schema_version: int = Field(SCHEMA_VERSION, description="grammar version of this file")
    name: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$", description="run name (default: file stem)")
    description: str = Field("", description="free text")
    model: ModelSpec = Field(default_factory=ModelSpec)
    task: TaskSpec = Field(default_factory=MQARTaskSpec, description="what to train and evaluate on")
    train: TrainSpec = Field(default_factory=TrainSpec)


# Float fields accept integers written in YAML (`lr: 1`), nothing else is coerced.
def _int_to_float(data: Any, cls: type[BaseModel]) -> Any:
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for name, field in cls.model_fields.items():
        if name not in out:
            continue
        ann, sub = _unwrap(field.annotation)
        v = out[name]
        if ann is float and isinstance(v, int) and not isinstance(v, bool):
            out[name] = float(v)
        elif ann is float and sub == "list" and isinstance(v, list):
            out[name] = [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            if sub == "list" and isinstance(v, list):
                out[name] = [_int_to_float(x, ann) for x in v]
            else:
                out[name] = _int_to_float(v, ann)
    return out


def _unwrap(ann) -> tuple[Any, Optional[str]]:
    """Optional[X] -> X, list[X] -> (X, 'list')."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    if origin is list:
        inner, _ = _unwrap(typing.get_args(ann)[0])
        return inner, "list"
    return ann, None


def _node_at(loc: tuple, root: Any = None, skip: int = 0) -> tuple[Optional[type[BaseModel]], Any]:
    """Walk Design (or `root`, after `skip` leading parts) along a pydantic error location:
    (model class holding the last key, field annotation)."""
    cls: Any = Design if root is None else root
    ann: Any = cls
    parent = None
    for part in loc[skip:]:
        if isinstance(part, int):
            continue
        if isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
            parent = cls
            ann, _ = _unwrap(cls.model_fields[part].annotation)
            cls = ann
        else:
            return (cls if isinstance(cls, type) and issubclass(cls, BaseModel) else parent), None
    return parent, ann


def _pydantic_to_config_error(exc: ValidationError, marks: yamlio.Marks, data: Any, root: Any = None,
                              skip: int = 0) -> ConfigError:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = tuple(err["loc"])
    more = f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} after this one.)" if len(errors) > 1 else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        parent, _ = _node_at(loc[:-1] + ("__none__",), root, skip)
        valid = list(parent.model_fields) if parent else []
        guess = closest(str(loc[-1]), valid)
        hint = f"Did you mean '{guess}'?" if guess else ""
        hint += f" Valid keys here: {', '.join(valid)}." + more
        return marks.error(f"unknown key '{loc[-1]}'", loc, hint=hint.strip(), at_key=True)
    _, ann = _node_at(loc, root, skip)
    value = err.get("input")
    if kind in ("literal_error", "enum"):
        allowed = [str(a) for a in typing.get_args(ann)] if typing.get_origin(ann) is Literal else []
        guess = closest(str(value), allowed)
        hint = f"Did you mean '{guess}'?" if guess else ""
        return marks.error(f"'{value}' is not one of: {', '.join(allowed)}", loc, hint=(hint + more).strip() or None)
    if kind == "missing":
        return marks.error("required key is missing", loc[:-1] + (loc[-1],), hint=more.strip() or None)
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    msg = err["msg"]
    if kind == "value_error":  # a check of the spec's own (a model validator such as LMTaskSpec._vocab, a field's)
        return marks.error(msg.removeprefix("Value error, "), loc, hint=more.strip() or None)
    if kind.endswith("_type") and isinstance(value, str) and value in ("yes", "no", "on", "off", "y", "n"):
        msg += f" (YAML 1.1 would read {value!r} as a boolean; archspace reads it as text: write true or false)"
    return marks.error(f"{msg}, got {shown}", loc, hint=more.strip() or None)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def _expand_mixer(raw: Any, path: tuple, marks: yamlio.Marks, default_preset: Optional[str]) -> Any:
    """Merge a preset under the keys the user wrote; check type-specific keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return raw  # pydantic reports the type error
    user = dict(raw)
    preset = user.get("preset", default_preset if not user else None)
    merged: dict[str, Any] = {}
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            guess = closest(str(preset), PRESETS)
            raise marks.error(
                f"unknown preset '{preset}'", path + ("preset",),
                hint=(f"Did you mean '{guess}'? " if guess else "") + f"Presets: {', '.join(PRESETS)}.")
        merged.update(PRESETS[preset])
        merged["preset"] = preset
    merged.update(user)
    _check_options(merged, user, path, marks)
    mtype = merged.get("type", "memory")
    for key in user:
        owners = [t for t, keys in _TYPE_KEYS.items() if key in keys]
        if owners and mtype not in owners:
            raise marks.error(
                f"'{key}' applies to {' and '.join(owners)} mixers only, and this mixer is of type {mtype}",
                path + (key,), at_key=True)
    return merged


def _check_options(merged: dict, user: dict, path: tuple, marks: yamlio.Marks) -> None:
    """An option of an axis value (e.g. n_householder of update householder) is an error where the mixer does not
    choose that value; one that came with the preset is dropped when the user changed the value it belongs to."""
    from .blocks.config import MEMORY_AXES, option_owners

    for key, owners in option_owners().items():  # owners: ((axis, value), ...), the values that share the option
        if key not in merged:
            continue
        chosen = {axis: merged.get(axis, MEMORY_AXES[axis].default) for axis, _ in owners}
        if any(chosen[axis] == value for axis, value in owners):
            continue
        if key in user:
            of = " or ".join(f"{axis}: {value}" for axis, value in owners)
            has = ", ".join(f"{axis}: {value}" for axis, value in chosen.items())
            raise marks.error(f"'{key}' is an option of {of}, and this mixer has {has}",
                              path + (key,), at_key=True, hint=f"Set {of} or drop '{key}'.")
        del merged[key]


_PATTERN_TERM = re.compile(r"\s*([A-Z]+)(?:\s*[x*]\s*(\d+))?\s*")


def parse_pattern(pattern: Any) -> Optional[list[str]]:
    """A hybrid pattern -> one letter per layer, or None if it is malformed.

    "MMAM" -> M M A M;  "MMMA x 4" -> (M M M A) four times;  "MA x 2 MM" -> M A M A M M;
    a list ["M", "A"] is taken letter by letter (each entry may also be a term like "MMA x 2").
    """
    if isinstance(pattern, list):
        out: list[str] = []
        for item in pattern:
            sub = parse_pattern(item) if isinstance(item, str) else None
            if not sub:
                return None
            out += sub
        return out or None
    if not isinstance(pattern, str) or not pattern.strip():
        return None
    out, pos = [], 0
    while pos < len(pattern):
        m = _PATTERN_TERM.match(pattern, pos)
        if m is None or m.end() == pos:
            return None
        reps = int(m.group(2)) if m.group(2) else 1
        if reps < 1:
            return None
        out += list(m.group(1)) * reps
        pos = m.end()
    return out or None


def _check_layout(model: "ModelSpec", marks: yamlio.Marks, path: tuple) -> None:
    hybrid, n_layers = model.hybrid, model.n_layers
    letters_ok = {"M", "A", *model.mixers}
    for letter in model.mixers:
        if not re.fullmatch(r"[B-LN-Z]", letter):
            raise marks.error(f"mixer name {letter!r} must be one upper-case letter other than M and A "
                              "(M is `mixer`, A is `attention`)", ("model", "mixers", letter), at_key=True)
    if hybrid.ratio is not None and hybrid.pattern is not None:
        raise marks.error("give either ratio or pattern, not both", path + ("pattern",), at_key=True)
    if hybrid.ratio is not None:
        if not re.fullmatch(r"\d+:\d+", hybrid.ratio) or hybrid.ratio == "0:0":
            raise marks.error(f"ratio '{hybrid.ratio}' must look like \"3:1\" (memory:attention layers)", path + ("ratio",))
    if hybrid.pattern is not None:
        pat = hybrid.pattern
        letters = parse_pattern(pat)
        if letters is None:
            raise marks.error(f"pattern {pat!r} is not a layer pattern: write letters, optionally repeated, like "
                              "\"MMAM\", \"MMMA x 4\" or a list [\"M\", \"A\"]", path + ("pattern",))
        for i, ch in enumerate(letters):
            if ch not in letters_ok:
                where = path + ("pattern",)
                if isinstance(pat, list):
                    where += (min(i, len(pat) - 1),)
                extra = f", {', '.join(sorted(model.mixers))} (from model.mixers)" if model.mixers else ""
                raise marks.error(f"pattern letter {ch!r} is not a mixer: use M (model.mixer), A (model.attention)"
                                  f"{extra}", where, hint="Define more letters under model.mixers.")
        if n_layers is not None and len(letters) != n_layers:
            raise marks.error(f"pattern has {len(letters)} layers but n_layers is {n_layers}", path + ("pattern",),
                              hint="Drop n_layers or make them agree.")


def validate_data(data: Any, marks: yamlio.Marks) -> Design:
    """Validate already-loaded YAML data (with its marks) into a Design; raise ConfigError."""
    if not isinstance(data, dict):
        raise marks.error("a design file must be a mapping with the sections model, task, train", ())
    data = copy.deepcopy(data)
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise marks.error(f"schema_version {version!r} is not supported; this archspace reads version {SCHEMA_VERSION}",
                          ("schema_version",))
    if isinstance(data.get("task"), str):
        data["task"] = load_task_ref(data["task"], marks)
    if "task" in data:
        data["task"] = validate_task(data["task"], marks, ("task",))
    model = data.get("model")
    if isinstance(model, dict):
        model["mixer"] = _expand_mixer(model.get("mixer"), ("model", "mixer"), marks, "gated_deltanet")
        model["attention"] = _expand_mixer(model.get("attention"), ("model", "attention"), marks, "attention")
        if isinstance(model.get("mixers"), dict):
            model["mixers"] = {k: _expand_mixer(v, ("model", "mixers", k), marks, None)
                               for k, v in model["mixers"].items()}
    data = _int_to_float(data, Design)
    try:
        design = Design.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_to_config_error(exc, marks, data) from None
    m = design.model
    named = [(("model", "mixer"), m.mixer), (("model", "attention"), m.attention)]
    named += [(("model", "mixers", k), v) for k, v in m.mixers.items()]
    for where, spec in named:
        try:
            check_compat(spec.model_dump())
        except InvalidConfig as exc:
            raise _invalid(exc, marks, where) from None
        if spec.titans is not None and m.attention.type != "attention":
            raise marks.error("a Titans composition needs model.attention to be softmax attention", where + ("titans",))
        if spec.titans is not None and m.attention.short_conv:
            raise marks.error("a Titans composition's attention branch has no short conv: set model.attention.short_conv "
                              "to 0, or give the other attention layers their own letter under model.mixers",
                              where + ("titans",))
    _check_layout(m, marks, ("model", "hybrid"))
    if m.vocab_size is not None and m.vocab_size < design.task.vocab_size:
        raise marks.error(f"vocab_size {m.vocab_size} is smaller than the task's vocabulary ({design.task.vocab_size})",
                          ("model", "vocab_size"))
    check_task = TASKS[design.task.name].check
    if check_task is not None:
        check_task(design.task, marks)
    if design.task.name == "mqar":
        if design.task.order == "curriculum" and design.train.devices > 1:
            raise marks.error("'curriculum' trains on one device (its batches follow the slices in order, "
                              f"which a distributed sampler would reshuffle); train.devices is {design.train.devices}",
                              ("task", "order"), hint="Set train.devices: 1 or task.order: mixed.")
    if design.train.tokens is not None and design.train.flops is not None:
        raise marks.error("train.tokens and train.flops are two budgets for the same steps: give one of them",
                          ("train", "flops"))
    for where, spec in named:
        if spec.type == "conv":
            dims = []
        else:
            dims = [spec.head_dim] if spec.type == "attention" else [spec.key_dim, spec.value_dim]
        if any(d is None for d in dims) and m.d_model % spec.heads:
            raise marks.error(f"d_model {m.d_model} is not divisible by heads {spec.heads}",
                              where + ("heads",), hint="Set the per-head dims explicitly or change heads.")
        try:  # the block configs check the rest (what each axis value requires): a config that exists can be built
            from .compiler import mixer_config

            mixer_config(spec, m.d_model, m.attention)
        except InvalidConfig as exc:
            raise _invalid(exc, marks, where) from None
    _check_shared_bounds(m, named, marks)
    return design


def _check_shared_bounds(m, named: list, marks: yamlio.Marks) -> None:
    """Model-level inputs shared by layers: HGRN2's learned lower bounds are one parameter [n_layers, H*K], so the
    mixers that learn them need one width H*K; RWKV-7's value residual mixes the first layer's values into the
    later ones, so those mixers need one width H*V."""
    from .compiler import mixer_config

    for key, width_of, what in (
            ("learned_lower_bounds", lambda c: c.heads * c.state_key_dim,
             "share one parameter [n_layers, H*K] of the model, so they need one width H*K (heads x key width)"),
            ("value_residual", lambda c: c.heads * c.value_dim,
             "mix the first such layer's values into their own, so they need one width H*V (heads x value_dim)")):
        widths = {}
        for where, spec in named:
            if spec.type == "memory" and getattr(spec, key, False):
                widths[where] = width_of(mixer_config(spec, m.d_model, m.attention))
        if len(set(widths.values())) > 1:
            where, _ = list(widths.items())[-1]
            others = ", ".join(f"{'.'.join(w)}: {v}" for w, v in widths.items())
            raise marks.error(f"the mixers with {key} {what}; got {others}", where + (key,))


def _invalid(exc: InvalidConfig, marks: yamlio.Marks, where: tuple) -> ConfigError:
    """A block config's refusal as a ConfigError at the YAML key it names (``exc.key``, dotted into sections)."""
    err = marks.error(str(exc), where + (tuple(exc.key.split(".")) if exc.key else ()))
    if exc.incompatible:
        err.kind = "incompatible"
    return err


def validate_task(raw: Any, marks: yamlio.Marks, path: tuple) -> Any:
    """Validate a task section with the spec its `name` selects; ConfigError at file:line:col otherwise."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return raw  # pydantic reports the type error
    name = raw.get("name", "mqar")
    spec = TaskSpec.variant(name)
    if spec is None:
        guess = closest(str(name), TASK_SPECS)
        raise marks.error(f"unknown task '{name}'", path + ("name",),
                          hint=(f"Did you mean '{guess}'? " if guess else "") + f"Tasks: {', '.join(TASK_SPECS)}.")
    data = _int_to_float({**raw, "name": name}, spec)
    try:
        spec.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_to_config_error(_relocate(exc, path), marks, data, root=spec, skip=len(path)) from None
    return data


def study_dirs(anchor: Path) -> list[Path]:
    """Where `task: NAME` looks for studies/NAME.yaml: beside the file and up to its ancestors, then ./studies."""
    anchor = anchor.resolve()
    dirs = [d / "studies" for d in [anchor, *anchor.parents][:4]]
    dirs.append(Path.cwd() / "studies")
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def load_task_ref(name: str, marks: yamlio.Marks) -> dict:
    """`task: mqar_extrapolation` -> the validated task section of studies/mqar_extrapolation.yaml."""
    anchor = Path(marks.file).parent if marks.file and not marks.file.startswith("<") else Path.cwd()
    dirs = study_dirs(anchor)
    for d in dirs:
        f = d / f"{name}.yaml"
        if f.is_file():
            data, sub = yamlio.load(f)
            if not isinstance(data, dict) or not isinstance(data.get("task"), dict):
                raise sub.error("a study recipe must have a `task:` mapping", ())
            extra = set(data) - {"schema_version", "description", "task"}
            if extra:
                key = sorted(extra)[0]
                raise sub.error(f"unknown key '{key}' in a study recipe (allowed: schema_version, description, task)",
                                (key,), at_key=True)
            return validate_task(data["task"], sub, ("task",))
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})
    guess = closest(name, known)
    raise marks.error(f"task '{name}' not found in {', '.join(str(d) for d in dirs if d.is_dir()) or 'any studies/ folder'}",
                      ("task",), hint=(f"Did you mean '{guess}'? " if guess else "") + f"Known tasks: {', '.join(known) or 'none'}.")


def _relocate(exc: ValidationError, prefix: tuple = ("task",)):
    """Prefix a task spec's validation error locations with `prefix` so marks line up."""

    class Wrapped:
        def errors(self, include_url=False):
            out = []
            for e in exc.errors(include_url=False):
                e = dict(e)
                e["loc"] = tuple(prefix) + tuple(e["loc"])
                out.append(e)
            return out

    return Wrapped()


def set_path(data: dict, path: tuple, value: Any) -> None:
    """Set data[path] creating mappings on the way (used for overrides and search-space samples)."""
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def load_design(path, overrides: Optional[dict[tuple, Any]] = None) -> tuple[Design, dict]:
    """Load and validate a design file. Returns the Design and the raw data (after overrides)."""
    data, marks = yamlio.load(path)
    if overrides:
        if not isinstance(data, dict):
            raise marks.error("a design file must be a mapping", ())
        for key, value in overrides.items():
            set_path(data, key, value)
    design = validate_data(data, marks)
    if design.name is None:
        design = design.model_copy(update={"name": Path(path).stem})
    return design, data


def json_schema() -> dict:
    """JSON Schema of design files, for editor completion (yaml-language-server)."""
    schema = Design.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "archspace design (schema_version 1)"
    return schema
