"""DeltaProduct and Gated DeltaProduct: n Householder (delta-rule) steps per token.

Shapes and the op contract: kernels/common.py; here also n = number of Householder steps per token.

Recurrence (per batch and head, state S in R^{K x V}, float32; Siems et al. 2025, "DeltaProduct: Improving
State-Tracking in Linear RNNs via Householder Products", https://arxiv.org/abs/2502.10297, Eq. 3):

    S_{t,0} = Diag(a_t) S_{t-1}                   a_t = exp(g_t): once per token, before the first step (optional)
    S_{t,j} = (I - b_{t,j} k_{t,j} k_{t,j}^T) S_{t,j-1} + b_{t,j} k_{t,j} v_{t,j}^T       j = 1..n
    S_t = S_{t,n},   o_t = scale * S_t^T q_t        (one query per token, read after the last step)

The transition of a token is a product of n generalised Householder matrices (identity plus rank n): with b in
(0, 2) each factor has eigenvalue 1 - b in (-1, 1) along its key, which is what state tracking (parity, S3, S5)
needs (Grazzi et al. 2024, https://arxiv.org/abs/2411.12537).

    q    : [B, T, H, K]           k : [B, T, n, H, K]         v : [B, T, n, H, V]
    beta : [B, T, n, H]           g : None | [B, T, H] (Gated DeltaProduct) | [B, T, H, K] (decay per key channel,
                                      applied before step 1 as in KDA)

Chunked form: the n steps of every token are consecutive steps of one delta rule, so the whole recurrence is the
(gated) delta rule of kernels/delta_rule.py on the interleaved sequence of length n*T (step j of token t at
position t*n + j), with the gate on each token's first step (0 elsewhere) and the query on its last step (0
elsewhere): the delta rule's a (I - b k k^T) S with the gate at step 1 is (I - b k k^T) a S, the decay before the
first Householder factor. ``chunk_size`` counts positions of that interleaved sequence.

Functions
    naive_recurrent_delta_product  token-by-token oracle, straight from the formula (n steps per token)
    chunk_delta_product            the chunked delta rule on the interleaved sequence (training)
    delta_product_step             one decoding step (one token, its n steps)
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .common import _init_state, oracle_start
from .delta_rule import chunk_delta_rule

Tensor = torch.Tensor

__all__ = ["naive_recurrent_delta_product", "chunk_delta_product", "delta_product_step"]


def _decay_state(S: Tensor, g: Optional[Tensor]) -> Tensor:
    """Diag(exp(g)) S for one token: g None, [B, H] (scalar) or [B, H, K] (per key channel); S [B, H, K, V]."""
    if g is None:
        return S
    a = torch.exp(g.float())
    return (a[:, :, :, None] if a.dim() == 3 else a[:, :, None, None]) * S


def _householder_steps(S: Tensor, k: Tensor, v: Tensor, beta: Tensor) -> Tensor:
    """S [B, H, K, V] through the n steps of one token: k [B, n, H, K], v [B, n, H, V], beta [B, n, H]."""
    for j in range(k.shape[1]):
        k_j, v_j, b_j = k[:, j].float(), v[:, j].float(), beta[:, j].float()[:, :, None, None]
        kTS = torch.einsum("bhk,bhkv->bhv", k_j, S)  # k_j^T S
        # (I - b k k^T) S + b k v^T, the rank-one products without forming a K x K matrix
        S = S - b_j * k_j[:, :, :, None] * kTS[:, :, None, :] + b_j * k_j[:, :, :, None] * v_j[:, :, None, :]
    return S


# --------------------------------------------------------------------------------------
# reference: token-by-token recurrence
# --------------------------------------------------------------------------------------
def naive_recurrent_delta_product(q: Tensor, k: Tensor, v: Tensor, *, beta: Tensor, g: Optional[Tensor] = None,
                                  scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                                  output_final_state: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """Oracle: per token S <- Diag(exp(g_t)) S, then n steps S <- (I - b k k^T) S + b k v^T; o_t = scale S_t^T q_t.

    q: [B, T, H, K]; k: [B, T, n, H, K]; v: [B, T, n, H, V]; beta: [B, T, n, H]; g: None | [B, T, H] | [B, T, H, K]
    returns o [B, T, H, V] (v.dtype) and final state [B, H, K, V] float32 (or None).
    """
    scale, S = oracle_start(q, v[:, :, 0], scale, initial_state)  # S: [B, H, K, V]
    outs = []
    for t in range(q.shape[1]):
        S = _decay_state(S, None if g is None else g[:, t])
        S = _householder_steps(S, k[:, t], v[:, t], beta[:, t])
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t].float()))  # scale * S_t^T q_t
    o = torch.stack(outs, dim=1).to(v.dtype)  # [B, T, H, V]
    return o, (S if output_final_state else None)


# --------------------------------------------------------------------------------------
# one decoding step
# --------------------------------------------------------------------------------------
def delta_product_step(q: Tensor, k: Tensor, v: Tensor, *, beta: Tensor, g: Optional[Tensor] = None,
                       state: Optional[Tensor] = None, scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """One token. q: [B, H, K]; k: [B, n, H, K]; v: [B, n, H, V]; beta: [B, n, H]; g: None | [B, H] | [B, H, K];
    state: [B, H, K, V] float32 or None (zeros). Returns o [B, H, V] (v.dtype), new state fp32."""
    B, H, K = q.shape
    if scale is None:
        scale = K ** -0.5
    S = _init_state(state, B, H, K, v.shape[-1], q.device)
    S = _householder_steps(_decay_state(S, g), k, v, beta)
    o = torch.einsum("bhkv,bhk->bhv", S, q.float() * scale)
    return o.to(v.dtype), S


# --------------------------------------------------------------------------------------
# chunked: the delta rule on the interleaved sequence
# --------------------------------------------------------------------------------------
def chunk_delta_product(q: Tensor, k: Tensor, v: Tensor, *, beta: Tensor, g: Optional[Tensor] = None,
                        scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                        output_final_state: bool = False, chunk_size: int = 64) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunkwise-parallel (gated) DeltaProduct (same contract as ``naive_recurrent_delta_product``): the chunked
    delta rule on the n*T interleaved steps (module docstring); ``chunk_size`` counts interleaved positions."""
    B, T, n, H, K = k.shape
    if scale is None:
        scale = K ** -0.5
    # [B, T, n, ...] -> [B, T*n, ...]: step j of token t at position t*n + j
    q_steps = q.new_zeros(B, T, n, H, K)
    q_steps[:, :, -1] = q  # read after the token's last step only
    g_steps = None
    if g is not None:
        g_steps = g.new_zeros(B, T, n, *g.shape[2:])
        g_steps[:, :, 0] = g  # decay once, at the token's first step
        g_steps = g_steps.reshape(B, T * n, *g.shape[2:])
    o, S = chunk_delta_rule(q_steps.reshape(B, T * n, H, K), k.reshape(B, T * n, H, K),
                            v.reshape(B, T * n, H, v.shape[-1]), beta=beta.reshape(B, T * n, H), g=g_steps,
                            scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                            chunk_size=chunk_size)
    return o.view(B, T, n, H, -1)[:, :, -1], S
