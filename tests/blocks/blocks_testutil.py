"""Shared configs and helpers for the blocks tests (small dims so everything runs in seconds on CPU)."""
from __future__ import annotations

import torch

from archspace.blocks.config import is_minibatch
from archspace.blocks.presets import PRESETS, memory_preset

D, H, K, V = 32, 2, 8, 12

# name -> MemoryConfig of each memory preset with an exact kernel at the dims above (paths/chunk set per test).
MEMORY_PRESETS = {name: memory_preset(name, D, H, K, V) for name, keys in PRESETS.items()
                  if keys["type"] == "memory" and not is_minibatch(keys)}
# name -> MemoryConfig of each mini-batch (deep) memory preset (a residual memory needs K == V; chunk 4 for short
# sequences); their tests: tests/blocks/test_miras_*.py
MINIBATCH_PRESETS = {name: memory_preset(name, D, H, 8, 8, chunk_size=4) for name, keys in PRESETS.items()
                     if keys["type"] == "memory" and is_minibatch(keys)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both vanish)."""
    denom = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / denom if denom > 0 else diff


def outputs_and_input_grads(mods, x: torch.Tensor, w: torch.Tensor):
    """Run each module on its own leaf copy of x and back-propagate <y, w>: ([y], [dx]) per module."""
    xs = [x.clone().requires_grad_(True) for _ in mods]
    ys = []
    for mod, xi in zip(mods, xs):
        y = mod(xi)
        (y * w).sum().backward()
        ys.append(y.detach())
    return ys, [xi.grad for xi in xs]
