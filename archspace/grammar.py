"""The archspace grammar, version 1: the typed schema of a design file.

A design file has four sections:

    schema_version: 1
    name: gdn-mqar
    model:    # the architecture: width, depth, token mixers, channel mixer, hybrid layout
    task:     # what to train and evaluate on: mqar | mad_* | lm (TASK_SPECS)
    train:    # optimiser, schedule, budget, precision, clipping, seed, checkpointing

A memory mixer is a point on the axes of the Miras framework (Behrouz et al. 2025,
https://arxiv.org/abs/2504.13173): memory structure x attentional bias x retention gate x update
algorithm. Named presets (PRESETS) expand to grammar points and any key can override them.
Which axis values may not be combined lives in one table, INCOMPATIBLE, read by the compiler and by
the search-space sampler alike.

This module validates only; archspace.compiler resolves a validated design into per-layer configs.
It must stay cheap to import (no torch, no Lightning): `archspace validate` runs through it.
"""
from __future__ import annotations

import copy
import glob
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import yamlio
from .errors import ConfigError, closest

SCHEMA_VERSION = 1

# ----------------------------------------------------------------------------------------------
# Presets: published models as points of the grammar. Keys given next to `preset:` override these.
# ----------------------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    # Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236 : S_t = S_{t-1} + phi(k_t) v_t^T
    "linear_attention": dict(type="memory", bias="dot", retention="none", feature_map="elu1", key_norm="none",
                             short_conv=0, output_gate=False),
    # RetNet, Sun et al. 2023, https://arxiv.org/abs/2307.08621 : fixed decay 1 - 2^(-5-h) per head, swish gate
    "retnet": dict(type="memory", bias="dot", retention="constant", feature_map="identity", key_norm="none",
                   short_conv=0, output_gate=True),
    # Mamba2 / SSD, Dao & Gu 2024, https://arxiv.org/abs/2405.21060 : data-dependent scalar decay per head
    "mamba2": dict(type="memory", bias="dot", retention="scalar", feature_map="identity", key_norm="none",
                   short_conv=4, output_gate=True),
    # GLA, Yang et al. 2023, https://arxiv.org/abs/2312.06635 : data-dependent vector decay (low-rank gate)
    "gla": dict(type="memory", bias="dot", retention="vector", feature_map="identity", key_norm="none",
                short_conv=0, output_gate=True),
    # DeltaNet, Yang et al. 2024, https://arxiv.org/abs/2406.06484 : delta rule, l2-normalised silu keys
    "deltanet": dict(type="memory", bias="l2", retention="none", feature_map="silu", key_norm="l2",
                     short_conv=4, output_gate=False),
    # Gated DeltaNet, Yang et al. 2024, https://arxiv.org/abs/2412.06464 : delta rule with scalar decay
    "gated_deltanet": dict(type="memory", bias="l2", retention="scalar", feature_map="silu", key_norm="l2",
                           short_conv=4, output_gate=True),
    # Causal softmax attention (global) and sliding-window attention
    "attention": dict(type="attention", window=None),
    "swa": dict(type="attention", window=128),
}

MEMORY_ONLY_KEYS = (
    "key_dim", "value_dim", "structure", "bias", "retention", "update", "feature_map", "key_norm",
    "norm", "output_gate", "gate_rank", "gate_temperature", "chunk_size", "path",
    "hierarchy", "levels", "mom", "titans",
)
ATTENTION_ONLY_KEYS = ("head_dim", "window", "rope_base")


SET = "<set>"  # in Incompatibility.when: the key is present and not null (e.g. a `mom:` section)


@dataclass(frozen=True)
class Incompatibility:
    when: dict[str, Any]  # mixer key -> value (or SET); the rule fires when all match
    why: str


# The one table of axis combinations that may not be combined (read by compiler and sampler).
INCOMPATIBLE: tuple[Incompatibility, ...] = (
    Incompatibility(
        {"type": "memory", "bias": "l2", "retention": "vector"},
        "a per-channel (vector) retention gate with the delta rule (KDA) is not in grammar version 1; "
        "use retention: scalar (Gated DeltaNet) or bias: dot (GLA)",
    ),
    Incompatibility(
        {"type": "memory", "bias": "l2", "key_norm": "none"},
        "the delta rule needs l2-normalised keys (key_norm: l2): with ||k|| > 1 the transition "
        "I - b k k^T can expand the state and training diverges",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "retention": "vector"},
        "log-linear memory is defined for scalar (or no / constant) retention: the Mamba2 and Gated DeltaNet "
        "forms of Guo et al. 2025; use retention: scalar",
    ),
    Incompatibility(
        {"type": "memory", "mom": SET, "titans": SET},
        "a Titans composition takes one memory mixer, not a Mixture-of-Memories, in grammar version 1",
    ),
)


