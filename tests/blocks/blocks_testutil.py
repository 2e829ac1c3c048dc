"""Shared configs and helpers for the blocks tests (small dims so everything runs in seconds on CPU)."""
from __future__ import annotations

import torch

from archspace.blocks.presets import PRESETS, memory_preset

D, H, K, V = 32, 2, 8, 12

# name -> MemoryConfig of each memory preset of the grammar at the dims above (paths/chunk set per test).
MEMORY_PRESETS = {name: memory_preset(name, D, H, K, V) for name, keys in PRESETS.items() if keys["type"] == "memory"}



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
