"""Resolved, per-layer configs that the blocks are built from: the one place where every key of a token
mixer, channel mixer and model is declared with its type, default, bounds and one-line doc.

These are plain frozen dataclasses holding names and numbers only (no classes, no callables), so that they
serialise to YAML/JSON, hash canonically and travel with an exported model. A config that exists can be built:
``__post_init__`` checks it (the axis values, the incompatibility table of blocks/compat.py, what each chosen
value requires) and raises InvalidConfig naming the key. The grammar (archspace.grammar) derives its YAML schema,
validation, error messages and suggestions from these declarations (``field_doc`` and the bounds in each field's
metadata) and resolves a user's YAML into these configs; the blocks never read YAML, environment variables or
globals.

MemoryConfig's axis fields (structure, bias, retention, update, feature_map, hierarchy) take their values from
the axis tables (blocks/axis.py and one file per axis); the options of an axis value (e.g. retention vector's
gate_rank) are added after their axis field and are written in a resolved config only where the value is
chosen (or, for grammar-v1 options, always).

Shape legend used across blocks/ and kernels/:
    B batch, T sequence length, H heads, K key dim per head, V value dim per head, D model width.
"""
import copy
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Literal, NamedTuple, Optional, Union

from .axis import AxisValue, InvalidConfig
from .bias import BIAS
from .compat import check as check_compat
from .feature_map import FEATURE_MAP
from .hierarchy import HIERARCHY
from .retention import RETENTION
from .structure import STRUCTURE
from .update import UPDATE

# The axes of the memory mixer (Miras framework, Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, plus the
# state hierarchy), in the order of MemoryConfig's fields.
MEMORY_AXES = {axis.key: axis for axis in (STRUCTURE, BIAS, RETENTION, UPDATE, FEATURE_MAP, HIERARCHY)}


def spec(default=None, doc: str = "", **meta):
    """A config field with its one-line doc and grammar metadata: pydantic-style bounds (ge, gt, le) and
    ``derived`` (the grammar leaves it out and the compiler derives it) or ``grammar_default``."""
    kw = {} if meta.pop("required", False) else {"default": default}
    return field(metadata={"doc": doc, **meta}, **kw)


def _axis_field(axis):
    return spec(axis.default, axis.describe())


def _with_axis_options(cls):
    """Add each axis value's options right after its axis field (before @dataclass reads the fields). An option
    that several values declare (the same Option) is one field, owned by all of them."""
    annotations, owners, decl = {}, {}, {}
    for name, typ in cls.__annotations__.items():
        annotations[name] = typ
        axis = MEMORY_AXES.get(name)
        for value in (axis.values() if axis is not None else ()):
            for opt in value.options:
                if opt.name in decl and decl[opt.name] != opt:
                    raise ValueError(f"option {opt.name!r} is declared twice with different definitions")
                decl[opt.name] = opt
                owners.setdefault(opt.name, []).append((name, value.name))
                annotations[opt.name] = opt.type
    for oname, opt in decl.items():
        own = tuple(owners[oname])
        shown = "; ".join(f"{a}: {', '.join(v for a2, v in own if a2 == a)}" for a in dict.fromkeys(a for a, _ in own))
        setattr(cls, oname, spec(opt.default, f"{opt.doc} ({shown})", **opt.bounds, owner=own, always=opt.always,
                                 hash_default=opt.hash_default, omit_default=opt.omit_default))
    cls.__annotations__ = annotations
    return cls


def _check_literals(cfg) -> None:
    for f in fields(cfg):
        allowed = typing.get_args(f.type) if typing.get_origin(f.type) is Literal else None
        if allowed is not None and getattr(cfg, f.name) not in allowed:
            raise InvalidConfig(f"unknown {f.name} {getattr(cfg, f.name)!r}; valid: {', '.join(map(str, allowed))}",
                                f.name)


class MemoryAxes(NamedTuple):
    """The chosen value of each axis of a MemoryConfig (the objects of the axis tables)."""

    structure: AxisValue
    bias: AxisValue
    retention: AxisValue
    update: AxisValue
    feature_map: AxisValue
    hierarchy: AxisValue