def _matches(mixer: dict[str, Any], key: str, want: Any) -> bool:
    if key not in mixer:
        return False
    return mixer[key] is not None if want == SET else mixer[key] == want


def violations(mixer: dict[str, Any]) -> list[Incompatibility]:
    """Rules of INCOMPATIBLE that a (possibly partial) mixer assignment breaks."""
    return [r for r in INCOMPATIBLE if all(_matches(mixer, k, v) for k, v in r.when.items())]


def could_violate(partial: dict[str, Any], key: str, value: Any) -> bool:
    """True if setting `key=value` on `partial` completes a forbidden combination (for samplers)."""
    trial = dict(partial)
    trial[key] = value
    return any(key in r.when for r in violations(trial))


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MoMSpec(_Spec):
    """Mixture-of-Memories (Du et al. 2025, https://arxiv.org/abs/2502.13685) over this memory mixer."""

    memories: int = Field(4, ge=1, le=256, description="number of memories M")
    top_k: int = Field(2, ge=1, le=256, description="memories each token is routed to (weights renormalised)")
    shared_memory: bool = Field(True, description="add an always-on shared memory that sees every token")
    share_kv: bool = Field(False, description="one key/value projection shared by all memories")
    aux_loss_weight: float = Field(0.01, ge=0, description="weight of the load-balancing loss (logged as train/aux_loss)")
    capacity: Optional[float] = Field(None, gt=0, description="capacity factor: a memory takes at most "
                                      "ceil(capacity * T * top_k / memories) tokens per sequence (null = no cap)")

    @model_validator(mode="after")
    def _k(self):
        if self.top_k > self.memories:
            raise ValueError(f"top_k {self.top_k} exceeds memories {self.memories}")
        return self


class TitansSpec(_Spec):
    """A Titans composition (Behrouz et al. 2024, https://arxiv.org/abs/2501.00663) of this memory mixer
    with the model's `attention` mixer."""

    variant: Literal["mac", "mag", "mal"] = Field(
        "mac", description="mac: memory as context; mag: memory as gate; mal: memory as layer")
    segment: int = Field(64, ge=1, le=1 << 16, description="mac: segment length")
    persistent_tokens: int = Field(4, ge=0, le=1024, description="learned tokens prepended to the attention context")
    window: Optional[int] = Field(64, ge=1, description="mag/mal: sliding-window length of the attention branch "
                                  "(null = global)")


class MixerSpec(_Spec):
    """A token mixer: a memory mixer (matrix memory) or softmax attention."""

    preset: Optional[str] = Field(None, description="named grammar point: " + ", ".join(PRESETS))
    type: Literal["memory", "attention"] = Field("memory", description="memory mixer or softmax attention")
    heads: int = Field(2, ge=1, le=256, description="number of heads")
    # memory mixer
    key_dim: Optional[int] = Field(None, ge=1, le=4096, description="K per head (default d_model / heads)")
    value_dim: Optional[int] = Field(None, ge=1, le=4096, description="V per head (default d_model / heads)")
    structure: Literal["matrix"] = Field("matrix", description="memory structure: matrix S in R^{K x V}")
    bias: Literal["dot", "l2"] = Field("dot", description="attentional bias: dot (Hebbian) or l2 (delta rule)")
    retention: Literal["none", "constant", "scalar", "vector"] = Field(
        "none", description="retention gate: none | constant (RetNet) | scalar (Mamba2) | vector (GLA)")
    update: Literal["gd"] = Field("gd", description="update algorithm: one gradient step per token")
    feature_map: Literal["identity", "elu1", "silu", "relu"] = Field("identity", description="map on q and k")
    key_norm: Literal["none", "l2"] = Field("none", description="l2-normalise q and k per head")
    short_conv: int = Field(0, ge=0, le=16, description="causal depthwise conv size on q, k, v (0 = off); "
                            "memory mixers and attention")
    norm: Literal["rmsnorm", "none"] = Field("rmsnorm", description="per-head output normalisation")
    output_gate: bool = Field(False, description="o = norm(o) * silu(W_g x)")
    gate_rank: int = Field(16, ge=1, le=1024, description="rank of the vector (GLA) gate projection")
    gate_temperature: float = Field(16.0, gt=0, description="GLA gate: log a = logsigmoid(.) / temperature")
    chunk_size: int = Field(64, ge=1, le=1024, description="chunk length of the chunked training path")
    path: Literal["chunk", "reference"] = Field("chunk", description="kernel path: chunk (training) or reference (token loop)")
    hierarchy: Literal["none", "log_linear"] = Field(
        "none", description="log_linear: Fenwick-tree levels of states with data-dependent level weights (Guo et al. 2025)")
    levels: int = Field(16, ge=2, le=64, description="log-linear levels (older tokens share the last level)")
    mom: Optional[MoMSpec] = Field(None, description="make this memory a Mixture-of-Memories")
    titans: Optional[TitansSpec] = Field(None, description="compose this memory with attention, Titans-style")
    # attention
    head_dim: Optional[int] = Field(None, ge=1, le=1024, description="attention head dim (default d_model / heads)")
    window: Optional[int] = Field(None, ge=1, description="sliding window length (null = global causal)")
    rope_base: float = Field(10000.0, gt=0, description="rotary embedding base")


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


