"""(Gated) delta rule: DeltaNet and Gated DeltaNet.

Shapes and the op contract: kernels/common.py.

Recurrence (per batch and head, state S in R^{K x V}, float32):

    S_t = (I - b_t k_t k_t^T) Diag(a_t) S_{t-1} + b_t k_t v_t^T ,   a_t = exp(g_t)
    o_t = scale * S_t^T q_t

    beta (b) : [B, T, H], in (0, 1), or in (0, 2) for negative eigenvalues of the transition (its eigenvalue
               along k is 1 - b: Grazzi et al. 2024, https://arxiv.org/abs/2411.12537); any b is computed exactly;
               or [B, T, H, V], one step per value column (column d of S is an independent delta rule:
               Longhorn's implicit step, see below)
    g        : None  -> DeltaNet        (Yang et al. 2024, https://arxiv.org/abs/2406.06484)
               [B, T, H] scalar log-decay -> Gated DeltaNet (Yang et al. 2024,
                                             https://arxiv.org/abs/2412.06464); a scalar commutes with the
                                             Householder factor: a (I - b k k^T) S
               [B, T, H, K] per key channel -> Kimi Delta Attention (KDA, Kimi Linear, Moonshot AI 2025,
                                             https://arxiv.org/abs/2510.26692): the decay acts FIRST,
                                             (I - b k k^T) Diag(a) S, which differs from Diag(a) (I - b k k^T) S
                                             for a vector gate

Keys are expected to be l2-normalised by the caller; the kernels are exact for any k.

Longhorn (Liu et al. 2024, https://arxiv.org/abs/2407.14207): the implicit (proximal) step of the same l2 loss,
per value channel d: s_t = argmin_s ||s - s_{t-1}||^2 + eps_d (s^T k_t - v_d)^2, whose closed form (Sherman-
Morrison) is the delta rule with b_d = eps_d / (1 + eps_d ||k_t||^2): ``*_implicit_delta_rule`` take
eps [B, T, H, V] in (0, 1) and any keys (the transition's eigenvalue 1 / (1 + eps ||k||^2) is in (0, 1]).

Functions
    naive_recurrent_delta_rule  token-by-token oracle, straight from the formula
    chunk_delta_rule            chunkwise WY/UT form for training (pure PyTorch, autograd)
    delta_rule_step             one decoding step
    naive_implicit_delta_rule, chunk_implicit_delta_rule, implicit_delta_rule_step   Longhorn's step
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .common import (_bmm_add, _decay, _init_state, _intra_scores, _needs_flush, _to_chunks, chunk_operands,
                     oracle_start, unit_lower_inverse)

Tensor = torch.Tensor

__all__ = ["naive_recurrent_delta_rule", "chunk_delta_rule", "delta_rule_step", "naive_implicit_delta_rule",
           "chunk_implicit_delta_rule", "implicit_delta_rule_step"]


def _column_beta(b: Tensor) -> Tensor:
    """A token's step [B, H] or [B, H, V] as a factor of S's columns: [B, H, 1, 1] or [B, H, 1, V]."""
    return b[..., None, None] if b.dim() == 2 else b[..., None, :]


# --------------------------------------------------------------------------------------
# reference: token-by-token recurrence
# --------------------------------------------------------------------------------------
def naive_recurrent_delta_rule(q: Tensor, k: Tensor, v: Tensor, *, beta: Tensor, g: Optional[Tensor] = None,
                               scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                               output_final_state: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """Oracle: S_t = (I - b_t k_t k_t^T) Diag(a_t) S_{t-1} + b_t k_t v_t^T, o_t = scale S_t^T q_t.

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; g: None | [B, T, H] | [B, T, H, K]
    returns o [B, T, H, V] (v.dtype) and final state [B, H, K, V] float32 (or None).
    """
    scale, S = oracle_start(q, v, scale, initial_state)  # S: [B, H, K, V]
    vector = g is not None and g.dim() == q.dim()
    outs = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t = q[:, t].float(), k[:, t].float(), v[:, t].float()  # [B, H, K|V]
        b_t = _column_beta(beta[:, t].float())  # [B, H, 1, 1], or [B, H, 1, V] per value column
        if vector:
            S = torch.exp(g[:, t].float())[:, :, :, None] * S  # KDA: Diag(a_t) S_{t-1} first, row i by a_t[i]
        # (I - b k k^T) S = S - b k (k^T S): the rank-one product, without forming a K x K matrix
        kTS = torch.einsum("bhk,bhkv->bhv", k_t, S)  # k_t^T S_{t-1}
        S = S - b_t * k_t[:, :, :, None] * kTS[:, :, None, :]
        if g is not None and not vector:
            S = torch.exp(g[:, t].float())[:, :, None, None] * S  # a_t (...)
        S = S + b_t * k_t[:, :, :, None] * v_t[:, :, None, :]  # + b_t k_t v_t^T
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q_t))  # scale * S_t^T q_t
    o = torch.stack(outs, dim=1).to(v.dtype)  # [B, T, H, V]
    return o, (S if output_final_state else None)


# --------------------------------------------------------------------------------------
# one decoding step
# --------------------------------------------------------------------------------------
def delta_rule_step(q: Tensor, k: Tensor, v: Tensor, *, beta: Tensor, g: Optional[Tensor] = None,
                    state: Optional[Tensor] = None, scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """One token. q, k: [B, H, K]; v: [B, H, V]; beta: [B, H]; g: None | [B, H] | [B, H, K];
    state: [B, H, K, V] float32 or None (zeros). Returns o [B, H, V] (v.dtype), new state fp32."""
    B, H, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K ** -0.5
    out_dtype = v.dtype
    S = _init_state(state, B, H, K, V, q.device)
    b = beta.float()
    k, v, b = k.float(), v.float(), (b[:, :, None] if b.dim() == 2 else b)  # b: [B, H, 1] or [B, H, V]
    if g is not None:
        a = torch.exp(g.float())
        S = (a[:, :, :, None] if a.dim() == 3 else a[:, :, None, None]) * S  # Diag(a_t) S_{t-1} (or a_t S_{t-1})
    # a (I - b k k^T) S + b k v^T = aS + k (b (v - (aS)^T k))^T : the "delta" form
    u = b * (v - torch.einsum("bhkv,bhk->bhv", S, k))  # [B, H, V]
    S = S + k[:, :, :, None] * u[:, :, None, :]
    o = torch.einsum("bhkv,bhk->bhv", S, q.float() * scale)
    return o.to(out_dtype), S


# --------------------------------------------------------------------------------------
# chunkwise WY / UT form
# --------------------------------------------------------------------------------------
def chunk_delta_rule(q: Tensor, k: Tensor, v: Tensor, *, beta: Tensor, g: Optional[Tensor] = None,
                     scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                     output_final_state: bool = False, chunk_size: int = 64) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunkwise-parallel (gated) delta rule (same contract as ``naive_recurrent_delta_rule``).

    Derivation (DeltaNet, Yang et al. 2024, Sec. 3.2 "chunkwise parallel form" with the
    WY/UT representation; the decay folded in as in Gated DeltaNet, Yang et al. 2024, Sec. 3.3).
    Inside one chunk, with S_0 the entering state, G the inclusive cumsum of g and
    gamma_i = exp(G_i), write the update as S_i = a_i S_{i-1} + k_i d_i^T with the
    "pseudo-value" d_i = b_i (v_i - a_i S_{i-1}^T k_i). Unrolling gives
        S_i = gamma_i S_0 + sum_{j<=i} exp(G_i - G_j) k_j d_j^T
        d_i + b_i sum_{j<i} exp(G_i - G_j) (k_i . k_j) d_j = b_i v_i - b_i gamma_i S_0^T k_i
    i.e. (I + L) D = diag(b) V - diag(b gamma) K S_0 with
        L = tril(diag(b) (K K^T * Gamma), -1),  Gamma_ij = exp(G_i - G_j)   (UT transform)
    so with U = (I + L)^{-1} diag(b) V and W = (I + L)^{-1} diag(b gamma) K (one
    unit-lower-triangular solve per chunk, batched over all chunks):
        D      = U - W S_0
        O      = (Q * gamma) S_0 + tril(Q K^T * Gamma) D
        S_C    = gamma_C S_0 + (K * exp(G_C - G))^T D
    Only the D / S_C recurrence over chunks is sequential (two matmuls per chunk); the output
    is computed for all chunks at once afterwards. All exponents are <= 0 (masked before exp).
    A vector gate g [B, T, H, K] (KDA) runs the same steps with per-channel factors (see the branch below).
    Padding of T uses k = v = q = 0, b = 0, g = 0, which leaves the state unchanged.
    A step per value column (beta [B, T, H, V]) runs the V columns as heads of value dim 1.
    """
    if beta.dim() == 4:
        return _per_column(q, k, v, beta, g, scale, initial_state, output_final_state, chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = int(chunk_size)
    dev = q.device
    qc, kc, vc, tril = chunk_operands(q, k, v, scale, C)  # [B, H, N, C, K|V]
    bc = _to_chunks(beta, C)  # [B, H, N, C]
    N = qc.shape[2]

    if g is not None and g.dim() == q.dim():
        # KDA: the same algebra with per-channel factors (Gamma_ij a vector over d, gamma_i = exp(G_i)):
        #   L_ij = b_i sum_d k_id k_jd exp(G_id - G_jd) (i > j),  A_ij = sum_d q_id k_jd exp(G_id - G_jd) (i >= j),
        #   W = (I + L)^{-1} diag(b) (K * gamma),  S_C = Diag(gamma_C) S_0 + (K * exp(G_C - G))^T D.
        # The score matrices are matmuls through reference rows (kernels/common.py; no overflow for any gate).
        G = _to_chunks(g, C).cumsum(-2)  # [B, H, N, C, K]
        g_max = float(g.detach().abs().amax()) if g.numel() else 0.0
        L = _intra_scores(kc, kc, G, g_max, strict=True) * bc[..., :, None]
        A = _intra_scores(qc, kc, G, g_max)
        gamma = _decay(G)  # [B, H, N, C, K]
        kb = kc * gamma * bc[..., None]  # b (k * gamma)
        G_last = G[..., -1:, :]  # [B, H, N, 1, K]
        q_in = qc * gamma
        k_st = kc * _decay(G_last - G)
        decay_last = _decay(G_last).transpose(-1, -2)  # [B, H, N, K, 1]
    elif g is None:
        kk = kc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
        qk = qc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
        L = (kk * bc[..., :, None]).tril(-1)
        A = qk.tril()
        kb = kc * bc[..., None]  # b k
        q_in, k_st, decay_last = qc, kc, None
    else:
        kk = kc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
        qk = qc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
        G = _to_chunks(g, C).cumsum(-1)  # [B, H, N, C]
        D = G[..., :, None] - G[..., None, :]  # G_i - G_j
        Gamma = _decay(D, tril, _needs_flush(G))  # exp(G_i - G_j), 0 above the diagonal (masked before the exp)
        L = (kk * Gamma * bc[..., :, None]).tril(-1)
        A = qk * Gamma
        gamma = _decay(G)  # [B, H, N, C]
        kb = kc * (bc * gamma)[..., None]  # b gamma k
        G_last = G[..., -1:]  # [B, H, N, 1]
        q_in = qc * gamma[..., None]
        k_st = kc * _decay(G_last - G)[..., None]
        decay_last = _decay(G_last)[..., None]  # [B, H, N, 1, 1]

    # UT transform: T = (I + L)^{-1}, then U = T diag(b) V and W = T diag(b gamma) K as batched matmuls.
    Tinv = unit_lower_inverse(L)
    U = Tinv @ (vc * bc[..., None])  # [B, H, N, C, V]
    W = Tinv @ kb  # [B, H, N, C, K]
    k_st_T = k_st.transpose(-1, -2).contiguous()  # [B, H, N, K, C]

    # sequential scan over chunks (unbind once: per-chunk indexing would make autograd
    # scatter into a full-size zero tensor for every chunk)
    S = _init_state(initial_state, B, H, K, V, dev).reshape(B * H, K, V)
    U_n = U.transpose(1, 2).reshape(B, N, H, C, V).unbind(1)
    W_n = W.transpose(1, 2).reshape(B, N, H, C, K).unbind(1)
    Kst_n = k_st_T.transpose(1, 2).reshape(B, N, H, K, C).unbind(1)
    a_n = None if decay_last is None else decay_last.transpose(1, 2).unbind(1)  # each [B, H, 1 | K, 1]
    states, deltas = [], []
    for n in range(N):
        states.append(S)
        # one fused GEMM each: d = U - W S ; S = a S + K_st d
        d = torch.baddbmm(U_n[n].reshape(B * H, C, V), W_n[n].reshape(B * H, C, K), S, alpha=-1.0)
        deltas.append(d)
        S_dec = S if a_n is None else a_n[n].reshape(B * H, -1, 1) * S
        S = torch.baddbmm(S_dec, Kst_n[n].reshape(B * H, K, C), d)
    states = [st.view(B, H, K, V) for st in states]
    deltas = [dd.view(B, H, C, V) for dd in deltas]
    S = S.view(B, H, K, V)
    S_prev = torch.stack(states, dim=2)  # [B, H, N, K, V]
    Dd = torch.stack(deltas, dim=2)  # [B, H, N, C, V]

    o = _bmm_add(A @ Dd, q_in, S_prev)  # q_in @ S_prev + A @ D  [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(v.dtype), (S if output_final_state else None)


def _per_column(q, k, v, beta, g, scale, initial_state, output_final_state, chunk_size):
    """chunk_delta_rule with one step per value column: column d of S in head h is head (h, d) of value dim 1."""
    B, T, H, K = q.shape
    V = v.shape[-1]

    def heads(t):  # [B, T, H, K] -> [B, T, H*V, K], shared by the columns
        return t[:, :, :, None].expand(B, T, H, V, t.shape[-1]).reshape(B, T, H * V, t.shape[-1])

    init = None if initial_state is None else initial_state.transpose(-1, -2).reshape(B, H * V, K, 1)
    if g is None:
        gg = None
    elif g.dim() == 4:  # a vector (KDA) gate is shared by the columns, like the keys
        gg = heads(g)
    else:
        gg = g[..., None].expand(B, T, H, V).reshape(B, T, H * V)
    o, S = chunk_delta_rule(heads(q), heads(k), v.reshape(B, T, H * V, 1), beta=beta.reshape(B, T, H * V), g=gg,
                            scale=K ** -0.5 if scale is None else scale, initial_state=init,
                            output_final_state=output_final_state, chunk_size=chunk_size)
    o = o.view(B, T, H, V)
    return o, (None if S is None else S.view(B, H, V, K).transpose(-1, -2))


# --------------------------------------------------------------------------------------
# Longhorn's implicit step
# --------------------------------------------------------------------------------------
def implicit_step_size(k: Tensor, eps: Tensor) -> Tensor:
    """Delta = eps / (1 + eps ||k||^2): k [..., H, K], eps [..., H, V] -> [..., H, V] fp32."""
    e = eps.float()
    return e / (1.0 + e * (k.float() ** 2).sum(-1, keepdim=True))


def naive_implicit_delta_rule(q: Tensor, k: Tensor, v: Tensor, *, eps: Tensor, g: Optional[Tensor] = None,
                              scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                              output_final_state: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """Oracle of Longhorn's step (module docstring): the delta-rule loop with its per-column step size."""
    return naive_recurrent_delta_rule(q, k, v, beta=implicit_step_size(k, eps), g=g, scale=scale,
                                      initial_state=initial_state, output_final_state=output_final_state)


def chunk_implicit_delta_rule(q: Tensor, k: Tensor, v: Tensor, *, eps: Tensor, g: Optional[Tensor] = None,
                              scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                              output_final_state: bool = False, chunk_size: int = 64):
    """Chunked Longhorn step: ``chunk_delta_rule`` with the per-column step size."""
    return chunk_delta_rule(q, k, v, beta=implicit_step_size(k, eps), g=g, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, chunk_size=chunk_size)


def implicit_delta_rule_step(q: Tensor, k: Tensor, v: Tensor, *, eps: Tensor, g: Optional[Tensor] = None,
                             state: Optional[Tensor] = None, scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """One token of Longhorn's step."""
    return delta_rule_step(q, k, v, beta=implicit_step_size(k, eps), g=g, state=state, scale=scale)
