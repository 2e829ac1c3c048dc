"""Gated linear attention family: plain linear attention, scalar decay, vector (GLA) decay.

Shapes and the op contract: kernels/common.py; here also m sub-chunks per chunk, c = C / m sub-chunk
length (vector gates only).

Recurrence (per batch and head, state S in R^{K x V}, float32):

    S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T
    o_t = scale * S_t^T q_t

``g`` is one of
    None          plain linear attention (Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236)
    [B, T, H]     one scalar log-decay per head and step (RetNet, Sun et al. 2023,
                  https://arxiv.org/abs/2307.08621 ; Mamba2 / SSD, Dao & Gu 2024,
                  https://arxiv.org/abs/2405.21060)
    [B, T, H, K]  a vector log-decay over the key dim (GLA, Yang et al. 2023,
                  https://arxiv.org/abs/2312.06635)

Functions
    naive_recurrent_gla  token-by-token oracle, straight from the formula
    chunk_gla            chunkwise-parallel form for training (pure PyTorch, autograd)
    gla_step             one decoding step
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .common import (_bmm_add, _decay, _init_state, _intra_scores, _intra_vector, _needs_flush, _sub_chunk_len,
                     _to_chunks, chunk_operands, oracle_start)

Tensor = torch.Tensor

__all__ = ["naive_recurrent_gla", "chunk_gla", "chunk_hgrn2", "gla_step"]


def _gate_kind(g: Optional[Tensor], q: Tensor) -> str:
    if g is None:
        return "none"
    if g.dim() == q.dim() - 1:
        return "scalar"
    if g.dim() == q.dim() and g.shape[-1] == q.shape[-1]:
        return "vector"
    raise ValueError(f"gate of shape {tuple(g.shape)} does not fit q of shape {tuple(q.shape)}")


# --------------------------------------------------------------------------------------
# reference: token-by-token recurrence
# --------------------------------------------------------------------------------------
def naive_recurrent_gla(q: Tensor, k: Tensor, v: Tensor, *, g: Optional[Tensor] = None, scale: Optional[float] = None,
                        initial_state: Optional[Tensor] = None,
                        output_final_state: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """Oracle: loops over t and applies S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t.

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: None | [B, T, H] | [B, T, H, K]
    returns o [B, T, H, V] (v.dtype) and final state [B, H, K, V] float32 (or None).
    """
    kind = _gate_kind(g, q)
    scale, S = oracle_start(q, v, scale, initial_state)  # S: [B, H, K, V]
    outs = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t = q[:, t].float(), k[:, t].float(), v[:, t].float()  # [B, H, K|V]
        if kind == "scalar":
            S = torch.exp(g[:, t].float())[:, :, None, None] * S  # decay every row by one scalar
        elif kind == "vector":
            S = torch.exp(g[:, t].float())[:, :, :, None] * S  # Diag(exp(g_t)) S: row i by exp(g_t[i])
        S = S + k_t[:, :, :, None] * v_t[:, :, None, :]  # + k_t v_t^T
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q_t))  # scale * S_t^T q_t
    o = torch.stack(outs, dim=1).to(v.dtype)  # [B, T, H, V]
    return o, (S if output_final_state else None)


# --------------------------------------------------------------------------------------
# one decoding step
# --------------------------------------------------------------------------------------
def gla_step(q: Tensor, k: Tensor, v: Tensor, *, g: Optional[Tensor] = None, state: Optional[Tensor] = None,
             scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """One token. q, k: [B, H, K]; v: [B, H, V]; g: None | [B, H] | [B, H, K];
    state: [B, H, K, V] float32 or None (zeros). Returns o [B, H, V] (v.dtype), new state fp32."""
    B, H, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K ** -0.5
    S = _init_state(state, B, H, K, V, q.device)
    if g is not None:
        if g.dim() == 2:
            S = torch.exp(g.float())[:, :, None, None] * S
        else:
            S = torch.exp(g.float())[:, :, :, None] * S
    S = S + k.float()[:, :, :, None] * v.float()[:, :, None, :]
    o = torch.einsum("bhkv,bhk->bhv", S, q.float() * scale)
    return o.to(v.dtype), S


# --------------------------------------------------------------------------------------
# chunkwise parallel form
# --------------------------------------------------------------------------------------
def chunk_gla(q: Tensor, k: Tensor, v: Tensor, *, g: Optional[Tensor] = None, scale: Optional[float] = None,
              initial_state: Optional[Tensor] = None, output_final_state: bool = False,
              chunk_size: int = 64, scores: str = "sub_chunks") -> Tuple[Tensor, Optional[Tensor]]:
    """Chunkwise-parallel gated linear attention (same contract as ``naive_recurrent_gla``).

    ``scores`` picks the intra-chunk scores of a vector gate: "sub_chunks" (GLA's secondary chunking,
    ``_intra_vector``; GLA's path, kept bit for bit) or "blocks" (the block-factored matmuls of KDA and DPLR,
    ``_intra_scores``: exact for any gate and several times faster under the strong gates of HGRN2, see
    ``chunk_hgrn2``).

    Chunkwise form (linear attention: Katharopoulos et al. 2020; with decay: RetNet
    Sun et al. 2023 Sec. 2.2 / Mamba2 SSD Dao & Gu 2024 Sec. 6; vector gates: GLA Yang
    et al. 2023 Sec. 4). With G the inclusive cumsum of g inside a chunk and S_0 the state
    entering the chunk:
        o_i   = (q_i * exp(G_i))^T S_0 + sum_{j<=i} [q_i . (k_j * exp(G_i - G_j))] v_j
        S_C   = Diag(exp(G_C)) S_0 + sum_j (k_j * exp(G_C - G_j)) v_j^T
    Everything is batched over all chunks, the S_0 -> S_C scan included (a masked decay matrix
    over chunks, see below): no Python loop. All exponents are <= 0.
    Padding of T up to a multiple of C uses q = k = v = 0 and g = 0 (decay 1), which
    leaves the state unchanged.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    kind = _gate_kind(g, q)
    C = int(chunk_size)
    dev = q.device
    qc, kc, vc, tril = chunk_operands(q, k, v, scale, C)  # [B, H, N, C, K|V]
    N = qc.shape[2]

    if kind == "none":
        A = (qc @ kc.transpose(-1, -2)).tril()  # [B, H, N, C, C]
        q_in, k_st = qc, kc
    elif kind == "scalar":
        G = _to_chunks(g, C).cumsum(-1)  # [B, H, N, C]
        D = G[..., :, None] - G[..., None, :]  # G_i - G_j
        # mask before exp: no overflow above the diagonal
        A = (qc @ kc.transpose(-1, -2)) * _decay(D, tril, _needs_flush(G))  # [B, H, N, C, C]
        G_last = G[..., -1:]  # [B, H, N, 1]
        q_in = qc * _decay(G)[..., None]
        k_st = kc * _decay(G_last - G)[..., None]
    else:  # vector
        G = _to_chunks(g, C).cumsum(-2)  # [B, H, N, C, K]
        if scores == "blocks":
            A = _intra_scores(qc, kc, G, float(g.detach().abs().amax()) if g.numel() else 0.0)
        else:
            A = _intra_vector(qc, kc, G, _sub_chunk_len(C))
        G_last = G[..., -1:, :]  # [B, H, N, 1, K]
        q_in = qc * _decay(G)
        k_st = kc * _decay(G_last - G)

    o_intra = A @ vc  # [B, H, N, C, V]
    dS = k_st.transpose(-1, -2) @ vc  # per-chunk state contribution [B, H, N, K, V]

    # Inter-chunk recurrence S_n = Diag(a_n) S_{n-1} + dS_n, solved for every chunk at once
    # instead of a Python loop: with L_n = sum_{j<=n} log a_j (the cumulative chunk decay),
    #   S_entering(n) = exp(L_{n-1}) S_0 + sum_{m<n} exp(L_{n-1} - L_m) dS_m,
    # a masked [N+1, N] decay matrix times the stacked chunk states (row N is the final state).
    # Every exponent is <= 0 and masked before the exp.
    S0 = _init_state(initial_state, B, H, K, V, dev)
    if kind == "none":
        zero = torch.zeros_like(dS[:, :, :1])
        S_all = torch.cat([zero, dS], dim=2).cumsum(2) + S0[:, :, None]  # [B, H, N+1, K, V]
    else:
        # log decay of each chunk: [B, H, N] (scalar) or [B, H, N, K] (vector)
        log_a = G_last[..., 0] if kind == "scalar" else G_last[..., 0, :]
        L = log_a.cumsum(2)
        L_prev = torch.cat([torch.zeros_like(L[:, :, :1]), L], dim=2)  # L_{n-1} for n = 0..N: [B,H,N+1,(K)]
        if kind == "scalar":
            E = L_prev[:, :, :, None] - L[:, :, None, :]  # [B, H, N+1, N]
            lower = torch.ones(N + 1, N, dtype=torch.bool, device=dev).tril(-1)
            M = _decay(E, lower)
            S_all = (M @ dS.reshape(B, H, N, K * V)).view(B, H, N + 1, K, V)
            S_all = S_all + _decay(L_prev)[..., None, None] * S0[:, :, None]
        else:
            E = L_prev[:, :, :, None, :] - L[:, :, None, :, :]  # [B, H, N+1, N, K]
            lower = torch.ones(N + 1, N, dtype=torch.bool, device=dev).tril(-1)
            M = _decay(E, lower[:, :, None])
            # per key channel: [B, H, K, N+1, N] @ [B, H, K, N, V]
            S_all = (M.permute(0, 1, 4, 2, 3) @ dS.permute(0, 1, 3, 2, 4)).permute(0, 1, 3, 2, 4)
            S_all = S_all + _decay(L_prev)[..., None] * S0[:, :, None]
    S_prev, S = S_all[:, :, :N], S_all[:, :, N]  # state entering each chunk, final state

    o = _bmm_add(o_intra, q_in, S_prev)  # o_intra + q_in @ S_prev  [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(v.dtype), (S if output_final_state else None)


def chunk_hgrn2(q: Tensor, k: Tensor, v: Tensor, *, g: Optional[Tensor] = None, scale: Optional[float] = None,
                initial_state: Optional[Tensor] = None, output_final_state: bool = False,
                chunk_size: int = 64) -> Tuple[Tensor, Optional[Tensor]]:
    """HGRN2's chunked form (Qin et al. 2024): GLA with a per-channel gate (the caller ties k = 1 - exp(g)), its
    intra-chunk scores block-factored. HGRN2's forget gates f = sigmoid(.) start near 1/2 (log-decay about -0.7
    per token, far below GLA's logsigmoid(.)/16), where GLA's elementwise sub-chunks cost most."""
    return chunk_gla(q, k, v, g=g, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                     chunk_size=chunk_size, scores="blocks")