class SliceSpec(_Spec):
    seq_len: int = Field(ge=4, le=1 << 20)
    num_kv_pairs: int = Field(ge=1)
    num_examples: int = Field(ge=1)


def _default_train_slices() -> list[SliceSpec]:
    return [SliceSpec(seq_len=64, num_kv_pairs=4, num_examples=20000)]


def _default_test_slices() -> list[SliceSpec]:
    return [SliceSpec(seq_len=64, num_kv_pairs=4, num_examples=1000)]


class MQARTaskSpec(_Spec):
    """Multi-query associative recall (Zoology, Arora et al. 2023, https://arxiv.org/abs/2312.04927)."""

    name: Literal["mqar"] = Field("mqar", description="task name")
    vocab_size: int = Field(8192, ge=16, description="vocabulary: keys from the lower half, values from the upper")
    train: list[SliceSpec] = Field(default_factory=_default_train_slices, description="training mixture")
    test: list[SliceSpec] = Field(default_factory=_default_test_slices, description="test mixture (per-slice accuracy)")
    power_a: float = Field(0.01, gt=0, le=1, description="power-law exponent of query placement")
    random_non_queries: bool = Field(True, description="fill non-query positions with random tokens")
    repeat: int = Field(1, ge=1, le=8, description="JRT multi-pass (Arora et al. 2024): the key-value context is read "
                        "`repeat` times before the queries; labels only after the final pass")
    order: Literal["mixed", "curriculum"] = Field(
        "mixed", description="training order: `mixed` shuffles the whole train mixture (rows padded to its longest "
        "slice); `curriculum` trains on the slices one after another as listed (rows shuffled within a slice, "
        "batches cropped to the slice's length), each phase ceil(num_examples / batch_size) steps, then repeats")
    seed: int = Field(0, ge=0, description="data seed (train and test seeds never overlap)")


class _MADSpec(_Spec):
    """Common keys of the MAD synthetic tasks (Poli et al. 2024, https://arxiv.org/abs/2403.17844)."""

    vocab_size: int = Field(16, ge=4, le=1 << 20, description="vocabulary, special ids included")
    seq_len: int = Field(128, ge=4, le=1 << 20, description="sequence length (model input)")
    num_train_examples: int = Field(12800, ge=1, description="training examples (generated once)")
    num_test_examples: int = Field(1280, ge=1, description="test examples")
    seed: int = Field(12345, ge=0, description="data seed (train and test use distinct child seeds)")


class MADInContextRecallSpec(_MADSpec):
    """MAD in-context recall: key-value slots, the mapping fresh per example."""

    name: Literal["mad_in_context_recall"] = Field(description="task name")


class MADNoisyInContextRecallSpec(_MADSpec):
    """MAD noisy in-context recall: in-context recall with whole noise slots from the top noise ids."""

    name: Literal["mad_noisy_in_context_recall"] = Field(description="task name")
    vocab_size: int = Field(32, ge=8, le=1 << 20, description="vocabulary including the noise ids")
    noise_vocab_size: int = Field(16, ge=1, description="noise ids: the top ids of the vocabulary")
    frac_noise: float = Field(0.2, ge=0, lt=1, description="probability that a context slot is noise")


