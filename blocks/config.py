"""Resolved, per-layer configs that the blocks are built from.

These are plain frozen dataclasses holding names and numbers only (no classes, no callables),
so that they serialise to YAML/JSON, hash canonically and travel with an exported model.
The grammar (archspace.grammar) validates a user's YAML and resolves it into these; the blocks
never read YAML, environment variables or globals.

Shape legend used across blocks/ and kernels/:
    B batch, T sequence length, H heads, K key dim per head, V value dim per head, D model width.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, Optional, Union

# Axis vocabularies of the memory-mixer grammar (Miras framework, Behrouz et al. 2025,
# https://arxiv.org/abs/2504.13173). Version 1 covers the matrix-memory family.
STRUCTURES = ("matrix",)
BIASES = ("dot", "l2")  # dot: Hebbian write S += k v^T; l2: delta rule (one GD step on ||S^T k - v||^2)
RETENTIONS = ("none", "constant", "scalar", "vector")  # none | RetNet | Mamba2 | GLA
UPDATES = ("gd",)  # one gradient step per token
FEATURE_MAPS = ("identity", "elu1", "silu", "relu")
KEY_NORMS = ("none", "l2")
KERNEL_PATHS = ("chunk", "reference")
HIERARCHIES = ("none", "log_linear")  # log_linear: Fenwick-tree levels (Guo et al. 2025, arXiv:2506.04761)
TITANS_VARIANTS = ("mac", "mag", "mal")  # Titans (Behrouz et al. 2024, arXiv:2501.00663)


@dataclass(frozen=True)
class MemoryConfig:
    """A matrix-memory token mixer: S_t in R^{K x V} per head, o_t = scale * S_t^T q_t (read after write)."""

    d_model: int
    heads: int
    key_dim: int  # K, per head
    value_dim: int  # V, per head
    structure: Literal["matrix"] = "matrix"
    bias: Literal["dot", "l2"] = "dot"
    retention: Literal["none", "constant", "scalar", "vector"] = "none"
    update: Literal["gd"] = "gd"
    feature_map: Literal["identity", "elu1", "silu", "relu"] = "identity"
    key_norm: Literal["none", "l2"] = "none"  # l2-normalise q and k per head
    short_conv: int = 0  # depthwise causal conv kernel size on q, k, v (0 = off)
    norm: Literal["rmsnorm", "none"] = "rmsnorm"  # per-head output norm
    output_gate: bool = False  # o = norm(o) * silu(W_g x)
    gate_rank: int = 16  # low-rank projection for the vector (GLA) gate
    gate_temperature: float = 16.0  # GLA: log a_t = logsigmoid(.) / temperature
    chunk_size: int = 64
    path: Literal["chunk", "reference"] = "chunk"
    # Log-linear memory: O(log T) Fenwick-level states read with data-dependent per-level weights
    # lambda_t = softplus(W_l x_t) [H, levels]; tokens beyond the top level share the last level.
    hierarchy: Literal["none", "log_linear"] = "none"
    levels: int = 16  # Fenwick levels (covers 2**(levels-1) tokens before the last level saturates)
    kind: Literal["memory"] = "memory"


@dataclass(frozen=True)
class AttentionConfig:
    """Causal softmax attention with rotary positions, optionally a sliding window."""

    d_model: int
    heads: int
    head_dim: int
    window: Optional[int] = None  # None = global causal attention
    rope_base: float = 10000.0
    short_conv: int = 0  # depthwise causal conv (+SiLU) kernel size on q, k, v before RoPE (0 = off)
    kind: Literal["attention"] = "attention"


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
    memories: int = 4
    top_k: int = 2
    shared_memory: bool = True
    share_kv: bool = False
    aux_loss_weight: float = 0.01
    capacity: Optional[float] = None
    kind: Literal["mom"] = "mom"

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
    """

    memory: MemoryConfig
    attention: AttentionConfig
    variant: Literal["mac", "mag", "mal"] = "mac"
    segment: int = 64
    persistent_tokens: int = 4
    kind: Literal["titans"] = "titans"

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


TokenMixerConfig = Union[MemoryConfig, AttentionConfig, MoMConfig, TitansConfig]
ChannelMixerConfig = Union[SwiGLUConfig, MoEConfig]
CONFIG_KINDS = {"memory": MemoryConfig, "attention": AttentionConfig, "swiglu": SwiGLUConfig,
                "mom": MoMConfig, "titans": TitansConfig, "moe": MoEConfig}


def leaf_mixers(cfg) -> list:
    """The plain MemoryConfig / AttentionConfig parts of a token-mixer config (wrappers unwrapped)."""
    if isinstance(cfg, MoMConfig):
        return [cfg.memory]
    if isinstance(cfg, TitansConfig):
        return [cfg.memory, cfg.attention]
    return [cfg]


def config_from_dict(d: dict):
    """Inverse of dataclasses.asdict for block configs (nested memory/attention configs included)."""
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
        d = asdict(self)
        d["layers"] = [asdict(layer) for layer in self.layers]
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


def kernel_paths(model: ModelConfig) -> list[str]:
    """Which computation each layer's token mixer runs (logged with every run), e.g. "delta_rule:chunk",
    "log_linear:chunk", "mom4(gla:chunk)", "titans-mac(delta_rule:chunk+sdpa)"."""
    def leaf(m) -> str:
        if isinstance(m, MemoryConfig):
            op = "log_linear" if m.hierarchy == "log_linear" else ("delta_rule" if m.bias == "l2" else "gla")
            return f"{op}:{m.path}"
        if isinstance(m, AttentionConfig):
            return "sdpa" if m.window is None else f"sdpa:window{m.window}"
        return type(m).__name__

    out = []
    for layer in model.layers:
        mx = layer.mixer
        inner = "+".join(leaf(m) for m in leaf_mixers(mx))
        if mx.kind == "mom":
            out.append(f"mom{mx.memories}({inner})")
        elif mx.kind == "titans":
            out.append(f"titans-{mx.variant}({inner})")
        else:
            out.append(inner)
    return out
