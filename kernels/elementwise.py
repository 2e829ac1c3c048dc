"""Elementwise (vector) memory: one number per channel and head, HGRN-style.

Shapes and the op contract: kernels/common.py; here K = V (the memory is elementwise), and the read has no
scale by default (``scale`` None -> 1).

Recurrence (per batch, head and channel d, state m in R^V, float32):

    m_t = exp(g_t) (1 - b_t k_t^2) m_{t-1} + b_t k_t v_t      (products elementwise)
    o_t = scale * q_t m_t

    g      : None | [B, T, H] | [B, T, H, V]   log-decay (retention)
    beta   : None (b = 1 and no transition: the Hebbian write m += k v) | [B, T, H] | [B, T, H, V]: the step of
             the l2 bias, the memory's gradient step on 1/2 (k m - v)^2 (HGRN: dot write with k = 1 - a)
    eps    : [B, T, H, V] Longhorn's implicit step instead of beta: b = eps / (1 + eps k^2), the exact minimiser
             of (m - m_{t-1})^2 + eps (k m - v)^2 (Liu et al. 2024, https://arxiv.org/abs/2407.14207)

Functions
    naive_recurrent_elementwise  token-by-token oracle, straight from the formula
    chunk_elementwise            chunked: per chunk, m_i = exp(G_i) m_0 + sum_j exp(G_i - G_j) u_j over a
                                 [C, C, V] masked decay (G the in-chunk cumsum of the log-decays, all exponents
                                 <= 0), then one state update per chunk
    elementwise_step             one decoding step
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .common import _decay, _to_chunks

Tensor = torch.Tensor

__all__ = ["naive_recurrent_elementwise", "chunk_elementwise", "elementwise_step"]


def _terms(k: Tensor, v: Tensor, beta: Optional[Tensor], eps: Optional[Tensor], g: Optional[Tensor]):
    """The per-token log-decay [..., V] and write u [..., V] of tokens k, v [..., H, V] (fp32)."""
    k, v = k.float(), v.float()
    k2 = k * k
    if eps is not None:
        e = eps.float()
        b = e / (1.0 + e * k2)
    elif beta is not None:
        b = beta.float()
        b = b[..., None] if b.dim() == k.dim() - 1 else b
    else:
        b = None
    logd = torch.zeros_like(k) if b is None else torch.log1p(-b * k2)
    if g is not None:
        gg = g.float()
        logd = logd + (gg[..., None] if gg.dim() == k.dim() - 1 else gg)
    u = k * v if b is None else b * k * v
    return logd, u


def naive_recurrent_elementwise(q: Tensor, k: Tensor, v: Tensor, *, beta: Optional[Tensor] = None,
                                eps: Optional[Tensor] = None, g: Optional[Tensor] = None,
                                scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                                output_final_state: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """Oracle: m_t = exp(g_t) (1 - b_t k_t^2) m_{t-1} + b_t k_t v_t, o_t = scale q_t m_t, token by token.
    q, k, v: [B, T, H, V]; returns o [B, T, H, V] (v.dtype) and the final state [B, H, V] fp32 (or None)."""
    B, T, H, V = v.shape
    scale = 1.0 if scale is None else scale
    m = torch.zeros(B, H, V, device=q.device) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        b_t = None if beta is None else beta[:, t]
        e_t = None if eps is None else eps[:, t]
        logd, u = _terms(k[:, t], v[:, t], b_t, e_t, None if g is None else g[:, t])
        m = torch.exp(logd) * m + u
        outs.append(scale * q[:, t].float() * m)
    o = torch.stack(outs, 1).to(v.dtype) if outs else v.new_zeros(B, 0, H, V)
    return o, (m if output_final_state else None)


def elementwise_step(q: Tensor, k: Tensor, v: Tensor, *, beta: Optional[Tensor] = None, eps: Optional[Tensor] = None,
                     g: Optional[Tensor] = None, state: Optional[Tensor] = None,
                     scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """One token. q, k, v: [B, H, V]; gates [B, H] or [B, H, V]; state [B, H, V] fp32 or None."""
    B, H, V = v.shape
    m = torch.zeros(B, H, V, device=q.device) if state is None else state.float()
    logd, u = _terms(k, v, beta, eps, g)
    m = torch.exp(logd) * m + u
    return ((1.0 if scale is None else scale) * q.float() * m).to(v.dtype), m


def chunk_elementwise(q: Tensor, k: Tensor, v: Tensor, *, beta: Optional[Tensor] = None, eps: Optional[Tensor] = None,
                      g: Optional[Tensor] = None, scale: Optional[float] = None,
                      initial_state: Optional[Tensor] = None, output_final_state: bool = False,
                      chunk_size: int = 64) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunked form (module docstring) of ``naive_recurrent_elementwise``, same contract."""
    B, T, H, V = v.shape
    C = int(chunk_size)
    logd, u = _terms(k, v, beta, eps, g)  # [B, T, H, V]
    ld, uc = _to_chunks(logd, C), _to_chunks(u, C)  # [B, H, N, C, V]; padding: log-decay 0, write 0
    qc = _to_chunks(q, C) * (1.0 if scale is None else scale)
    N = ld.shape[2]
    G = ld.cumsum(3)  # in-chunk cumulative log-decay
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    within = _decay(G[..., :, None, :] - G[..., None, :, :], tril[..., None])  # [B, H, N, C, C, V]: exp(G_i - G_j)
    local = (within * uc[..., None, :, :]).sum(-2)  # sum_{j <= i} exp(G_i - G_j) u_j  [B, H, N, C, V]
    from_start = _decay(G)  # exp(G_i)
    m = torch.zeros(B, H, V, device=q.device) if initial_state is None else initial_state.float()
    starts = []
    for n in range(N):  # the state entering each chunk
        starts.append(m)
        m = from_start[:, :, n, -1] * m + local[:, :, n, -1]
    m0 = torch.stack(starts, 2)  # [B, H, N, V]
    o = qc * (from_start * m0[..., None, :] + local)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(v.dtype), (m if output_final_state else None)