class MADFuzzyInContextRecallSpec(_MADSpec):
    """MAD fuzzy in-context recall: keys and values are tuples of 1..motif-size distinct ids."""

    name: Literal["mad_fuzzy_in_context_recall"] = Field(description="task name")
    k_motif_size: int = Field(3, ge=1, le=16, description="largest key tuple")
    v_motif_size: int = Field(3, ge=1, le=16, description="largest value tuple")
    unrecoverable: Literal["keep", "mask"] = Field(
        "keep", description="final pair whose key never occurred (MAD quirk): keep its targets (MAD) or mask them")


class MADSelectiveCopyingSpec(_MADSpec):
    """MAD selective copying: copy the data tokens scattered among blanks after the copy marker."""

    name: Literal["mad_selective_copying"] = Field(description="task name")
    seq_len: int = Field(256, ge=4, le=1 << 20, description="sequence length (model input)")
    num_tokens_to_copy: int = Field(16, ge=1, description="data tokens to copy")


class MADCompressionSpec(_MADSpec):
    """MAD compression: encode the sequence into the last state, decode every position (encoder-decoder readout)."""

    name: Literal["mad_compression"] = Field(description="task name")
    seq_len: int = Field(32, ge=2, le=1 << 20, description="sequence length (model input)")


class MADMemorizationSpec(_MADSpec):
    """MAD memorization: one fixed key-value map shared by all examples, learned in the weights."""

    name: Literal["mad_memorization"] = Field(description="task name")
    vocab_size: int = Field(256, ge=4, le=1 << 20, description="vocabulary, insert marker included")
    seq_len: int = Field(32, ge=2, le=1 << 20, description="sequence length (model input)")
    num_train_examples: int = Field(256, ge=1, description="training examples (generated once)")


class LMTaskSpec(_Spec):
    """Language modelling on local text: next-token loss at every position; val/ppl and val/bpb."""

    name: Literal["lm"] = Field(description="task name")
    corpus: Literal["stdlib", "files"] = Field(
        "stdlib", description="stdlib: the running Python's standard-library *.py sources (offline demo); files: `files`")
    files: list[str] = Field(default_factory=list, description="text/JSONL/parquet files or globs (relative to the cwd)")
    text_field: str = Field("text", description="JSONL key / parquet column holding the text")
    max_bytes: int = Field(4_000_000, ge=1000, description="read documents in sorted order up to this many bytes")
    tokenizer: Literal["bytes", "bpe"] = Field("bytes", description="bytes: 256 byte ids + specials; bpe: trained on the corpus")
    vocab_size: Optional[int] = Field(None, ge=16, le=1 << 20,
                                      description="bytes: 258 (fixed); bpe: target vocabulary (default 4096)")
    seq_len: int = Field(256, ge=2, le=1 << 20, description="tokens per training sequence")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="fraction of documents held out for validation")
    test_fraction: float = Field(0.05, gt=0, lt=1, description="fraction of documents held out for the final test")
    max_val_sequences: int = Field(64, ge=1, description="sequences scored at each validation and at the test")
    cache_dir: Optional[str] = Field(None, description="token cache (default $ARCHSPACE_CACHE or <results>/cache/lm)")
    seed: int = Field(0, ge=0, description="document split seed")

    @model_validator(mode="after")
    def _vocab(self):
        if self.tokenizer == "bytes":
            if self.vocab_size not in (None, 258):
                raise ValueError("the byte tokenizer has vocab_size 258 (256 bytes + <eos> + <pad>); leave it out")
            self.__dict__["vocab_size"] = 258
        elif self.vocab_size is None:
            self.__dict__["vocab_size"] = 4096
        if self.corpus == "files" and not self.files:
            raise ValueError("corpus: files needs a non-empty `files` list")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave documents to train on (sum below 1)")
        return self