@dataclass(frozen=True)
@_with_axis_options
class MemoryConfig:
    """A memory token mixer (blocks/memory.py): a point on the axes of MEMORY_AXES plus its projections."""

    d_model: int = spec(doc="model width", required=True)
    heads: int = spec(doc="number of heads", required=True, ge=1, le=256, grammar_default=2)
    key_dim: int = spec(doc="K per head (default d_model / heads)", required=True, ge=1, le=4096, derived=True)
    value_dim: int = spec(doc="V per head (default d_model / heads)", required=True, ge=1, le=4096, derived=True)
    structure: STRUCTURE.literal = _axis_field(STRUCTURE)
    bias: BIAS.literal = _axis_field(BIAS)
    retention: RETENTION.literal = _axis_field(RETENTION)
    update: UPDATE.literal = _axis_field(UPDATE)
    feature_map: FEATURE_MAP.literal = _axis_field(FEATURE_MAP)
    key_norm: Literal["none", "l2"] = spec("none", "l2-normalise q and k per head")
    short_conv: int = spec(0, "causal depthwise conv size on q, k, v (0 = off); memory mixers and attention",
                           ge=0, le=16)
    norm: Literal["rmsnorm", "none", "groupnorm"] = spec(
        "rmsnorm", "per-head output normalisation: RMSNorm, none, or groupnorm (a LayerNorm per head with gain and bias, "
        "eps 64e-5 = head size x 1e-5 at RWKV's 64: RWKV-7's GroupNorm)")
    output_gate: bool = spec(False, "o = norm(o) * act(W_g x), act from output_gate_act")
    output_gate_act: Literal["silu", "sigmoid"] = spec(
        "silu", "the output gate's activation: silu (Gated DeltaNet, Mamba2) or sigmoid (KDA, mLSTM)", omit_default=True)
    # Fields added after grammar v1 designs were hashed: at their defaults they stay out of the design hash.
    normalizer: Literal["none", "sum"] = spec(
        "none", "sum: o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t), z_t = sum of the (decayed) phi(k_s), the linear-"
        "attention denominator (Katharopoulos et al. 2020; Based); needs bias dot and a positive feature map",
        hash_default=False)
    scale: Optional[float] = spec(None, "read scale o = scale * S^T q (null: key_dim^-0.5; Mamba2 1)", gt=0,
                                  hash_default=False)
    norm_group: Literal["head", "all"] = spec(
        "head", "output RMSNorm over each head's V channels, or over all H*V together (Mamba2's one group)",
        hash_default=False)
    gate_position: Literal["after_norm", "before_norm"] = spec(
        "after_norm", "output gate after the norm, norm(o) * act(W_g x) (GLA, Gated DeltaNet), or before it, "
        "norm(o * act(W_g x)) (Mamba2)", hash_default=False)
    conv_bias: bool = spec(False, "the short conv has a bias per channel (Mamba2)", hash_default=False)
    chunk_size: int = spec(64, "chunk length of the chunked training path", ge=1, le=1024)
    path: Literal["chunk", "reference", "triton", "auto"] = spec(
        "chunk", "kernel path: chunk (PyTorch, training), reference (token loop), triton (GPU kernels: gla and "
        "delta_rule families; an error where they cannot run) or auto (triton on a GPU, else chunk); "
        "which ops each path runs: blocks/dispatch.py")
    hierarchy: HIERARCHY.literal = _axis_field(HIERARCHY)
    # How a mini-batch memory (a deep memory, or any axis value without an exact online kernel; ``minibatch``) is
    # trained and read: choices its papers leave open, each a field at the paper's value. Written in a resolved
    # config only when set to something else (``omit_default``).
    read: Literal["after", "before"] = spec("after", "mini-batch memories: read the memory after this token's "
                                            "write (TTT, Miras) or before it (Titans' M*_{t-1}, Eq. 15/21)",
                                            omit_default=True)
    lr_max: float = spec(1.0, "mini-batch memories: the step size is lr_max * sigmoid(W_b x) (Titans' theta, TTT's "
                         "base_lr / head_dim)", gt=0, le=100, omit_default=True)
    inner_grad_clip: Optional[float] = spec(None, "mini-batch memories: scale each token's inner gradient to norm "
                                            "m tanh(|u| / m) (null = no clipping, as the papers)", gt=0, omit_default=True)
    kind: Literal["memory"] = "memory"

    def __post_init__(self):
        for f in fields(self):  # list-valued options (a YAML list) are kept as tuples: the config stays hashable
            if isinstance(f.default, tuple) and isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        _check_literals(self)
        for key in ("d_model", "heads", "key_dim", "value_dim", "chunk_size"):
            if getattr(self, key) < 1:
                raise InvalidConfig(f"{key} must be >= 1, got {getattr(self, key)}", key)
        if self.short_conv < 0:
            raise InvalidConfig(f"short_conv must be >= 0, got {self.short_conv}", "short_conv")
        check_compat({**self.to_dict(), "type": "memory"})
        for value in self.axes:
            problem = value.check(self)
            if problem is not None:
                raise InvalidConfig(problem[1], problem[0])
        if self.path == "triton":  # the only path with a design check; dispatch imports torch (and this module),
            from .dispatch import path_problem  # so `archspace validate` of other designs stays torch-free

            problem = path_problem(self)
            if problem is not None:
                raise InvalidConfig(problem[1], problem[0])
        if self.normalizer == "sum":
            if self.bias != "dot":
                raise InvalidConfig(f"normalizer 'sum' is the linear-attention denominator of a Hebbian memory "
                                    f"(bias: dot), not of the {self.bias} bias", "normalizer")
            if not self.axes.feature_map.positive:
                positive = ", ".join(n for n, v in MEMORY_AXES["feature_map"].items() if v.positive)
                raise InvalidConfig(f"normalizer 'sum' divides by phi(q).sum(phi(k)), which feature_map "
                                    f"{self.feature_map!r} can make 0 or negative; use one of {positive}",
                                    "feature_map")
        if self.scale is not None and not self.scale > 0:
            raise InvalidConfig(f"scale must be null or > 0, got {self.scale}", "scale")
        if self.gate_position == "before_norm" and not self.output_gate:
            raise InvalidConfig("gate_position 'before_norm' places the output gate: set output_gate: true",
                                "gate_position")
        if not self.minibatch:
            for key in ("read", "lr_max", "inner_grad_clip"):
                if getattr(self, key) != _DEFAULTS[key]:
                    raise InvalidConfig(
                        f"{key} applies to mini-batch memories (a deep memory, or a bias, retention or update "
                        "without an exact online kernel); this memory runs an exact kernel "
                        "(blocks/dispatch.py), which reads after the write with the bias' own step size", key)

    @property
    def state_key_dim(self) -> int:
        """K of the memory S in R^{K x V} (the feature map's width, e.g. 1 + d + d^2 for taylor2)."""
        return self.axes.feature_map.out_dim(self)

    @property
    def state_value_dim(self) -> int:
        """V of the memory: value_dim, plus the denominator's column with a sum normaliser."""
        return self.value_dim + (1 if self.normalizer == "sum" else 0)

    @property
    def axes(self) -> MemoryAxes:
        return MemoryAxes(*(axis[getattr(self, key)] for key, axis in MEMORY_AXES.items()))

    @property
    def minibatch(self) -> bool:
        """Whether the mini-batch engine computes this memory (chunk_size is then part of the model)."""
        return is_minibatch(self.to_dict())

    def to_dict(self) -> dict:
        """The fields as a dict, without the options of axis values that are not chosen and without the fields added
        after grammar v1 (``omit_default``) where they hold their default (the design hashes of v1 designs stay)."""
        out = {}
        for f in fields(self):
            owner = f.metadata.get("owner")
            value = getattr(self, f.name)
            if f.metadata.get("omit_default") and value == f.default:
                continue
            if owner is None or f.metadata.get("always") or any(getattr(self, a) == v for a, v in owner):
                out[f.name] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
        return out


