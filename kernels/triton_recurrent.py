"""Fused recurrent Triton kernel: decode one or a few tokens from a state (forward only).

Shape legend: B batch, T tokens to decode (a few), H heads, K key dim, V value dim, N sequences,
BK, BV register tiles (powers of two >= 16; K and V are padded to them by masks).

The state S [K, V-block] stays in registers (fp32) for all T tokens; one program per sequence, head and
V-block. Per token, exactly the recurrence of kernels/triton_chunk.py (and kernels/gla.py,
kernels/delta_rule.py), in the order of their ``*_step`` functions:

    S <- Diag(exp(g_t)) S                          (g: None | scalar [.., H] | vector [.., H, K])
    delta (beta given):  u_t = b_t (v_t - S^T k_t),  S <- S + k_t u_t^T
    no delta:            S <- S + k_t v_t^T
    o_t = scale * S^T q_t

For a scalar decay a (I - b k k^T) S + b k v^T = (I - b k k^T)(a S) + b k v^T, so decaying first is the
same map as the chunked form's. Training goes through chunk_gated_delta_rule: this kernel has no
backward and refuses inputs that require a gradient while autograd is recording.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .triton_chunk import _dot_config, _flat, _launch, _load_state, _scan_block_v, _scan_tiles, _tiles
from .triton_support import prepare

Tensor = torch.Tensor

__all__ = ["fused_recurrent_gated_delta_rule"]


@triton.jit
def _recurrent_fwd(q, k, v, g, beta, h0, o, ht, cu_seqlens, scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   GATE: tl.constexpr, DELTA: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                   ACC: tl.constexpr):
    """Grid (N * H, V-blocks): the tokens of one sequence, one head, one V-block."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_h, bos, eos, o_k, m_k, o_v, m_v, m_kv, p_kv = _scan_tiles(cu_seqlens, i_v, i_nh, H, K, V, BK, BV)
    b_S = _load_state(h0, i_nh, p_kv, m_kv, HAS_H0, K, V, BK, BV, ACC)
    for t in range(bos, eos):
        b_q = tl.load(q + (t * H + i_h) * K + o_k, mask=m_k, other=0.0).to(ACC) * scale
        b_k = tl.load(k + (t * H + i_h) * K + o_k, mask=m_k, other=0.0).to(ACC)
        b_v = tl.load(v + (t * H + i_h) * V + o_v, mask=m_v, other=0.0).to(ACC)
        if GATE == 1:
            b_S = b_S * tl.exp(tl.load(g + t * H + i_h).to(ACC))
        elif GATE == 2:
            b_S = b_S * tl.exp(tl.load(g + (t * H + i_h) * K + o_k, mask=m_k, other=0.0).to(ACC))[:, None]
        if DELTA:
            b_b = tl.load(beta + t * H + i_h).to(ACC)
            b_v = b_b * (b_v - tl.sum(b_S * b_k[:, None], 0))  # u = b (v - S^T k)
        b_S += b_k[:, None] * b_v[None, :]
        tl.store(o + (t * H + i_h) * V + o_v, tl.sum(b_S * b_q[:, None], 0), mask=m_v)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_kv, b_S, mask=m_kv)


def fused_recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    g: Optional[Tensor] = None,
    beta: Optional[Tensor] = None,
    scale: Optional[float] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Decode T tokens (one or a few) token by token from ``initial_state``; forward only.

    Same contract as ``chunk_gated_delta_rule`` (q, k [B, T, H, K]; v [B, T, H, V]; g None | [B, T, H] |
    [B, T, H, K]; beta None | [B, T, H]; initial_state [N, H, K, V]; cu_seqlens [N + 1]). Returns
    o [B, T, H, V] in v's dtype and the final state [N, H, K, V] in fp32 (fp64 for fp64 inputs) or None.
    A one-token step of a block is ``q[:, None]`` etc. with the block's state as initial_state.
    """
    op = "fused_recurrent_gated_delta_rule"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (q, k, v, g, beta, initial_state)):
        raise ValueError(f"{op} is a decoding kernel without a backward; call it under torch.no_grad() "
                         f"(or train through chunk_gated_delta_rule)")
    P = prepare(q, k, v, g, beta, scale, initial_state, cu_seqlens, None, op)
    ACC = _dot_config(q.dtype)[0]
    BK, BV = _tiles(P.K, P.V)[0], _scan_block_v(P, q.device)
    qf, kf, vf, gf, bf = (_flat(x, P) for x in (q, k, v, g, beta))
    o = torch.empty(P.B * P.T, P.H, P.V, dtype=v.dtype, device=q.device)
    ht = torch.empty(P.N, P.H, P.K, P.V, dtype=P.acc_dtype, device=q.device) if output_final_state else None
    h0 = None if initial_state is None else initial_state.contiguous()
    _recurrent_fwd[(P.N * P.H, triton.cdiv(P.V, BV))](
        qf, kf, vf, gf, bf, h0, o, ht, P.cu_seqlens, P.scale, H=P.H, K=P.K, V=P.V, BK=BK, BV=BV,
        GATE=P.gate, DELTA=P.delta, HAS_H0=h0 is not None, STORE_HT=bool(output_final_state), ACC=ACC,
        **_launch(q.dtype))
    return o.view(P.B, P.T, P.H, P.V), ht
