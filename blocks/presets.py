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
    # ---- The Miras design space (issue 12): deep and non-linear test-time-trained memories on the mini-batch
    # engine (kernels/minibatch.py; chunk_size is their mini-batch size). Keys each paper leaves open are
    # archspace's documented defaults (README, "Miras presets"); every key can be overridden.
    # Titans' neural long-term memory alone (Behrouz et al. 2024, https://arxiv.org/abs/2501.00663): a 2-layer MLP
    # memory, l2 loss (Eq. 12), momentum S_t = eta_t S_{t-1} - theta_t grad (Eq. 14) and data-dependent weight decay
    # M_t = (1 - alpha_t) M_{t-1} + S_t (Eq. 13), q/k/v through a conv, SiLU and l2-normalised q, k (Sec. 4.4)
    "titans_lmm": dict(type="memory", structure="mlp", bias="l2", retention="weight_decay", update="momentum",
                       feature_map="silu", key_norm="l2", short_conv=4, output_gate=True, chunk_size=16),
    # TTT-Linear / TTT-MLP (Sun et al. 2024, https://arxiv.org/abs/2407.04620, Sec. 2.7 and the released code):
    # f(x) = x + LN(f_res(x)), W_i = W_0 - c_i sum_j lr_j grad (mini-batch 16, learned token scale), lr =
    # base_lr sigmoid(w x) / head_dim (head_dim 64 in every TTT configuration: base_lr 1 -> 1/64, 0.1 -> 0.1/64)
    "ttt_linear": dict(type="memory", structure="mlp", depth=1, inner_bias=True, bias="l2", retention="none",
                       update="gd", token_scale=True, lr_max=1 / 64, short_conv=4, output_gate=True, chunk_size=16),
    "ttt_mlp": dict(type="memory", structure="mlp", depth=2, expansion=4.0, activation="gelu_tanh", inner_bias=True,
                    bias="l2", retention="none", update="gd", token_scale=True, lr_max=0.1 / 64, short_conv=4,
                    output_gate=True, chunk_size=16),
    # Miras (Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, Sec. 5.3): 2-layer MLP memories; Moneta:
    # l_p bias (p = 3, Eq. 11) with l_q retention (q = 4, Eq. 24); Yaad: Huber bias with a data-dependent threshold
    # (Eq. 16) and l2 local + global retention (Eq. 26); Memora: l2 bias with KL retention (Eq. 27)
    "moneta": dict(type="memory", structure="mlp", bias="lp", p=3.0, retention="lq", q=4.0, update="gd",
                   key_norm="l2", short_conv=4, output_gate=True, chunk_size=16),
    "yaad": dict(type="memory", structure="mlp", bias="huber", huber_form="yaad", huber_threshold="data",
                 retention="weight_decay", update="gd", key_norm="l2", short_conv=4, output_gate=True, chunk_size=16),
    "memora": dict(type="memory", structure="mlp", bias="l2", retention="kl", update="gd", key_norm="l2",
                   short_conv=4, output_gate=True, chunk_size=16),
    # ATLAS (Behrouz et al. 2025, https://arxiv.org/abs/2505.23735): the Omega rule (Eq. 9: the l2 loss over a
    # sliding window with data-dependent weights) optimised by Muon-style orthogonalised momentum (Sec. 4), weight
    # decay; its polynomial feature maps are not here
    "atlas": dict(type="memory", structure="mlp", bias="omega", omega_window=4, retention="weight_decay",
                  update="newton_schulz", feature_map="silu", key_norm="l2", short_conv=4, output_gate=True,
                  chunk_size=16),
    # Longhorn (Liu et al. 2024, https://arxiv.org/abs/2407.14207): the closed-form implicit step of online l2
    # regression per value channel, Delta = eps / (1 + eps ||k||^2); a state of 16 per channel (N = 16), one head,
    # keys and queries through the conv (+ SiLU), no key norm (the implicit step is stable), SiLU output gate
    "longhorn": dict(type="memory", structure="matrix", bias="l2", retention="none", update="implicit", heads=1,
                     key_dim=16, feature_map="identity", key_norm="none", short_conv=4, norm="none",
                     output_gate=True),
    # Causal softmax attention (global) and sliding-window attention
    "attention": dict(type="attention", window=None),
    "swa": dict(type="attention", window=128),
}


def memory_preset(name: str, d_model: int, heads: int, key_dim: int, value_dim: int, **overrides):
    """The MemoryConfig of memory preset ``name`` at these dims (``overrides``: any other MemoryConfig field)."""
    from .config import MemoryConfig

    keys = {k: v for k, v in PRESETS[name].items() if k not in ("type", "heads", "key_dim", "value_dim")}
    if PRESETS[name].get("type") != "memory":
        raise ValueError(f"preset {name!r} is not a memory mixer")
    return MemoryConfig(d_model, heads, key_dim, value_dim, **{**keys, **overrides})