TASK_SPECS: dict[str, type[BaseModel]] = {
    "mqar": MQARTaskSpec,
    "mad_in_context_recall": MADInContextRecallSpec,
    "mad_noisy_in_context_recall": MADNoisyInContextRecallSpec,
    "mad_fuzzy_in_context_recall": MADFuzzyInContextRecallSpec,
    "mad_selective_copying": MADSelectiveCopyingSpec,
    "mad_compression": MADCompressionSpec,
    "mad_memorization": MADMemorizationSpec,
    "lm": LMTaskSpec,
}
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
    if task.get("name", "mqar") == "mqar":
        return max(s["seq_len"] * 1 + (task.get("repeat", 1) - 1) * 2 * s["num_kv_pairs"] for s in task["train"])
    return int(task["seq_len"])


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
    if kind == "value_error" and isinstance(value, dict):  # a model-level check (e.g. LMTaskSpec._vocab)
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
    mtype = merged.get("type", "memory")
    wrong = ATTENTION_ONLY_KEYS if mtype == "memory" else MEMORY_ONLY_KEYS
    for key in wrong:
        if key in user:
            raise marks.error(
                f"'{key}' applies to {'attention' if mtype == 'memory' else 'memory'} mixers only, "
                f"and this mixer is of type {mtype}", path + (key,), at_key=True)
    return merged


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
        for rule in violations(spec.model_dump()):
            keys = [k for k in rule.when if k != "type"]
            shown = ", ".join(f"{k}: {'(set)' if rule.when[k] == SET else rule.when[k]}" for k in keys)
            err = marks.error(f"incompatible combination {shown}: {rule.why}", where + (keys[-1],))
            err.kind = "incompatible"
            raise err
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
    if design.task.name == "mqar":
        _check_mqar(design.task, marks)
        if design.task.order == "curriculum" and design.train.devices > 1:
            raise marks.error("'curriculum' trains on one device (its batches follow the slices in order, "
                              f"which a distributed sampler would reshuffle); train.devices is {design.train.devices}",
                              ("task", "order"), hint="Set train.devices: 1 or task.order: mixed.")
    elif design.task.name.startswith("mad_"):
        _check_mad(design.task, marks)
    elif design.task.name == "lm" and design.task.corpus == "files":
        _check_lm_files(design.task.files, marks)
    for where, spec in named:
        dims = [spec.head_dim] if spec.type == "attention" else [spec.key_dim, spec.value_dim]
        if any(d is None for d in dims) and m.d_model % spec.heads:
            raise marks.error(f"d_model {m.d_model} is not divisible by heads {spec.heads}",
                              where + ("heads",), hint="Set the per-head dims explicitly or change heads.")
    return design


def _check_mqar(task: MQARTaskSpec, marks: yamlio.Marks) -> None:
    for split in ("train", "test"):
        for i, s in enumerate(getattr(task, split)):
            where = ("task", split, i)
            if s.seq_len % 2:
                raise marks.error(f"seq_len {s.seq_len} must be even (key/value pairs)", where + ("seq_len",))
            if 4 * s.num_kv_pairs > s.seq_len:
                raise marks.error(f"num_kv_pairs {s.num_kv_pairs} needs seq_len >= {4 * s.num_kv_pairs} "
                                  "(context plus query region)", where + ("num_kv_pairs",))
            if task.vocab_size <= s.seq_len:
                raise marks.error(f"vocab_size {task.vocab_size} must exceed seq_len {s.seq_len}",
                                  ("task", "vocab_size"))
            if s.num_kv_pairs >= task.vocab_size // 2 - 1:
                raise marks.error(f"num_kv_pairs {s.num_kv_pairs} exceeds the {task.vocab_size // 2 - 1} keys",
                                  where + ("num_kv_pairs",))
    if not task.train:
        raise marks.error("the training mixture is empty", ("task", "train"))
    if not task.test:
        raise marks.error("the test mixture is empty", ("task", "test"))


def _check_mad(task: BaseModel, marks: yamlio.Marks) -> None:
    """Cross-key constraints of the MAD generators (archspace.tasks.mad.check_params holds the same rules)."""
    from .tasks.mad_params import check_params  # numpy-free rules shared with the generators

    problem = check_params(task.model_dump())
    if problem is not None:
        key, msg = problem
        raise marks.error(msg, ("task", key))


def lm_file_matches(pattern: str) -> list[str]:
    """The paths one `task.files` entry of the lm task names: a glob's matches in sorted order, else itself."""
    return sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) or [pattern]


def _check_lm_files(files: list[str], marks: yamlio.Marks) -> None:
    """Every corpus entry names a file now, not after minutes of tokenising the others."""
    for i, pattern in enumerate(files):
        missing = [m for m in lm_file_matches(pattern) if not Path(m).is_file()]
        if missing:
            raise marks.error(f"no such corpus file {missing[0]!r}", ("task", "files", i),
                              hint=f"Relative paths and globs are taken from the current folder ({Path.cwd()}).")


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