def option_owners() -> dict:
    """name -> ((axis, value), ...) of every option added after grammar v1 (written only where one of its values is
    chosen): the grammar refuses such a key where none of its values is chosen, and drops a preset's where the user
    changed the value it belongs to."""
    return {f.name: f.metadata["owner"] for f in fields(MemoryConfig)
            if f.metadata.get("owner") and not f.metadata.get("always")}


_DEFAULTS = {f.name: f.default for f in fields(MemoryConfig)}


def is_minibatch(memory: dict) -> bool:
    """Whether a memory mixer's mapping (a resolved MemoryConfig dict, or a partial one: missing axes take their
    defaults) runs on the mini-batch engine: some chosen axis value has no exact online kernel."""
    return not all(axis[memory.get(key, axis.default)].is_online(memory) for key, axis in MEMORY_AXES.items()
                   if memory.get(key, axis.default) in axis)


@dataclass(frozen=True)
class AttentionConfig:
    """Causal softmax attention with rotary positions, optionally a sliding window."""

    d_model: int = spec(doc="model width", required=True)
    heads: int = spec(doc="number of heads", required=True, ge=1, le=256, grammar_default=2)
    head_dim: int = spec(doc="attention head dim (default d_model / heads)", required=True, ge=1, le=1024,
                         derived=True)
    window: Optional[int] = spec(None, "sliding window length (null = global causal)", ge=1)
    rope_base: float = spec(10000.0, "rotary embedding base", gt=0)
    short_conv: int = spec(0, "depthwise causal conv (+SiLU) kernel size on q, k, v before RoPE (0 = off)",
                           ge=0, le=16)
    kind: Literal["attention"] = "attention"

    def __post_init__(self):
        if self.head_dim % 2:
            raise InvalidConfig(f"head_dim must be even for rotary embeddings, got {self.head_dim}", "head_dim")
        if self.window is not None and self.window < 1:
            raise InvalidConfig(f"window must be >= 1 or None, got {self.window}", "window")
        if self.short_conv < 0:
            raise InvalidConfig(f"short_conv must be >= 0, got {self.short_conv}", "short_conv")


