"""Log-linear memory: Fenwick-level states read with per-level weights (Guo et al. 2025).

"Log-Linear Attention", Guo, Yang, Goel, Xing, Dao, Kim 2025, https://arxiv.org/abs/2506.04761 :
the prefix [0, t] of a query is split Fenwick-style into O(log t) buckets of power-of-two sizes,
each bucket gets its own state, and the query reads them with data-dependent weights lambda_t.

Shapes and the op contract: kernels/common.py; here also L levels (``lam.shape[-1]``; MemoryConfig.levels),
C = 2**c (a power of two) and S the state slots carried by the chunked scan.

Level rule (0-based absolute positions, s <= t):

    l(t, s) = bit_length(t XOR s)  =  0 if s == t, else floor(log2(t XOR s)) + 1

For fixed t the tokens at level m+1 form one aligned block of 2**m tokens, non-empty iff bit m of t
is set, so the query t sees 1 + popcount(t) non-empty levels. A level index >= L-1 is clamped to L-1:
the last level absorbs every token with t XOR s >= 2**(L-2) (all but the most recent 2**(L-2)
tokens or so), which keeps the state bounded.

Output (per batch and head; scale = K**-0.5 by default; read after write, as in kernels/gla.py):

    o_t = sum_{s<=t} lam_t[min(l(t,s), L-1)] * c(t, s) v_s
      dot bias, scalar gate (log-linear Mamba2):  c(t,s) = scale * exp(G_t - G_s) (q_t . k_s),
                                                  G = cumsum(g) (g None: G = 0)
      l2 bias (log-linear Gated DeltaNet):        c(t,s) = scale * b_s q_t^T A_t ... A_{s+1} k_s,
                                                  A_r = exp(g_r) (I - b_r k_r k_r^T)

Equivalently each level keeps its own state S^(l) in R^{K x V}; all levels share the transition
(decay, or A_t for the delta rule), a write goes to level 0, and o_t = scale sum_l lam_t[l] S_t^(l)T q_t.
Since the level of a fixed s never decreases as t grows, decoding only merges levels upward: before
writing position p (p >= 1), levels 0..ctz(p) merge into level ctz(p)+1 (clamped to L-1). The sum of all
level states is the ordinary (gla / delta-rule) state, and with lam == 1 the outputs are the ordinary ones.

State (decoding and ``initial_state`` / final state): a dict
    {"levels": [B, H, n, K, V] fp32, "pos": int}
holding the level states after ``pos`` tokens, bucketed relative to the last query pos-1; only the levels
in use are stored: n = levels_in_use(pos, L) = min(L, bit_length(pos-1) + 1) (0 for pos = 0), so n grows as
log2(T) (n = m+1 at pos = 2**m; 1 + popcount(pos-1) of them non-empty).

Functions
    naive_quadratic_log_linear  the T x T masked form, transition products built explicitly (oracle)
    naive_recurrent_log_linear  token loop over log_linear_step (oracle for states and decoding)
    chunk_log_linear            chunked training path: hierarchical-masked quadratic form inside a chunk,
                                Fenwick-over-chunks level states across chunks (autograd)
    log_linear_step             one decoding step
    log_linear_step_slots       one decoding step for rows at different positions (fixed L level slots)
    levels_in_use               number of level slots the state holds after ``pos`` tokens
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .common import _decay, _needs_flush, _to_chunks, unit_lower_inverse

Tensor = torch.Tensor

__all__ = [
    "naive_quadratic_log_linear",
    "naive_recurrent_log_linear",
    "chunk_log_linear",
    "log_linear_step",
    "log_linear_step_slots",
    "levels_in_use",
    "level_of",
]


# --------------------------------------------------------------------------------------
# level bookkeeping
# --------------------------------------------------------------------------------------
def level_of(t: int, s: int) -> int:
    """Unclamped Fenwick level of key position s for query position t (s <= t)."""
    return (t ^ s).bit_length()


def levels_in_use(pos: int, levels: int) -> int:
    """Level slots held after ``pos`` tokens: min(levels, bit_length(pos-1) + 1), 0 when pos == 0.

    The highest level of the last query pos-1 is bit_length(pos-1), hence floor(log2(pos-1)) + 2
    slots for pos >= 2: the count grows as log2(T) (m+1 at pos = 2**m) until it reaches ``levels``."""
    if pos <= 0:
        return 0
    return min(int(levels), (pos - 1).bit_length() + 1)


def _ctz(n: int) -> int:
    """Number of trailing zero bits of n >= 1."""
    return (n & -n).bit_length() - 1


def _bit_length(x: Tensor, nbits: int) -> Tensor:
    """Elementwise bit_length of a non-negative int64 tensor whose values are < 2**nbits (exact)."""
    out = torch.zeros_like(x)
    for b in range(nbits):
        out = out + ((x >> b) > 0).long()
    return out


def _compute_dtype(x: Tensor) -> torch.dtype:
    """fp32, or fp64 when the inputs are fp64 (the oracles then run in double precision)."""
    return torch.promote_types(x.dtype, torch.float32)


def _unpack_state(state: Optional[dict], B: int, H: int, K: int, V: int, L: int, dtype, device):
    """-> (pos, levels [B, H, n, K, V]) with n = levels_in_use(pos, L); a fresh state for None."""
    if state is None:
        return 0, torch.zeros(B, H, 0, K, V, dtype=dtype, device=device)
    pos = int(state["pos"])
    S = state["levels"].to(dtype)
    n = levels_in_use(pos, L)
    if S.shape != (B, H, n, K, V):
        raise ValueError(f"log-linear state after {pos} tokens with {L} levels must have shape "
                         f"{(B, H, n, K, V)}, got {tuple(S.shape)}")
    return pos, S


def _check(q: Tensor, g: Optional[Tensor], lam: Tensor, beta: Optional[Tensor]) -> None:
    if g is not None and g.dim() != q.dim() - 1:
        raise ValueError(f"log-linear memory takes a scalar gate per head ({tuple(q.shape[:-1])}), "
                         f"got g of shape {tuple(g.shape)}")
    if lam.shape[:-1] != q.shape[:-1] or lam.shape[-1] < 1:
        raise ValueError(f"lam must have shape {tuple(q.shape[:-1])} + (levels,), got {tuple(lam.shape)}")
    if beta is not None and beta.shape != q.shape[:-1]:
        raise ValueError(f"beta must have shape {tuple(q.shape[:-1])}, got {tuple(beta.shape)}")


# --------------------------------------------------------------------------------------
# reference 1: the quadratic masked form
# --------------------------------------------------------------------------------------
def naive_quadratic_log_linear(q: Tensor, k: Tensor, v: Tensor, *, lam: Tensor, g: Optional[Tensor] = None,
                               beta: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """Oracle from the masked form O = ((scale * C) o M) V, positions 0..T-1, no state.

    C[t, s] = exp(G_t - G_s) q_t . k_s (dot) or b_s q_t^T (A_t ... A_{s+1}) k_s (delta, the K x K
    transition products built explicitly), M[t, s] = lam_t[min(l(t, s), L-1)] for s <= t, else 0.
    q, k: [B, T, H, K]; v: [B, T, H, V]; g: None | [B, T, H]; lam: [B, T, H, L]; beta: None | [B, T, H].
    Computes in fp64 for fp64 inputs (fp32 otherwise); returns o [B, T, H, V] (v.dtype).
    """
    _check(q, g, lam, beta)
    B, T, H, K = q.shape
    L = lam.shape[-1]
    if scale is None:
        scale = K ** -0.5
    dt = _compute_dtype(q)
    qf, kf, vf = (x.to(dt).transpose(1, 2) for x in (q, k, v))  # [B, H, T, K|V]
    lamf = lam.to(dt).transpose(1, 2)  # [B, H, T, L]
    dev = q.device
    pos = torch.arange(T, device=dev)
    causal = pos[:, None] >= pos[None, :]  # [T, T]
    level = _bit_length(pos[:, None] ^ pos[None, :], max(T, 1).bit_length()).clamp(max=L - 1)
    M = torch.gather(lamf, -1, level.expand(B, H, T, T)) * causal  # hierarchical mask [B, H, T, T]

    G = torch.zeros(B, H, T, dtype=dt, device=dev) if g is None else g.to(dt).transpose(1, 2).cumsum(-1)
    if beta is None:
        decay = torch.exp(torch.where(causal, G[..., :, None] - G[..., None, :], -torch.inf))  # exp(G_t - G_s)
        Cmat = (qf @ kf.transpose(-1, -2)) * decay  # [B, H, T, T]
    else:
        b = beta.to(dt).transpose(1, 2)  # [B, H, T]
        a = torch.ones_like(b) if g is None else torch.exp(g.to(dt).transpose(1, 2))  # exp(g_t)
        eye = torch.eye(K, dtype=dt, device=dev)
        # A_r = exp(g_r) (I - b_r k_r k_r^T): [B, H, T, K, K]
        A = a[..., None, None] * (eye - b[..., None, None] * kf[..., :, None] * kf[..., None, :])
        P = torch.zeros(B, H, 0, K, K, dtype=dt, device=dev)  # P[:, :, s] = A_{t} ... A_{s+1} for s < t
        rows = []
        for t in range(T):
            # products for query t: A_t (A_{t-1} ... A_{s+1}) for s < t, and the identity for s = t
            P = torch.cat([A[:, :, t, None] @ P, eye.expand(B, H, 1, K, K)], dim=2)  # [B, H, t+1, K, K]
            rows.append(torch.einsum("bhk,bhskj,bhsj->bhs", qf[:, :, t], P, kf[:, :, : t + 1]) * b[:, :, : t + 1])
        Cmat = torch.stack([F.pad(r, (0, T - r.shape[-1])) for r in rows], dim=2)  # [B, H, T, T]
    o = (scale * Cmat * M) @ vf  # [B, H, T, V]
    return o.transpose(1, 2).to(v.dtype)


# --------------------------------------------------------------------------------------
# reference 2: token-by-token recurrence over the level states, and one decoding step
# --------------------------------------------------------------------------------------
def log_linear_step(q: Tensor, k: Tensor, v: Tensor, *, lam: Tensor, g: Optional[Tensor] = None,
                    beta: Optional[Tensor] = None, state: Optional[dict] = None,
                    scale: Optional[float] = None) -> Tuple[Tensor, dict]:
    """One token at absolute position p = state["pos"].

    q, k: [B, H, K]; v: [B, H, V]; g: None | [B, H]; lam: [B, H, L]; beta: None | [B, H] (delta rule);
    state: {"levels": [B, H, levels_in_use(p), K, V], "pos": p} or None (p = 0).
    Steps: (1) merge levels 0..ctz(p) into level ctz(p)+1 (clamped to L-1), growing the slots to
    levels_in_use(p+1); (2) apply the shared transition to every level (delta: S <- S - b k (k^T S);
    then S <- exp(g) S); (3) write (b) k v^T into level 0; (4) o = scale sum_l lam[l] S^(l)T q.
    Returns o [B, H, V] (v.dtype) and the new state (fp32 levels, fp64 for fp64 inputs).
    """
    B, H, K = q.shape
    V = v.shape[-1]
    L = lam.shape[-1]
    if scale is None:
        scale = K ** -0.5
    dt = _compute_dtype(q)
    p, S = _unpack_state(state, B, H, K, V, L, dt, q.device)
    n_new = levels_in_use(p + 1, L)
    if S.shape[2] < n_new:
        S = torch.cat([S, S.new_zeros(B, H, n_new - S.shape[2], K, V)], dim=2)
    if p > 0:
        j = min(_ctz(p) + 1, L - 1)  # target level; levels below it are empty afterwards
        merged = S[:, :, : j + 1].sum(2, keepdim=True)
        S = torch.cat([S.new_zeros(B, H, j, K, V), merged, S[:, :, j + 1:]], dim=2)
    o, S = _transition_write_read(S, q, k, v, g, lam[:, :, :n_new], beta, scale)
    return o, {"levels": S, "pos": p + 1}


def _transition_write_read(S: Tensor, q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], lam: Tensor,
                           beta: Optional[Tensor], scale: float) -> Tuple[Tensor, Tensor]:
    """Steps (2)-(4) of ``log_linear_step`` on merged levels S [B, H, n, K, V] (compute dtype) with
    lam [B, H, n]: the shared transition on every level, the write into level 0, the weighted read.
    Returns o [B, H, V] (v.dtype) and the new S."""
    dt = S.dtype
    qf, kf, vf = q.to(dt), k.to(dt), v.to(dt)
    if beta is not None:
        b = beta.to(dt)[:, :, None, None, None]  # [B, H, 1, 1, 1]
        kTS = torch.einsum("bhk,bhlkv->bhlv", kf, S)  # k^T S^(l)
        S = S - b * kf[:, :, None, :, None] * kTS[:, :, :, None, :]  # (I - b k k^T) S^(l)
        write = b[:, :, 0] * kf[:, :, :, None] * vf[:, :, None, :]
    else:
        write = kf[:, :, :, None] * vf[:, :, None, :]
    if g is not None:
        S = torch.exp(g.to(dt))[:, :, None, None, None] * S
    S = torch.cat([(S[:, :, 0] + write)[:, :, None], S[:, :, 1:]], dim=2)
    o = scale * torch.einsum("bhl,bhlkv,bhk->bhv", lam.to(dt), S, qf)
    return o.to(v.dtype), S


def log_linear_step_slots(q: Tensor, k: Tensor, v: Tensor, *, lam: Tensor, levels: Tensor, pos: Tensor,
                          g: Optional[Tensor] = None, beta: Optional[Tensor] = None,
                          scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """``log_linear_step`` for rows that sit at different positions (a Mixture-of-Memories keeps one
    log-linear memory per (sequence, memory), each in its own time).

    q, k: [B, H, K]; v: [B, H, V]; g: None | [B, H]; lam: [B, H, L]; beta: None | [B, H];
    levels: [B, H, L, K, V], all L slots stored (slots at or beyond levels_in_use(pos_b, L) hold
    zeros); pos: [B] int64, the tokens row b has seen. Same four steps as ``log_linear_step`` with
    a per-row merge target j_b = min(ctz(pos_b) + 1, L - 1) (no merge at pos_b = 0). Returns
    o [B, H, V] (v.dtype) and the new levels [B, H, L, K, V] (fp32, fp64 for fp64 inputs);
    the caller advances pos.
    """
    B, H, K = q.shape
    L = lam.shape[-1]
    if levels.shape != (B, H, L, K, v.shape[-1]) or pos.shape != (B,):
        raise ValueError(f"log_linear_step_slots: levels must be {(B, H, L, K, v.shape[-1])} and pos {(B,)}, "
                         f"got {tuple(levels.shape)} and {tuple(pos.shape)}")
    if scale is None:
        scale = K ** -0.5
    dt = _compute_dtype(q)
    S = levels.to(dt)
    pos = pos.long()
    low = pos & -pos  # lowest set bit (0 at pos 0); a power of two < 2**53 has an exact log2
    ctz = torch.log2(low.clamp(min=1).double()).round().long()
    j = torch.where(pos > 0, (ctz + 1).clamp(max=L - 1), torch.zeros_like(pos))  # [B]
    slot = torch.arange(L, device=q.device)
    merged = (S * (slot[None, :] <= j[:, None]).to(dt)[:, None, :, None, None]).sum(2)  # [B, H, K, V]
    at = (slot[None, :] == j[:, None])[:, None, :, None, None]
    below = (slot[None, :] < j[:, None])[:, None, :, None, None]
    S = torch.where(at, merged[:, :, None], torch.where(below, torch.zeros_like(S), S))
    return _transition_write_read(S, q, k, v, g, lam, beta, scale)


def naive_recurrent_log_linear(q: Tensor, k: Tensor, v: Tensor, *, lam: Tensor, g: Optional[Tensor] = None,
                               beta: Optional[Tensor] = None, scale: Optional[float] = None,
                               initial_state: Optional[dict] = None,
                               output_final_state: bool = False) -> Tuple[Tensor, Optional[dict]]:
    """Oracle: loops ``log_linear_step`` over t. Shapes as ``chunk_log_linear``; returns
    o [B, T, H, V] (v.dtype) and the final state dict (or None)."""
    _check(q, g, lam, beta)
    T = q.shape[1]
    state = initial_state
    outs = []
    for t in range(T):
        o_t, state = log_linear_step(q[:, t], k[:, t], v[:, t], lam=lam[:, t], g=None if g is None else g[:, t],
                                     beta=None if beta is None else beta[:, t], state=state, scale=scale)
        outs.append(o_t)
    B, _, H, K = q.shape
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    if output_final_state and state is None:  # T == 0 from a fresh state
        _, S0 = _unpack_state(None, B, H, K, v.shape[-1], lam.shape[-1], _compute_dtype(q), q.device)
        state = {"levels": S0, "pos": 0}
    return o, (state if output_final_state else None)


# --------------------------------------------------------------------------------------
# chunked form
# --------------------------------------------------------------------------------------
def _chunks(x: Tensor, front: int, C: int) -> Tensor:
    """[B, T, H, *D] -> [B, H, N, C, *D] fp32 with ``front`` zero steps before and zeros after."""
    if front:
        pad = [0, 0] * (x.dim() - 2) + [front, 0]
        x = F.pad(x, pad)
    return _to_chunks(x, C)


def chunk_log_linear(q: Tensor, k: Tensor, v: Tensor, *, lam: Tensor, g: Optional[Tensor] = None,
                     beta: Optional[Tensor] = None, scale: Optional[float] = None,
                     initial_state: Optional[dict] = None, output_final_state: bool = False,
                     chunk_size: int = 64) -> Tuple[Tensor, Optional[dict]]:
    """Chunked log-linear gated linear attention (beta None) or Gated DeltaNet (beta given).

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: None | [B, T, H] (log decay); lam: [B, T, H, L] level
    weights; beta: None | [B, T, H]; initial_state: None | {"levels": [B, H, n, K, V], "pos": p0}.
    Returns o [B, T, H, V] (v.dtype) and, when output_final_state, {"levels", "pos": p0 + T}.

    Chunks are aligned to absolute positions (chunk a covers [aC, (a+1)C), C = 2**c); a continued
    sequence (p0 % C != 0) is front-padded with p0 % C zero steps (q = k = v = b = 0, g = 0: identity
    transition, no write) and the tail is zero-padded the same way, so padding changes nothing.
      * within a chunk: l(t, s) = bit_length(i XOR j) of the in-chunk offsets, <= c. With the
        ordinary chunk's attention-like matrix P (dot: tril(Q K^T o Gamma); delta: tril(Q K^T o Gamma)
        (I + L)^{-1} diag(b), the WY/UT form of kernels/delta_rule.py), o_intra = (P o M_lam) V,
        M_lam[i, j] = lam_i[min(l, L-1)].
      * across chunks: l(t, s) = c + 1 + floor(log2(a_t XOR a_s)) depends only on the chunk indices,
        so a scan over chunks keeps chunk-granularity level states X^(j) (Fenwick over chunks: before
        chunk a+1, levels 0..ctz(a+1) and chunk a's own state merge into level ctz(a+1)), every level
        transported by the chunk transition (dot: exp(G_C); delta: exp(G_C) I - K_st^T W). Token i of
        chunk a reads o_i += sum_j lam_i[min(c+1+j, L-1)] Qeff_i^T X^(j), Qeff = Q gamma (dot) or
        Q gamma - P~ W (delta), the map from the entering state to the outputs.
      * the levels of ``initial_state`` ride along as extra slots (transported, never merged): slot l
        holds level l for the query p0-1, and the step merges move it to level
        max(l, bit_length(t XOR (p0-1))) for a later query t (the largest ctz(p) + 1 over p0 <= p <= t),
        so query t reads it with lam_t[min(max(l, bit_length(t XOR (p0-1))), L-1)]. For a non-empty
        slot this is bit_length(t XOR s) of any s in it; for an empty slot it fixes what a value placed
        there means (the same as in ``log_linear_step``), so gradients w.r.t. it agree too.
    Python loops run over chunks only (and over the ~log2 level bits of position tables).
    """
    _check(q, g, lam, beta)
    B, T, H, K = q.shape
    V = v.shape[-1]
    L = lam.shape[-1]
    C = int(chunk_size)
    if C < 1 or C & (C - 1):
        raise ValueError(f"chunk_log_linear needs a power-of-two chunk_size, got {chunk_size}")
    c = C.bit_length() - 1
    if scale is None:
        scale = K ** -0.5
    dev = q.device
    delta = beta is not None
    p0, S0 = _unpack_state(initial_state, B, H, K, V, L, torch.float32, dev)
    n0 = S0.shape[2]
    a0, r = divmod(p0, C)  # first (absolute) chunk index, front padding
    N = -(-(r + T) // C)
    if T == 0:
        o = v.new_zeros(B, 0, H, V)
        return o, ({"levels": S0, "pos": p0} if output_final_state else None)

    qc = _chunks(q, r, C) * scale  # [B, H, N, C, K]
    kc = _chunks(k, r, C)  # [B, H, N, C, K]
    vc = _chunks(v, r, C)  # [B, H, N, C, V]
    lamc = _chunks(lam, r, C)  # [B, H, N, C, L]
    tril = torch.ones(C, C, dtype=torch.bool, device=dev).tril()

    # ---- per-chunk pieces of the ordinary chunked kernel (kernels/gla.py, kernels/delta_rule.py)
    if g is None:
        Gamma = tril.float()
        gamma = None
        a_last = None
        k_st = kc
    else:
        G = _chunks(g, r, C).cumsum(-1)  # [B, H, N, C]
        Gamma = _decay(G[..., :, None] - G[..., None, :], tril, _needs_flush(G))  # exp(G_i - G_j), i >= j
        gamma = _decay(G)  # exp(G_i)
        a_last = _decay(G[..., -1])  # chunk decay [B, H, N]
        k_st = kc * _decay(G[..., -1:] - G)[..., None]  # k_j exp(G_C - G_j)
    Aqk = (qc @ kc.transpose(-1, -2)) * Gamma  # [B, H, N, C, C], lower triangular
    q_in = qc if gamma is None else qc * gamma[..., None]
    if delta:
        bc = _chunks(beta, r, C)  # [B, H, N, C]
        Lm = ((kc @ kc.transpose(-1, -2)) * Gamma * bc[..., :, None]).tril(-1)
        Tinv = unit_lower_inverse(Lm)
        Tb = Tinv * bc[..., None, :]  # (I + L)^{-1} diag(b)
        P = Aqk @ Tb  # o_intra = P V (zero entering state)
        Wm = Tb @ kc if gamma is None else Tb @ (kc * gamma[..., None])  # W = (I + L)^{-1} diag(b gamma) K
        Qeff = q_in - Aqk @ Wm  # o = Qeff S_0 + P V
        E = k_st.transpose(-1, -2) @ Tb  # own chunk state = E V  [B, H, N, K, C]
        eye_k = torch.eye(K, dtype=torch.float32, device=dev)
        decay_eye = eye_k if a_last is None else a_last[..., None, None] * eye_k
        Tr = decay_eye - k_st.transpose(-1, -2) @ Wm  # chunk transition  [B, H, N, K, K]
    else:
        P = Aqk
        Qeff = q_in
        E = k_st.transpose(-1, -2)  # [B, H, N, K, C]
        Tr = None
    dS = E @ vc  # own chunk states [B, H, N, K, V]

    # ---- intra-chunk: hierarchical mask on the attention-like matrix
    off = torch.arange(C, device=dev)
    lvl_in = _bit_length(off[:, None] ^ off[None, :], c).clamp(max=L - 1)  # [C, C]
    M = torch.gather(lamc, -1, lvl_in.expand(B, H, N, C, C))
    o = (P * M) @ vc  # [B, H, N, C, V]

    # ---- across chunks: slots = [Lc chunk levels | n0 initial-state levels]
    a_end = a0 + N - 1  # absolute index of the last chunk
    Lc = min(max(1, L - 1 - c), max(1, a_end.bit_length()))
    Ssl = Lc + n0
    t_abs = (a0 * C + torch.arange(N * C, device=dev)).view(N, C)  # absolute positions (padding included)
    nbits = (a0 * C + N * C).bit_length()
    lvl_slots = [torch.full((N, C), min(c + 1 + j, L - 1), dtype=torch.long, device=dev) for j in range(Lc)]
    if n0:
        lvl_prev = _bit_length(t_abs ^ (p0 - 1), nbits)  # level of the last prefilled token
        lvl_slots += [lvl_prev.clamp(min=li, max=L - 1) for li in range(n0)]
    lvl_inter = torch.stack(lvl_slots, dim=-1)  # [N, C, S]
    Wt = torch.gather(lamc, -1, lvl_inter.expand(B, H, N, C, Ssl))  # read weights [B, H, N, C, S]

    BH = B * H
    Z = torch.zeros(BH, K, Lc, V, dtype=torch.float32, device=dev)
    if n0:
        Z = torch.cat([Z, S0.permute(0, 1, 3, 2, 4).reshape(BH, K, n0, V)], dim=2)  # [BH, K, S, V]
    Tr_n = None if Tr is None else Tr.transpose(1, 2).reshape(B, N, H, K, K).unbind(1)
    a_n = None if a_last is None else a_last.transpose(1, 2).unbind(1)  # N x [B, H]
    dS_n = dS.transpose(1, 2).unbind(1)  # N x [B, H, K, V]
    entering = []
    for n in range(N):
        entering.append(Z)
        if Tr_n is not None:  # X -> (a I - K_st^T W) X, batched over all slots
            Zt = torch.bmm(Tr_n[n].reshape(BH, K, K), Z.reshape(BH, K, Ssl * V)).view(BH, K, Ssl, V)
        elif a_n is not None:
            Zt = a_n[n].reshape(BH, 1, 1, 1) * Z
        else:
            Zt = Z
        if n == N - 1:
            break
        j = min(_ctz(a0 + n + 1), Lc - 1)  # Fenwick merge before chunk a0+n+1
        merged = Zt[:, :, : j + 1].sum(2) + dS_n[n].reshape(BH, K, V)
        Z = torch.cat([Zt.new_zeros(BH, K, j, V), merged[:, :, None], Zt[:, :, j + 1:]], dim=2)
    Zin = torch.stack(entering, dim=1).view(B, H, N, K, Ssl * V)  # states entering each chunk
    Y = (Qeff @ Zin).view(B, H, N, C, Ssl, V)  # per-slot reads
    o = o + (Wt[..., None] * Y).sum(-2)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, r: r + T]
    if not output_final_state:
        return o.to(v.dtype), None

    # ---- final level states, bucketed relative to the last query t_last = p0 + T - 1
    t_last = p0 + T - 1
    nL = levels_in_use(p0 + T, L)
    lvl_own = _bit_length(t_last ^ t_abs[-1], nbits).clamp(max=min(L, nL) - 1)  # [C] (padding: zero columns)
    own = torch.einsum("bhkc,cl,bhcv->bhlkv", E[:, :, -1], F.one_hot(lvl_own, nL).float(), vc[:, :, -1])
    tgt = [min(c + 1 + j, L - 1) for j in range(Lc)]
    tgt += [min(max(li, level_of(t_last, p0 - 1)), L - 1) for li in range(n0)]
    tgt = torch.tensor([min(x, nL - 1) for x in tgt], dtype=torch.long, device=dev)  # empty slots may overflow
    carried = torch.einsum("bhksv,sl->bhlkv", Zt.view(B, H, K, Ssl, V), F.one_hot(tgt, nL).float())
    return o.to(v.dtype), {"levels": own + carried, "pos": p0 + T}
