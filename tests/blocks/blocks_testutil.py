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


def rounding_tol(n_terms: int, dtype: torch.dtype = torch.float32) -> float:
    """Largest max-normalised difference (`rel_err`) that rounding alone can put between two evaluation
    orders of one formula in `dtype` (a chunked kernel against its token loop, a gathered token list
    against a strided one), when each compared entry sums at most `n_terms` products: recursive summation
    of n terms errs by at most about n units of rounding (Higham, "Accuracy and Stability of Numerical
    Algorithms", 2nd ed., eq. 4.4). Which order runs depends on the CPU's SIMD width and the thread count,
    so a tolerance tuned to one machine's error is not a bound on another's; this one is."""
    return n_terms * torch.finfo(dtype).eps


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both vanish)."""
    denom = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / denom if denom > 0 else diff
