"""Shared configs and helpers for the blocks tests (small dims so everything runs in seconds on CPU)."""
from __future__ import annotations

import torch

from archspace.blocks.config import MemoryConfig

D, H, K, V = 32, 2, 8, 12

# name -> MemoryConfig mirroring the grammar presets (paths/chunk set per test).
MEMORY_PRESETS = {
    "linear_attention": MemoryConfig(D, H, K, V, bias="dot", retention="none", feature_map="elu1"),
    "retnet": MemoryConfig(D, H, K, V, bias="dot", retention="constant"),
    "mamba2": MemoryConfig(D, H, K, V, bias="dot", retention="scalar", short_conv=4, feature_map="silu"),
    "gla": MemoryConfig(D, H, K, V, bias="dot", retention="vector", gate_rank=4, output_gate=True),
    "deltanet": MemoryConfig(D, H, K, V, bias="l2", retention="none", key_norm="l2", feature_map="silu"),
    "gated_deltanet": MemoryConfig(D, H, K, V, bias="l2", retention="scalar", key_norm="l2", short_conv=4,
                                   output_gate=True, feature_map="silu"),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both vanish)."""
    denom = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / denom if denom > 0 else diff