@dataclass(frozen=True)
class ConvConfig:
    """A gated short convolution, Zoology's BaseConv (blocks/conv.py): y = conv_k(u) * (W u + b) + u."""

    d_model: int = spec(doc="model width", required=True)
    short_conv: int = spec(3, "kernel size k of the depthwise causal convolution", ge=1, le=16)
    conv_bias: bool = spec(True, "the convolution has a bias per channel")
    kind: Literal["conv"] = "conv"

    def __post_init__(self):
        if self.short_conv < 1:
            raise InvalidConfig(f"a conv mixer needs short_conv (its kernel size) >= 1, got {self.short_conv}",
                                "short_conv")


@dataclass(frozen=True)
class SwiGLUConfig:
    """SwiGLU MLP (Shazeer 2020, https://arxiv.org/abs/2002.05202): W2 (silu(W1 x) * W3 x)."""

    d_model: int
    hidden: int
    kind: Literal["swiglu"] = "swiglu"


@dataclass(frozen=True)
class MoMConfig:
    """Mixture-of-Memories (Du et al. 2025, https://arxiv.org/abs/2502.13685) over any memory mixer.

    A router (linear + softmax over `memories`) picks the top_k memories per token and renormalises
    their weights; each memory has its own key/value projections (one shared pair when share_kv) and
    decays and writes only at the tokens routed to it. An optional always-on shared memory is added
    with weight 1. aux_loss_weight scales the load-balancing loss; capacity (a factor) caps the tokens
    one memory takes per sequence at ceil(capacity * T * top_k / memories).
    """

    memory: MemoryConfig
    memories: int = spec(4, "number of memories M", ge=1, le=256)
    top_k: int = spec(2, "memories each token is routed to (weights renormalised)", ge=1, le=256)
    shared_memory: bool = spec(True, "add an always-on shared memory that sees every token")
    share_kv: bool = spec(False, "one key/value projection shared by all memories")
    aux_loss_weight: float = spec(0.01, "weight of the load-balancing loss (logged as train/aux_loss)", ge=0)
    capacity: Optional[float] = spec(None, "capacity factor: a memory takes at most ceil(capacity * T * top_k / "
                                     "memories) tokens per sequence (null = no cap)", gt=0)
    kind: Literal["mom"] = "mom"

    def __post_init__(self):
        if self.memories < 1:
            raise InvalidConfig(f"memories must be >= 1, got {self.memories}", "memories")
        if self.top_k < 1 or self.top_k > self.memories:
            raise InvalidConfig(f"top_k {self.top_k} exceeds memories {self.memories}" if self.top_k > self.memories else
                                f"top_k must be >= 1, got {self.top_k}", "top_k")
        if self.capacity is not None and not self.capacity > 0:
            raise InvalidConfig(f"capacity must be null or > 0, got {self.capacity}", "capacity")
        if self.aux_loss_weight < 0:
            raise InvalidConfig(f"aux_loss_weight must be >= 0, got {self.aux_loss_weight}", "aux_loss_weight")
        check_compat({**self.memory.to_dict(), "type": "memory", "mom": {"memories": self.memories}})

    @property
    def d_model(self) -> int:
        return self.memory.d_model


