"""Published models as points of the token-mixer grammar, written once: the grammar expands ``preset:`` from this
table (keys given next to it override these), the tests build their configs from it.

Each entry is a mapping of token-mixer keys (the fields of blocks/config.py's MemoryConfig / AttentionConfig, plus
``type``); a preset names values of the axes in blocks/axis.py.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "memory_preset"]

def _memory(bias: str, retention: str, feature_map: str, key_norm: str, short_conv: int, output_gate: bool) -> dict:
    return dict(type="memory", bias=bias, retention=retention, feature_map=feature_map, key_norm=key_norm,
                short_conv=short_conv, output_gate=output_gate)


PRESETS: dict[str, dict[str, Any]] = {
    # Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236 : S_t = S_{t-1} + phi(k_t) v_t^T
    "linear_attention": _memory("dot", "none", "elu1", "none", 0, False),
    # RetNet, Sun et al. 2023, https://arxiv.org/abs/2307.08621 : fixed decay 1 - 2^(-5-h) per head, swish gate
    "retnet": _memory("dot", "constant", "identity", "none", 0, True),
    # Mamba2 / SSD, Dao & Gu 2024, https://arxiv.org/abs/2405.21060 : data-dependent scalar decay per head
    "mamba2": _memory("dot", "scalar", "identity", "none", 4, True),
    # GLA, Yang et al. 2023, https://arxiv.org/abs/2312.06635 : data-dependent vector decay (low-rank gate)
    "gla": _memory("dot", "vector", "identity", "none", 0, True),
    # DeltaNet, Yang et al. 2024, https://arxiv.org/abs/2406.06484 : delta rule, l2-normalised silu keys
    "deltanet": _memory("l2", "none", "silu", "l2", 4, False),
    # Gated DeltaNet, Yang et al. 2024, https://arxiv.org/abs/2412.06464 : delta rule with scalar decay
    "gated_deltanet": _memory("l2", "scalar", "silu", "l2", 4, True),
    # Kimi Delta Attention (Kimi Linear, Moonshot AI 2025, https://arxiv.org/abs/2510.26692): the delta rule with
    # a per-key-channel decay (Mamba2's gate per channel); sigmoid output gate (fla: low rank, here full rank)
    "kda": {**_memory("l2", "kda", "silu", "l2", 4, True), "output_gate_act": "sigmoid"},
    # DeltaProduct, Siems et al. 2025, https://arxiv.org/abs/2502.10297: 2 Householder steps per token with step
    # sizes in (0, 2) (the paper's [-1, 1] eigenvalues, fla's default), no decay; gated: Gated DeltaNet's scalar gate
    "deltaproduct": {**_memory("l2", "none", "silu", "l2", 4, False), "update": "householder", "n_householder": 2,
                     "beta_range": [0.0, 2.0]},
    "gated_deltaproduct": {**_memory("l2", "scalar", "silu", "l2", 4, True), "update": "householder",
                           "n_householder": 2, "beta_range": [0.0, 2.0]},
    # RWKV-7 "Goose", Peng et al. 2025, https://arxiv.org/abs/2503.14456: the diagonal-plus-low-rank transition with
    # its decay LoRA (rank gate_rank), token shift, bonus and per-head GroupNorm; output gate silu (RWKV-7: a LoRA)
    "rwkv7": {**_memory("rwkv7", "rwkv7", "identity", "none", 0, True), "norm": "groupnorm", "gate_rank": 32},
    # HGRN2, Qin et al. 2024, https://arxiv.org/abs/2404.07904: GLA with the key tied to the forget gate (k = 1 - f),
    # silu queries (fla's HGRN2); the lower bound of the forget gate is a field (0 = none)
    "hgrn2": _memory("dot", "hgrn2", "silu", "none", 0, False),
    # mLSTM, Beck et al. 2024, https://arxiv.org/abs/2405.04517 (gates as in xLSTM 7B, arXiv 2503.13427): exponential
    # input gate, sigmoid forget gate per head, normaliser and max-stabiliser; sigmoid output gate
    "mlstm": {**_memory("mlstm", "forget", "identity", "none", 0, True), "output_gate_act": "sigmoid"},
    # Causal softmax attention (global) and sliding-window attention
    "attention": dict(type="attention", window=None),
    "swa": dict(type="attention", window=128),
}


def memory_preset(name: str, d_model: int, heads: int, key_dim: int, value_dim: int, **overrides):
    """The MemoryConfig of memory preset ``name`` at these dims (``overrides``: any other MemoryConfig field)."""
    from .config import MemoryConfig

    keys = {k: v for k, v in PRESETS[name].items() if k != "type"}
    if PRESETS[name].get("type") != "memory":
        raise ValueError(f"preset {name!r} is not a memory mixer")
    return MemoryConfig(d_model, heads, key_dim, value_dim, **{**keys, **overrides})
