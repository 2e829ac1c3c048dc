"""Helpers shared by the chunked kernels (gla, delta_rule): decay factors, chunking, state init.

Shape legend: B batch, T length, H heads, K key dim, V value dim, N chunks, C chunk length.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Decay factors exp(x) for x <= 0 with x < _FLUSH flushed to an exact 0. exp(-60) ~ 1e-26 is
# far below fp32 resolution of any term it multiplies, while letting such factors underflow to
# subnormals (x < -87) makes every later CPU op on them ~100x slower.
_FLUSH = -60.0


def _decay(x: Tensor, mask: Optional[Tensor] = None, flush: bool = True) -> Tensor:
    """exp(x) where ``mask`` (if given) and x >= _FLUSH, else exactly 0; the gradient is 0 there.
    ``flush=False`` skips the threshold test: only for callers that know x >= _FLUSH."""
    if not flush:
        return torch.exp(x if mask is None else torch.where(mask, x, -math.inf))
    keep = x >= _FLUSH
    if mask is not None:
        keep = keep & mask
    return torch.exp(torch.where(keep, x, -math.inf))


def _needs_flush(G: Tensor) -> bool:
    """Whether some in-chunk difference G_i - G_j (G: [..., C] scalar cumsums) can be < _FLUSH."""
    return bool((G.amax(-1) - G.amin(-1)).amax() > -_FLUSH)


def _bmm_add(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """acc + a @ b in one batched GEMM (baddbmm), over any number of leading batch dims."""
    lead = acc.shape[:-2]
    out = torch.baddbmm(
        acc.reshape(-1, *acc.shape[-2:]), a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    )
    return out.view(*lead, *acc.shape[-2:])


def _init_state(initial_state: Optional[Tensor], B: int, H: int, K: int, V: int, device) -> Tensor:
    if initial_state is None:
        return torch.zeros(B, H, K, V, dtype=torch.float32, device=device)
    return initial_state.float()


def _to_chunks(x: Tensor, C: int) -> Tensor:
    """[B, T, H, *D] -> [B, H, N, C, *D] float32 contiguous, zero-padded along T to N*C."""
    B, T, H = x.shape[:3]
    rest = x.shape[3:]
    N = -(-T // C)
    x = x.float()
    if N * C != T:
        pad = [0, 0] * len(rest) + [0, 0, 0, N * C - T]  # F.pad lists dims from the last one
        x = F.pad(x, pad)
    x = x.reshape(B, N, C, H, *rest)
    perm = (0, 3, 1, 2) + tuple(range(4, 4 + len(rest)))
    return x.permute(perm).contiguous()