@dataclass(frozen=True)
class TitansConfig:
    """A Titans composition (Behrouz et al. 2024, https://arxiv.org/abs/2501.00663) of a memory mixer
    and softmax attention with `persistent_tokens` learned tokens.

    mac  memory as context: segments of `segment` tokens; each segment attends (causally) over
         [persistent tokens, memory read for the segment, segment]; the memory then writes the
         attention output and gates it.
    mag  memory as gate: a sliding-window attention branch (window from `attention.window`) gated
         by the memory branch.
    mal  memory as layer: the memory mixer, then sliding-window attention, in one block.
    The memory is one memory mixer or, for mag and mal, a Mixture-of-Memories of them (``MoMConfig``).
    """

    memory: Union[MemoryConfig, MoMConfig]
    attention: AttentionConfig
    variant: Literal["mac", "mag", "mal"] = spec("mac", "mac: memory as context; mag: memory as gate; "
                                                 "mal: memory as layer")
    segment: int = spec(64, "mac: segment length", ge=1, le=1 << 16)
    persistent_tokens: int = spec(4, "learned tokens prepended to the attention context", ge=0, le=1024)
    kind: Literal["titans"] = "titans"

    def __post_init__(self):
        _check_literals(self)
        if self.attention.d_model != self.memory.d_model:
            raise InvalidConfig(f"attention d_model {self.attention.d_model} != memory d_model {self.memory.d_model}")
        if self.persistent_tokens < 0:
            raise InvalidConfig(f"persistent_tokens must be >= 0, got {self.persistent_tokens}", "persistent_tokens")
        if self.segment < 1:
            raise InvalidConfig(f"segment must be >= 1, got {self.segment}", "segment")
        mom = isinstance(self.memory, MoMConfig)
        leaf = self.memory.memory if mom else self.memory
        if self.variant == "mac" and leaf.minibatch and self.segment % leaf.chunk_size:
            raise InvalidConfig(f"memory as context reads the memory of each segment start: with a mini-batch memory "
                                f"(its weights move per mini-batch of chunk_size {leaf.chunk_size} tokens) the "
                                f"segment ({self.segment}) must be a multiple of chunk_size", "segment")
        check_compat({**leaf.to_dict(), "type": "memory", "titans": {"variant": self.variant},
                      **({"mom": {"memories": self.memory.memories}} if mom else {})})

    @property
    def d_model(self) -> int:
        return self.memory.d_model


@dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-Experts SwiGLU MLP (Linear-MoE, Sun et al. 2025, https://arxiv.org/abs/2503.05447):
    a softmax router picks top_k of `experts` SwiGLU experts of width `hidden` per token (weights
    renormalised), with a load-balancing loss scaled by aux_loss_weight and an optional capacity factor."""

    d_model: int
    hidden: int
    experts: int = 8
    top_k: int = 2
    aux_loss_weight: float = 0.01
    capacity: Optional[float] = None
    kind: Literal["moe"] = "moe"

    def __post_init__(self):
        if min(self.d_model, self.hidden, self.experts) < 1:
            raise InvalidConfig("d_model, hidden and experts must be positive")
        if not 1 <= self.top_k <= self.experts:
            raise InvalidConfig(f"top_k must be in [1, experts={self.experts}], got {self.top_k}", "top_k")
        if self.capacity is not None and self.capacity <= 0:
            raise InvalidConfig(f"capacity must be > 0 or None, got {self.capacity}", "capacity")


TokenMixerConfig = Union[MemoryConfig, AttentionConfig, ConvConfig, MoMConfig, TitansConfig]
ChannelMixerConfig = Union[SwiGLUConfig, MoEConfig]
CONFIG_KINDS = {"memory": MemoryConfig, "attention": AttentionConfig, "conv": ConvConfig, "swiglu": SwiGLUConfig,
                "mom": MoMConfig, "titans": TitansConfig, "moe": MoEConfig}


def hash_neutral_defaults(cls) -> dict:
    """{field: default} of a config class's fields that stay out of the design hash at their default
    (``hash_default=False``: added after designs were hashed, so existing designs keep their hashes)."""
    return {f.name: f.default for f in fields(cls) if f.metadata.get("hash_default") is False}


def field_doc(cls, name: str) -> dict:
    """The grammar metadata of field ``name`` of a config class (doc, bounds, derived, ...)."""
    return dict(next(f for f in fields(cls) if f.name == name).metadata)


def leaf_mixers(cfg) -> list:
    """The plain MemoryConfig / AttentionConfig parts of a token-mixer config (wrappers unwrapped)."""
    if isinstance(cfg, MoMConfig):
        return [cfg.memory]
    if isinstance(cfg, TitansConfig):
        return [*leaf_mixers(cfg.memory), cfg.attention]
    return [cfg]


def config_to_dict(cfg):
    """dataclasses.asdict for block configs, with MemoryConfig.to_dict for memories."""
    if isinstance(cfg, MemoryConfig):
        return cfg.to_dict()
    if is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(config_to_dict(v) for v in cfg)
    return copy.deepcopy(cfg)


def config_from_dict(d: dict):
    """Inverse of config_to_dict (nested memory/attention configs included; missing options take defaults)."""
    cls = CONFIG_KINDS[d["kind"]]
    args = dict(d)
    for key in ("memory", "attention"):
        if isinstance(args.get(key), dict):
            args[key] = config_from_dict(args[key])
    return cls(**args)


@dataclass(frozen=True)
class LayerConfig:
    """One pre-norm residual layer: x += mixer(norm(x)); x += mlp(norm(x))."""

    mixer: TokenMixerConfig
    mlp: Optional[ChannelMixerConfig]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    layers: tuple[LayerConfig, ...] = field(default_factory=tuple)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def to_dict(self) -> dict:
        d = config_to_dict(self)
        d["layers"] = list(d["layers"])
        return d

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        layers = []
        for layer in d["layers"]:
            mixer = config_from_dict(layer["mixer"])
            mlp = None if layer["mlp"] is None else config_from_dict(layer["mlp"])
            layers.append(LayerConfig(mixer=mixer, mlp=mlp))
        rest = {k: v for k, v in d.items() if k != "layers"}
        return ModelConfig(layers=tuple(layers), **rest)



@dataclass(frozen=True)
class Cost:
    """Accounting of one block (or a whole model) at a given sequence length.

    params: trainable parameters.
    state: numbers held per sequence at inference after T tokens (recurrent state, conv state,
        or the KV cache of attention).
    flops_per_token: forward FLOPs (2 per multiply-add) averaged over the T positions of a sequence.
    active_params: parameters one token uses (routed blocks: MoE, MoM); None means all of them.
    """

    params: int
    state: int
    flops_per_token: float
    active_params: Optional[int] = None

    @property
    def active(self) -> int:
        return self.params if self.active_params is None else self.active_params

    def __add__(self, other: "Cost") -> "Cost":
        active = None
        if self.active_params is not None or other.active_params is not None:
            active = self.active + other.active
        return Cost(self.params + other.params, self.state + other.state,
                    self.flops_per_token + other.flops_per_token, active)
