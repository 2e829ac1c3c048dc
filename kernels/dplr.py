"""Diagonal-plus-low-rank (DPLR) transition: the generalised delta rule of RWKV-7.

Shapes and the op contract: kernels/common.py.

Recurrence (per batch and head, state S in R^{K x V}, float32):

    S_t = (Diag(exp(g_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T
    o_t = scale * S_t^T q_t                                       (read after the write)

    a : [B, T, H, K]  the READ vector of the low-rank term (a_t^T S_{t-1} is what it removes or moves)
    b : [B, T, H, K]  the WRITE direction of the low-rank term
    g : None | [B, T, H, K]  per-key-channel log-decay (None: no decay)

Argument names follow fla's generalised delta rule (fla-org/flash-linear-attention ``ops/generalized_delta_rule``):
``a`` reads and ``b`` writes, so the transition is Diag(w) + b a^T in this K x V convention (the issue's and some
papers' "Diag(w) + a b^T" names the two vectors the other way round).

RWKV-7 "Goose" (Peng et al. 2025, https://arxiv.org/abs/2503.14456, Eq. 16-17) keeps its state with rows =
value channels, S_t = S_{t-1} (Diag(w_t) - kh_t^T (a_t * kh_t)) + v_t^T k~_t; transposed to K x V:

    S_t = (Diag(w_t) - (a_t * kh_t) kh_t^T) S_{t-1} + k~_t v_t^T,     o_t = S_t^T r_t    (scale 1)

i.e. this op with a = -kh (the unit removal key), b = a_iclr * kh (per-channel in-context learning rate),
k = k~ (the replacement key), q = r, g = log w. (shared/DESIGN.md writes the low-rank term as kh (a * kh)^T, its
transpose: the two agree only for a scalar a.) Kimi Delta Attention is the special case a = -(k * exp(g)),
b = beta k, k <- beta k (checked in tests/kernels/test_dplr.py).

Functions
    naive_recurrent_dplr  token-by-token oracle, straight from the formula
    chunk_dplr            chunkwise-parallel form for training (pure PyTorch, autograd)
    dplr_step             one decoding step
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .common import (_bmm_add, _decay, _init_state, _intra_scores, _to_chunks, chunk_operands, oracle_start,
                     unit_lower_inverse)

Tensor = torch.Tensor

__all__ = ["naive_recurrent_dplr", "chunk_dplr", "dplr_step"]


def _transition(S: Tensor, a: Tensor, b: Tensor, g: Optional[Tensor]) -> Tensor:
    """(Diag(exp(g)) + b a^T) S for one token: S [B, H, K, V]; a, b, g [B, H, K] (g may be None)."""
    sa = torch.einsum("bhk,bhkv->bhv", a.float(), S)  # a^T S_{t-1}: read before the decay
    if g is not None:
        S = torch.exp(g.float())[:, :, :, None] * S  # Diag(w_t) S_{t-1}: row i by w_t[i]
    return S + b.float()[:, :, :, None] * sa[:, :, None, :]  # + b (a^T S_{t-1})


# --------------------------------------------------------------------------------------
# reference: token-by-token recurrence
# --------------------------------------------------------------------------------------
def naive_recurrent_dplr(q: Tensor, k: Tensor, v: Tensor, *, a: Tensor, b: Tensor, g: Optional[Tensor] = None,
                         scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                         output_final_state: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """Oracle: S_t = (Diag(exp(g_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.

    q, k, a, b: [B, T, H, K]; v: [B, T, H, V]; g: None | [B, T, H, K]
    returns o [B, T, H, V] (v.dtype) and final state [B, H, K, V] float32 (or None).
    """
    scale, S = oracle_start(q, v, scale, initial_state)  # S: [B, H, K, V]
    outs = []
    for t in range(q.shape[1]):
        S = _transition(S, a[:, t], b[:, t], None if g is None else g[:, t])
        S = S + k[:, t].float()[:, :, :, None] * v[:, t].float()[:, :, None, :]  # + k_t v_t^T
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t].float()))  # scale * S_t^T q_t
    o = torch.stack(outs, dim=1).to(v.dtype)  # [B, T, H, V]
    return o, (S if output_final_state else None)


# --------------------------------------------------------------------------------------
# one decoding step
# --------------------------------------------------------------------------------------
def dplr_step(q: Tensor, k: Tensor, v: Tensor, *, a: Tensor, b: Tensor, g: Optional[Tensor] = None,
              state: Optional[Tensor] = None, scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """One token. q, k, a, b: [B, H, K]; v: [B, H, V]; g: None | [B, H, K]; state: [B, H, K, V] float32 or None
    (zeros). Returns o [B, H, V] (v.dtype), new state fp32."""
    B, H, K = q.shape
    if scale is None:
        scale = K ** -0.5
    S = _transition(_init_state(state, B, H, K, v.shape[-1], q.device), a, b, g)
    S = S + k.float()[:, :, :, None] * v.float()[:, :, None, :]
    o = torch.einsum("bhkv,bhk->bhv", S, q.float() * scale)
    return o.to(v.dtype), S


# --------------------------------------------------------------------------------------
# chunkwise form
# --------------------------------------------------------------------------------------
def chunk_dplr(q: Tensor, k: Tensor, v: Tensor, *, a: Tensor, b: Tensor, g: Optional[Tensor] = None,
               scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
               output_final_state: bool = False, chunk_size: int = 64) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunkwise-parallel DPLR recurrence (same contract as ``naive_recurrent_dplr``).

    Derivation (the WY form of the generalised delta rule; fla ``ops/generalized_delta_rule/dplr`` computes the
    same quantities). Inside one chunk with entering state S_0, inclusive cumsum G_i = sum_{l<=i} g_l and
    exclusive cumsum G-_i = G_{i-1} (G-_0 = 0), let u_i = S_{i-1}^T a_i in R^V (what the low-rank term reads at
    step i, before that step's decay). Unrolling S_i = Diag(e^{g_i}) S_{i-1} + b_i u_i^T + k_i v_i^T gives
        S_i = Diag(e^{G_i}) S_0 + sum_{j<=i} Diag(e^{G_i - G_j}) (k_j v_j^T + b_j u_j^T)
        u_i = (a_i * e^{G-_i})^T S_0 + sum_{j<i} [A_ak]_ij v_j + [A_ab]_ij u_j
    with the four intra-chunk matrices (every exponent <= 0 where kept)
        A_ab[i,j] = sum_d a_id b_jd e^{G-_id - G_jd}  (j < i)     A_ak[i,j] = sum_d a_id k_jd e^{G-_id - G_jd}  (j < i)
        A_qk[i,j] = sum_d q_id k_jd e^{G_id - G_jd}   (j <= i)    A_qb[i,j] = sum_d q_id b_jd e^{G_id - G_jd}   (j <= i)
    so (I - A_ab) U~ = A_ak V + (A * e^{G-}) S_0: one unit-lower-triangular solve per chunk gives
        U = (I - A_ab)^{-1} A_ak V,   W = (I - A_ab)^{-1} (A * e^{G-}),   U~ = U + W S_0
        O   = (Q * e^{G}) S_0 + A_qk V + A_qb U~                      (q pre-scaled)
        S_C = Diag(e^{G_C}) S_0 + (K * e^{G_C - G})^T V + (B * e^{G_C - G})^T U~
    Only U~ and S_C are sequential over chunks (two matmuls per chunk); the scores are matmuls through reference
    rows (kernels/common.py's ``_intra_scores``), exact for any gate. Padding of T uses q = k = v = a = b = 0 and g = 0 (the identity).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = int(chunk_size)
    qc, kc, vc, _ = chunk_operands(q, k, v, scale, C)  # [B, H, N, C, K|V]
    ac, bc = _to_chunks(a, C), _to_chunks(b, C)  # [B, H, N, C, K]
    N = qc.shape[2]
    G = torch.zeros_like(ac) if g is None else _to_chunks(g, C).cumsum(-2)  # inclusive [B, H, N, C, K]
    Gx = F.pad(G[..., :-1, :], (0, 0, 1, 0))  # exclusive: G-_i = G_{i-1} exactly, G-_0 = 0

    g_max = 0.0 if g is None or g.numel() == 0 else float(g.detach().abs().amax())
    A_ab = _intra_scores(ac, bc, Gx, g_max, G_col=G, strict=True)  # [B, H, N, C, C]
    A_ak = _intra_scores(ac, kc, Gx, g_max, G_col=G, strict=True)
    A_qk = _intra_scores(qc, kc, G, g_max)
    A_qb = _intra_scores(qc, bc, G, g_max)
    Tinv = unit_lower_inverse(-A_ab)  # (I - A_ab)^{-1}
    U = Tinv @ (A_ak @ vc)  # [B, H, N, C, V]
    W = Tinv @ (ac * _decay(Gx))  # [B, H, N, C, K]

    G_last = G[..., -1:, :]  # [B, H, N, 1, K]
    to_end = _decay(G_last - G)  # e^{G_C - G_j}
    dS_kv = (kc * to_end).transpose(-1, -2) @ vc  # the k v^T writes' share of S_C: [B, H, N, K, V]
    b_st_T = (bc * to_end).transpose(-1, -2).contiguous()  # [B, H, N, K, C]
    decay_last = _decay(G_last).transpose(-1, -2)  # [B, H, N, K, 1]

    # sequential scan over chunks (unbind once, as in kernels/delta_rule.py)
    S = _init_state(initial_state, B, H, K, V, q.device).reshape(B * H, K, V)
    U_n, W_n, dS_n = U.transpose(1, 2).unbind(1), W.transpose(1, 2).unbind(1), dS_kv.transpose(1, 2).unbind(1)
    Bst_n, a_n = b_st_T.transpose(1, 2).unbind(1), decay_last.transpose(1, 2).unbind(1)
    states, reads = [], []
    for n in range(N):
        states.append(S)
        u = torch.baddbmm(U_n[n].reshape(B * H, -1, V), W_n[n].reshape(B * H, -1, K), S)  # U~ = U + W S_0
        reads.append(u)
        S = torch.baddbmm(a_n[n].reshape(B * H, K, 1) * S + dS_n[n].reshape(B * H, K, V),
                          Bst_n[n].reshape(B * H, K, -1), u)
    S_prev = torch.stack([st.view(B, H, K, V) for st in states], dim=2)  # [B, H, N, K, V]
    U_t = torch.stack([u.view(B, H, C, V) for u in reads], dim=2)  # [B, H, N, C, V]
    S = S.view(B, H, K, V)

    o = _bmm_add(A_qk @ vc + A_qb @ U_t, qc * _decay(G), S_prev)  # [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(v.dtype), (S if output_final_state else None)
