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
    kind: Literal["memory"] = "memory"


@dataclass(frozen=True)
class AttentionConfig:
    """Causal softmax attention with rotary positions, optionally a sliding window."""

    d_model: int
    heads: int
    head_dim: int
    window: Optional[int] = None  # None = global causal attention
    rope_base: float = 10000.0
    kind: Literal["attention"] = "attention"


@dataclass(frozen=True)
class SwiGLUConfig:
    """SwiGLU MLP (Shazeer 2020, https://arxiv.org/abs/2002.05202): W2 (silu(W1 x) * W3 x)."""

    d_model: int
    hidden: int
    kind: Literal["swiglu"] = "swiglu"


TokenMixerConfig = Union[MemoryConfig, AttentionConfig]
ChannelMixerConfig = Union[SwiGLUConfig]


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
        kinds = {"memory": MemoryConfig, "attention": AttentionConfig, "swiglu": SwiGLUConfig}
        layers = []
        for layer in d["layers"]:
            mixer = kinds[layer["mixer"]["kind"]](**layer["mixer"])
            mlp = None if layer["mlp"] is None else kinds[layer["mlp"]["kind"]](**layer["mlp"])
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
    """

    params: int
    state: int
    flops_per_token: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.state + other.state, self.flops_per_token + other.flops_per_token)
