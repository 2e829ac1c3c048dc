"""Shared configs and helpers for the blocks tests (small dims so everything runs in seconds on CPU)."""
from __future__ import annotations

import torch

from archspace.blocks.presets import PRESETS, memory_preset

D, H, K, V = 32, 2, 8, 12

# name -> MemoryConfig of each memory preset of the grammar at the dims above (paths/chunk set per test).
MEMORY_PRESETS = {name: memory_preset(name, D, H, K, V) for name, keys in PRESETS.items() if keys["type"] == "memory"}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both vanish)."""
    denom = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / denom if denom > 0 else diff
