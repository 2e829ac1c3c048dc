"""Chunked Triton kernels, forward and backward, for the gated delta recurrence and its special cases.

Shape legend
------------
    B  batch size            T  sequence length (of the flattened batch inside the kernels)
    H  heads                 K  key / query head dim      V  value head dim
    N  sequences             C  chunk length (``chunk_size``, BT in the kernels)
    BK, BV  register tiles over K and V (powers of two >= 16; K and V are padded to them by masks)

Recurrence (per sequence and head; state S in R^{K x V} in fp32; read after write; gates in LOG space):

    S_t = Diag(exp(g_t)) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T     (delta term when beta is given)
    S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T                             (no delta term: beta is None)
    o_t = scale * S_t^T q_t ,  scale = K**-0.5 unless given

    g  None          no decay: linear attention (Katharopoulos et al. 2020), DeltaNet (Yang et al. 2024,
                     https://arxiv.org/abs/2406.06484)
       [B, T, H]     scalar decay: Mamba2 / SSD (Dao & Gu 2024, https://arxiv.org/abs/2405.21060), Gated
                     DeltaNet (Yang et al. 2024, https://arxiv.org/abs/2412.06464); a constant decay (RetNet,
                     Sun et al. 2023) is this case with g = log(gamma_h) expanded over B and T
       [B, T, H, K]  vector decay over the key dim: GLA (Yang et al. 2023, https://arxiv.org/abs/2312.06635);
                     only without the delta term
These are exactly the conventions of kernels/gla.py and kernels/delta_rule.py (the same oracles test both).

Algorithm (per chunk of C tokens, S_0 the state entering it, G the in-chunk inclusive cumsum of g,
gamma = exp(G), Gamma_ij = exp(G_i - G_j) for i >= j; the derivation is in chunk_delta_rule's docstring):

    delta:    L = tril(diag(b) (K K^T * Gamma), -1),  Tm = (I + L)^{-1}        (UT transform, WY form)
              W = Tm diag(b gamma) K,  U = Tm diag(b) V,  D = U - W S_0        (pseudo-values)
    no delta: D = V
    A   = tril((Q K^T) * Gamma) * scale    (vector gates: A_ij = sum_d q_id k_jd exp(G_id - G_jd))
    O   = scale (Q * gamma) S_0 + A D
    S_C = Diag(exp(G_C)) S_0 + (K * exp(G_C - G))^T D

Kernels, forward: _gate_cumsum (chunk-parallel: G), _prep_fwd (chunk-parallel: A, and for the delta
rule Tm, W, U), _state_fwd (sequential over the chunks of a sequence, parallel over sequences x heads x
V-blocks: the state entering every chunk, D), _output_fwd (chunk-parallel: O). Backward: _state_fwd
again (chunk states are recomputed, not kept), _state_bwd (reverse scan: the state gradient leaving
every chunk, dD), _grad_bwd (chunk-parallel: dq, dk, dv, dbeta, dg). The formulas are in each kernel.

Every exponent is <= 0: differences of cumulative log-gates are masked to i >= j BEFORE the exp.
All matmuls accumulate in fp32 (fp64 for fp64 inputs); for 16-bit inputs their operands are rounded to
the input dtype (tensor cores) except inside the chunk inverse; fp32 inputs, and that inverse, multiply
in tf32x3 (three TF32 tensor-core products per multiply, within a few fp32 ulps; not plain TF32).

Hopper note: fla's gated backward is refused on Hopper with triton 3.4-3.7.0 because the compiler
mis-lowers ``tl.trans`` of a matrix that came out of a ``tl.dot`` (the wgmma accumulator layout) when it
is fed to another ``tl.dot`` (fla-org/flash-linear-attention#640, #826). These kernels never transpose
a dot result: where both M and M^T of a computed matrix are needed, M^T is computed as its own product
from loaded operands (e.g. dA = dO D^T and dA^T = D dO^T), or loaded transposed from memory.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .triton_support import Problem, interpreting, prepare

Tensor = torch.Tensor

__all__ = ["chunk_gated_delta_rule", "INTERPRETED"]

# Fixed when this module is imported: @triton.jit reads TRITON_INTERPRET at decoration time.
INTERPRETED = interpreting()


def _launch(dtype: torch.dtype) -> dict:
    """num_warps / num_stages of every launch. Not tuned on a GPU (none was available when this was
    written). The pipeline depth is set by shared memory, read off ahead-of-time compiles with
    tools/triton_aot_check.py at K = V = 128, chunk 64: Triton's default 3 stages needed up to 296 KB
    for fp32 inputs on sm_90, over any GPU's per-block limit. 2 stages keep 16-bit inputs at <= 88.5 KB
    (sm_90) / 80.5 KB (sm_80), so they fit consumer GPUs too (99 KB); 1 stage keeps fp32 inputs at
    <= 192 KB on sm_90 (H100 / H200 allow 227 KB), and the largest of them there, the delta-rule
    backward, takes 128 KB on sm_80 (A100: 163 KB)."""
    return {"num_warps": 4, "num_stages": 2 if dtype in (torch.float16, torch.bfloat16) else 1}


def _device_fn(fn):
    """@triton.jit for a device helper called from the kernels. Under the interpreter the helper stays a
    plain Python function: the interpreter runs kernel bodies as Python anyway, and it re-patches
    triton.language on every call of a nested jit function (milliseconds each, which dominated the
    CPU tests' time); the compiled GPU path is unchanged."""
    return fn if INTERPRETED else triton.jit(fn)


# ======================================================================================
# device helpers
# ======================================================================================
@_device_fn
def _mm(a, b, DT: tl.constexpr, EMU: tl.constexpr, PREC: tl.constexpr):
    """a @ b with fp32 (fp64) accumulation, operands rounded to DT. EMU: the interpreter multiplies
    bf16 bit patterns as integers, so there the operands are rounded to bf16 and multiplied in fp32
    (exactly what a bf16 tensor-core dot with fp32 accumulation computes)."""
    if EMU:
        return tl.dot(a.to(DT).to(tl.float32), b.to(DT).to(tl.float32), input_precision=PREC)
    else:
        return tl.dot(a.to(DT), b.to(DT), input_precision=PREC)


@_device_fn
def _chunk_rows(chunk_table, cu_seqlens, i_c, BT: tl.constexpr):
    """Global chunk i_c -> (first token, rows [BT], row mask, end of its sequence)."""
    i_n = tl.load(chunk_table + 2 * i_c)
    i_w = tl.load(chunk_table + 2 * i_c + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    t0 = bos + i_w * BT
    o_t = t0 + tl.arange(0, BT)
    return t0, o_t, o_t < eos, eos


@_device_fn
def _load_gate(Gc, o_t, m_t, last, i_h, o_k, m_k, H: tl.constexpr, K: tl.constexpr, GATE: tl.constexpr,
               ACC: tl.constexpr):
    """Cumulative log-gates of one chunk: G ([BT] scalar | [BT, BK] vector | 0) and G at its last row."""
    if GATE == 1:
        b_G = tl.load(Gc + o_t * H + i_h, mask=m_t, other=0.0).to(ACC)
        b_Gl = tl.load(Gc + last * H + i_h).to(ACC)
    elif GATE == 2:
        b_G = tl.load(Gc + (o_t[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.0).to(ACC)
        b_Gl = tl.load(Gc + (last * H + i_h) * K + o_k, mask=m_k, other=0.0).to(ACC)
    else:
        b_G = tl.zeros([1], dtype=ACC)
        b_Gl = tl.zeros([1], dtype=ACC)
    return b_G, b_Gl


@_device_fn
def _key_to_end(b_k, b_G, b_Gl, m_t, m_k, GATE: tl.constexpr):
    """K * exp(G_C - G): each key decayed from its row to the end of the chunk (exponent <= 0)."""
    if GATE == 1:
        return b_k * tl.exp(tl.where(m_t, b_Gl - b_G, float("-inf")))[:, None]
    elif GATE == 2:
        return b_k * tl.exp(tl.where(m_t[:, None] & m_k[None, :], b_Gl[None, :] - b_G, float("-inf")))
    else:
        return b_k


@_device_fn
def _query_from_start(b_q, b_G, m_t, m_k, GATE: tl.constexpr):
    """Q * gamma = Q * exp(G): each query's decay back to the chunk's entering state."""
    if GATE == 1:
        return b_q * tl.exp(tl.where(m_t, b_G, float("-inf")))[:, None]
    elif GATE == 2:
        return b_q * tl.exp(tl.where(m_t[:, None] & m_k[None, :], b_G, float("-inf")))
    else:
        return b_q


@_device_fn
def _decay_state(b_S, b_Gl, GATE: tl.constexpr):
    """Diag(exp(G_C)) S: the state carried across one whole chunk."""
    if GATE == 1:
        return b_S * tl.exp(b_Gl)
    elif GATE == 2:
        return b_S * tl.exp(b_Gl)[:, None]
    else:
        return b_S


@_device_fn
def _pair_decay(b_G, m_t, rows, STRICT: tl.constexpr, TRANSPOSED: tl.constexpr, GATE: tl.constexpr):
    """Gamma_ij = exp(G_i - G_j) on i >= j (i > j if STRICT), 0 elsewhere; its transpose if TRANSPOSED.
    Scalar or no gate only; the mask is applied to the exponent, before the exp."""
    if TRANSPOSED:
        m = (rows[None, :] > rows[:, None]) if STRICT else (rows[None, :] >= rows[:, None])
        m = m & m_t[None, :]
        if GATE == 1:
            return tl.exp(tl.where(m, b_G[None, :] - b_G[:, None], float("-inf")))
        else:
            return tl.where(m, 1.0, 0.0)
    else:
        m = (rows[:, None] > rows[None, :]) if STRICT else (rows[:, None] >= rows[None, :])
        m = m & m_t[:, None]
        if GATE == 1:
            return tl.exp(tl.where(m, b_G[:, None] - b_G[None, :], float("-inf")))
        else:
            return tl.where(m, 1.0, 0.0)


@_device_fn
def _scan_tiles(cu_seqlens, i_v, i_nh, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr):
    """Program (V-block i_v, sequence x head i_nh) of a scan kernel -> head, token range [bos, eos) of the
    sequence, and the state tile: key rows o_k, value columns o_v, their masks and offsets in [K, V]."""
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    return i_h, bos, eos, o_k, m_k, o_v, m_v, m_k[:, None] & m_v[None, :], o_k[:, None] * V + o_v[None, :]


@_device_fn
def _chunk_tiles(t0, eos, i_h, o_k, m_k, o_v, m_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                 BT: tl.constexpr):
    """The chunk starting at token t0 of a sequence ending at eos, inside a scan kernel: its rows, their
    mask, its last valid row, and the masks / offsets of its [BT, K] and [BT, V-block] tiles."""
    o_t = t0 + tl.arange(0, BT)
    m_t = o_t < eos
    return (o_t, m_t, tl.minimum(t0 + BT, eos) - 1, m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :],
            (o_t[:, None] * H + i_h) * K + o_k[None, :], (o_t[:, None] * H + i_h) * V + o_v[None, :])


@_device_fn
def _load_state(ptr, i_nh, p_kv, m_kv, HAS: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, ACC: tl.constexpr):
    """One [K, V-block] tile of a per-sequence state [N, H, K, V] (zeros when there is none)."""
    b_S = tl.zeros([BK, BV], dtype=ACC)
    if HAS:
        b_S += tl.load(ptr + i_nh.to(tl.int64) * K * V + p_kv, mask=m_kv, other=0.0).to(ACC)
    return b_S


# ======================================================================================
# forward kernels
# ======================================================================================
@triton.jit
def _gate_cumsum(g, Gc, cu_seqlens, chunk_table, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr,
                 BK: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr):
    """G = in-chunk inclusive cumsum of the log-gates g (scalar [T, H] or vector [T, H, K]). Grid (chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, o_t, m_t, eos = _chunk_rows(chunk_table, cu_seqlens, i_c, BT)
    if GATE == 1:
        tl.store(Gc + o_t * H + i_h, tl.cumsum(tl.load(g + o_t * H + i_h, mask=m_t, other=0.0).to(ACC), 0),
                 mask=m_t)
    else:
        o_k = tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
        tl.store(Gc + p_tk, tl.cumsum(tl.load(g + p_tk, mask=m_tk, other=0.0).to(ACC), 0), mask=m_tk)


@triton.jit
def _prep_fwd(q, k, v, beta, Gc, A, Tm, W, U, cu_seqlens, chunk_table, scale,
              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
              BV: tl.constexpr, LOG2_BT: tl.constexpr, GATE: tl.constexpr, DELTA: tl.constexpr,
              ACC: tl.constexpr, DT: tl.constexpr, EMU: tl.constexpr, PREC: tl.constexpr, PREC_ACC: tl.constexpr):
    """One chunk: A -> A [T, H, BT]; delta: Tm = (I + L)^{-1}, W = Tm diag(b gamma) K, U = Tm diag(b) V.
    Grid (chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, o_t, m_t, eos = _chunk_rows(chunk_table, cu_seqlens, i_c, BT)
    rows = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.0).to(ACC) * scale
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0).to(ACC)

    last = tl.minimum(t0 + BT, eos) - 1
    b_G, b_Gl = _load_gate(Gc, o_t, m_t, last, i_h, o_k, m_k, H, K, GATE, ACC)

    # A = tril(Q K^T * Gamma) (q already scaled)
    if GATE == 2:
        # exact per-channel decays, one key column at a time: A[:, j] = sum_d q_d k_jd exp(G_d - G_jd)
        b_A = tl.zeros([BT, BT], dtype=ACC)
        for j in range(0, BT):
            t_j = tl.minimum(t0 + j, eos - 1)  # a padded row j meets only padded rows i >= j: any valid row does
            k_j = tl.load(k + (t_j * H + i_h) * K + o_k, mask=m_k, other=0.0).to(ACC)
            G_j = tl.load(Gc + (t_j * H + i_h) * K + o_k, mask=m_k, other=0.0).to(ACC)
            e = tl.exp(tl.where((rows >= j)[:, None] & m_tk, b_G - G_j[None, :], float("-inf")))
            b_A = tl.where((rows == j)[None, :], tl.sum(b_q * k_j[None, :] * e, 1)[:, None], b_A)
    else:
        b_A = _mm(b_q, tl.trans(b_k), DT, EMU, PREC) * _pair_decay(b_G, m_t, rows, False, False, GATE)
    tl.store(A + (o_t[:, None] * H + i_h) * BT + rows[None, :], b_A, mask=m_t[:, None])

    if DELTA:
        b_b = tl.load(beta + o_t * H + i_h, mask=m_t, other=0.0).to(ACC)
        # L = strict lower part of diag(b) (K K^T * Gamma)
        b_L = _mm(b_k, tl.trans(b_k), DT, EMU, PREC) * _pair_decay(b_G, m_t, rows, True, False, GATE)
        b_L = b_L * b_b[:, None]
        # (I + L)^{-1} by blocked doubling (block forward substitution, as stable as row-by-row
        # substitution and made of matmuls): if Tm inverts the block-diagonal part of I + L in blocks of
        # b, then [[A, 0], [C, D]]^{-1} = [[A^-1, 0], [-D^-1 C A^-1, D^-1]] gives the inverse in blocks of
        # 2b as Tm - Tm C_b Tm, C_b the entries of L that join the two halves of each 2b block. The
        # products stay in fp32 whatever the input dtype (tf32x3). (A rolled loop: unrolled, the six
        # levels of fp32 products took minutes to compile.)
        b_T = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0).to(ACC)
        b = 1
        for _ in range(LOG2_BT):
            join = (rows[:, None] // (2 * b) == rows[None, :] // (2 * b)) & (rows[:, None] // b != rows[None, :] // b)
            b_TC = _mm(b_T, tl.where(join, b_L, 0.0), ACC, False, PREC_ACC)
            b_T = b_T - _mm(b_TC, b_T, ACC, False, PREC_ACC)
            b *= 2
        tl.store(Tm + (o_t[:, None] * H + i_h) * BT + rows[None, :], b_T, mask=m_t[:, None])
        if GATE == 1:
            b_bg = b_b * tl.exp(tl.where(m_t, b_G, float("-inf")))
        else:
            b_bg = b_b
        b_W = _mm(b_T, b_k * b_bg[:, None], DT, EMU, PREC)
        tl.store(W + p_tk, b_W, mask=m_tk)
        for i_v in range(0, tl.cdiv(V, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            m_tv = m_t[:, None] & (o_v < V)[None, :]
            p_tv = (o_t[:, None] * H + i_h) * V + o_v[None, :]
            b_v = tl.load(v + p_tv, mask=m_tv, other=0.0).to(ACC)
            tl.store(U + p_tv, _mm(b_T, b_v * b_b[:, None], DT, EMU, PREC), mask=m_tv)


@triton.jit
def _state_fwd(k, v, W, U, Gc, h, D, h0, ht, cu_seqlens, chunk_offsets,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, GATE: tl.constexpr, DELTA: tl.constexpr, HAS_H0: tl.constexpr,
               STORE_HT: tl.constexpr, ACC: tl.constexpr, DT: tl.constexpr, EMU: tl.constexpr,
               PREC: tl.constexpr):
    """Sequential over the chunks of one sequence for one head and one V-block:
    h[c] = S entering chunk c; delta: D = U - W S; S <- Diag(exp(G_C)) S + (K * exp(G_C - G))^T D.
    Grid (N * H, V-blocks)."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_h, bos, eos, o_k, m_k, o_v, m_v, m_kv, p_kv = _scan_tiles(cu_seqlens, i_v, i_nh, H, K, V, BK, BV)
    c0 = tl.load(chunk_offsets + i_nh // H).to(tl.int64)
    NT = tl.cdiv(eos - bos, BT)
    b_S = _load_state(h0, i_nh, p_kv, m_kv, HAS_H0, K, V, BK, BV, ACC)
    for c in range(0, NT):
        o_t, m_t, last, m_tk, m_tv, p_tk, p_tv = _chunk_tiles(bos + c * BT, eos, i_h, o_k, m_k, o_v, m_v, H, K, V, BT)
        tl.store(h + ((c0 + c) * H + i_h) * K * V + p_kv, b_S, mask=m_kv)
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.0).to(ACC)
        if DELTA:
            b_w = tl.load(W + p_tk, mask=m_tk, other=0.0).to(ACC)
            b_d = tl.load(U + p_tv, mask=m_tv, other=0.0).to(ACC) - _mm(b_w, b_S, DT, EMU, PREC)
            tl.store(D + p_tv, b_d, mask=m_tv)
        else:
            b_d = tl.load(v + p_tv, mask=m_tv, other=0.0).to(ACC)
        b_G, b_Gl = _load_gate(Gc, o_t, m_t, last, i_h, o_k, m_k, H, K, GATE, ACC)
        b_kd = _key_to_end(b_k, b_G, b_Gl, m_t, m_k, GATE)
        b_S = _decay_state(b_S, b_Gl, GATE) + _mm(tl.trans(b_kd), b_d, DT, EMU, PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_kv, b_S, mask=m_kv)


@triton.jit
def _output_fwd(q, D, Gc, A, h, o, cu_seqlens, chunk_table, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr, DT: tl.constexpr, EMU: tl.constexpr,
                PREC: tl.constexpr):
    """O = scale (Q * gamma) S_0 + A D for one chunk and V-block. Grid (chunks, V-blocks, H)."""
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0, o_t, m_t, eos = _chunk_rows(chunk_table, cu_seqlens, i_c, BT)
    rows = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    p_tv = (o_t[:, None] * H + i_h) * V + o_v[None, :]
    last = tl.minimum(t0 + BT, eos) - 1
    b_G, b_Gl = _load_gate(Gc, o_t, m_t, last, i_h, o_k, m_k, H, K, GATE, ACC)
    b_q = tl.load(q + (o_t[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0).to(ACC) * scale
    b_qg = _query_from_start(b_q, b_G, m_t, m_k, GATE)
    b_h = tl.load(h + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
                  mask=m_k[:, None] & m_v[None, :], other=0.0).to(ACC)
    b_A = tl.load(A + (o_t[:, None] * H + i_h) * BT + rows[None, :], mask=m_t[:, None], other=0.0).to(ACC)
    b_d = tl.load(D + p_tv, mask=m_tv, other=0.0).to(ACC)
    b_o = _mm(b_qg, b_h, DT, EMU, PREC) + _mm(b_A, b_d, DT, EMU, PREC)
    tl.store(o + p_tv, b_o, mask=m_tv)


# ======================================================================================
# backward kernels
# ======================================================================================
@triton.jit
def _state_bwd(q, k, W, Gc, A, do, dh, dD, dh0, dht, cu_seqlens, chunk_offsets, scale,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, GATE: tl.constexpr, DELTA: tl.constexpr, HAS_H0: tl.constexpr,
               HAS_DHT: tl.constexpr, ACC: tl.constexpr, DT: tl.constexpr, EMU: tl.constexpr,
               PREC: tl.constexpr):
    """Reverse scan over the chunks of one sequence (one head, one V-block). With dS the gradient of
    the state LEAVING chunk c (stored as dh[c]):
        dD  = A^T dO + (K * exp(G_C - G)) dS                   (-> dD; for no delta term this is dv)
        dS <- Diag(exp(G_C)) dS + scale (Q * gamma)^T dO - [delta] W^T dD
    and after the first chunk dS is the gradient of the initial state. A^T is loaded transposed from
    memory (never a transposed dot result). Grid (N * H, V-blocks)."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)
    i_h, bos, eos, o_k, m_k, o_v, m_v, m_kv, p_kv = _scan_tiles(cu_seqlens, i_v, i_nh, H, K, V, BK, BV)
    c0 = tl.load(chunk_offsets + i_nh // H).to(tl.int64)
    NT = tl.cdiv(eos - bos, BT)
    rows = tl.arange(0, BT)
    b_dS = _load_state(dht, i_nh, p_kv, m_kv, HAS_DHT, K, V, BK, BV, ACC)
    for ci in range(0, NT):
        c = NT - 1 - ci
        o_t, m_t, last, m_tk, m_tv, p_tk, p_tv = _chunk_tiles(bos + c * BT, eos, i_h, o_k, m_k, o_v, m_v, H, K, V, BT)
        tl.store(dh + ((c0 + c) * H + i_h) * K * V + p_kv, b_dS, mask=m_kv)
        b_G, b_Gl = _load_gate(Gc, o_t, m_t, last, i_h, o_k, m_k, H, K, GATE, ACC)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0).to(ACC)
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.0).to(ACC)
        b_q = tl.load(q + p_tk, mask=m_tk, other=0.0).to(ACC) * scale
        # A^T [j, i] = A[i, j], read with swapped strides
        b_At = tl.load(A + (o_t[None, :] * H + i_h) * BT + rows[:, None], mask=m_t[None, :], other=0.0).to(ACC)
        b_kd = _key_to_end(b_k, b_G, b_Gl, m_t, m_k, GATE)
        b_dd = _mm(b_At, b_do, DT, EMU, PREC) + _mm(b_kd, b_dS, DT, EMU, PREC)
        tl.store(dD + p_tv, b_dd, mask=m_tv)
        b_qg = _query_from_start(b_q, b_G, m_t, m_k, GATE)
        b_dS = _decay_state(b_dS, b_Gl, GATE) + _mm(tl.trans(b_qg), b_do, DT, EMU, PREC)
        if DELTA:
            b_w = tl.load(W + p_tk, mask=m_tk, other=0.0).to(ACC)
            b_dS -= _mm(tl.trans(b_w), b_dd, DT, EMU, PREC)
    if HAS_H0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + p_kv, b_dS, mask=m_kv)


@triton.jit
def _grad_bwd(q, k, v, beta, Gc, Tm, h, dh, D, do, dD, dq, dk, dv, dbeta, dg, cu_seqlens, chunk_table, scale,
              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
              BV: tl.constexpr, GATE: tl.constexpr, DELTA: tl.constexpr, ACC: tl.constexpr, DT: tl.constexpr,
              EMU: tl.constexpr, PREC: tl.constexpr):
    """Chunk-local gradients of one chunk (all of K, a loop over V-blocks). With Qs = scale Q, S_0 = h[c],
    dS = dh[c] (gradient of the state leaving the chunk), dD from _state_bwd:

      O = (Qs * gamma) S_0 + A D:       dQs  = (dO S_0^T) * gamma + (dA * Gamma) K,  dA = dO D^T
                                        dK  += (dA^T * Gamma^T) Qs                   (dA^T = D dO^T)
      S_C = Diag(e^{G_C}) S_0 + (K * e^{G_C - G})^T D:  dK += (D dS^T) * e^{G_C - G}
      D = U - W S_0 (delta):            dU = dD, dW = -dD S_0^T
      U = Tm X, W = Tm Y, X = diag(b) V, Y = diag(b gamma) K, Tm = (I + L)^{-1}:
          dX = Tm^T dU, dY = Tm^T dW, dTm = dU X^T + dW Y^T, dL = -Tm^T dTm Tm^T (strictly lower)
          L_ij = b_i Gamma_ij (k_i . k_j):  db_i += sum_j dL_ij Gamma_ij (k_i . k_j),
          dK += R K + R^T K with R = diag(b) (dL * Gamma)
      log-gates: every factor is exp(G_row - G_col); G enters with + where it multiplies a query-side
      row and - on the key side, so dG = Qs . dQs - K . dK over the read and state terms, + b gamma K . dY
      (W), + rowsum(dL * L) - colsum(dL * L) (L), and G_C (the chunk's last row) also gets
      sum(S_0 * dS) e^{G_C} + sum_j K_j . dK^state_j.
      g -> G is an in-chunk cumsum, so dg = reverse cumsum of dG, plus the G_C term on every row;
      dq = scale dQs.
    Both orientations of dA, dL are computed as products of loaded operands: no dot result is ever
    transposed (see the module docstring). Grid (chunks, H)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0, o_t, m_t, eos = _chunk_rows(chunk_table, cu_seqlens, i_c, BT)
    last = tl.minimum(t0 + BT, eos) - 1
    rows = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (o_t[:, None] * H + i_h) * K + o_k[None, :]
    p_tt = (o_t[:, None] * H + i_h) * BT + rows[None, :]
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.0).to(ACC) * scale
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0).to(ACC)
    b_G, b_Gl = _load_gate(Gc, o_t, m_t, last, i_h, o_k, m_k, H, K, GATE, ACC)
    h_base = (i_c.to(tl.int64) * H + i_h) * K * V

    b_dqi = tl.zeros([BT, BK], dtype=ACC)  # dO S_0^T
    b_dA = tl.zeros([BT, BT], dtype=ACC)  # dO D^T
    b_dAt = tl.zeros([BT, BT], dtype=ACC)  # D dO^T (scalar / no gate)
    b_dks = tl.zeros([BT, BK], dtype=ACC)  # D dS^T
    b_hdh = tl.zeros([BK], dtype=ACC)  # sum_v S_0 * dS per key row
    if DELTA:
        b_b = tl.load(beta + o_t * H + i_h, mask=m_t, other=0.0).to(ACC)
        b_T = tl.load(Tm + p_tt, mask=m_t[:, None], other=0.0).to(ACC)
        b_Tt = tl.load(Tm + (o_t[None, :] * H + i_h) * BT + rows[:, None], mask=m_t[None, :], other=0.0).to(ACC)
        b_dW = tl.zeros([BT, BK], dtype=ACC)  # -dD S_0^T
        b_dWt = tl.zeros([BK, BT], dtype=ACC)  # -S_0 dD^T
        b_dT = tl.zeros([BT, BT], dtype=ACC)
        b_dTt = tl.zeros([BT, BT], dtype=ACC)
        b_db = tl.zeros([BT], dtype=ACC)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        p_tv = (o_t[:, None] * H + i_h) * V + o_v[None, :]
        p_kv = o_k[:, None] * V + o_v[None, :]
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0).to(ACC)
        b_d = tl.load(D + p_tv, mask=m_tv, other=0.0).to(ACC)
        b_h = tl.load(h + h_base + p_kv, mask=m_kv, other=0.0).to(ACC)
        b_dh = tl.load(dh + h_base + p_kv, mask=m_kv, other=0.0).to(ACC)
        b_dqi += _mm(b_do, tl.trans(b_h), DT, EMU, PREC)
        b_dA += _mm(b_do, tl.trans(b_d), DT, EMU, PREC)
        if GATE != 2:
            b_dAt += _mm(b_d, tl.trans(b_do), DT, EMU, PREC)
        b_dks += _mm(b_d, tl.trans(b_dh), DT, EMU, PREC)
        b_hdh += tl.sum(b_h * b_dh, 1)
        if DELTA:
            b_du = tl.load(dD + p_tv, mask=m_tv, other=0.0).to(ACC)
            b_dW -= _mm(b_du, tl.trans(b_h), DT, EMU, PREC)
            b_dWt -= _mm(b_h, tl.trans(b_du), DT, EMU, PREC)
            b_x = tl.load(v + p_tv, mask=m_tv, other=0.0).to(ACC)
            b_dx = _mm(b_Tt, b_du, DT, EMU, PREC)  # Tm^T dU
            tl.store(dv + p_tv, b_dx * b_b[:, None], mask=m_tv)
            b_db += tl.sum(b_x * b_dx, 1)
            b_x = b_x * b_b[:, None]
            b_dT += _mm(b_du, tl.trans(b_x), DT, EMU, PREC)
            b_dTt += _mm(b_x, tl.trans(b_du), DT, EMU, PREC)

    if GATE == 2:
        # exact per-channel decays, one key row j at a time (dA's column j by a reduction):
        #   dQs[i] += dA_ij k_j * exp(G_i - G_j),  dK[j] = sum_i dA_ij Qs_i * exp(G_i - G_j)   (i >= j)
        b_dq = b_dqi * tl.exp(tl.where(m_tk, b_G, float("-inf")))
        b_dka = tl.zeros([BT, BK], dtype=ACC)
        for j in range(0, BT):
            t_j = tl.minimum(t0 + j, eos - 1)  # a padded row j meets only padded rows i >= j: any valid row does
            k_j = tl.load(k + (t_j * H + i_h) * K + o_k, mask=m_k, other=0.0).to(ACC)
            G_j = tl.load(Gc + (t_j * H + i_h) * K + o_k, mask=m_k, other=0.0).to(ACC)
            dA_j = tl.sum(tl.where((rows == j)[None, :], b_dA, 0.0), 1)  # [BT] over i
            e = tl.exp(tl.where((rows >= j)[:, None] & m_tk, b_G - G_j[None, :], float("-inf")))
            b_dq += dA_j[:, None] * k_j[None, :] * e
            dk_j = tl.sum(dA_j[:, None] * b_q * e, 0)
            b_dka = tl.where((rows == j)[:, None], dk_j[None, :], b_dka)
        b_dks = b_dks * tl.exp(tl.where(m_tk, b_Gl[None, :] - b_G, float("-inf")))
        b_dk = b_dka + b_dks
        b_dG = b_q * b_dq - b_k * b_dk
        b_extra = b_hdh * tl.exp(b_Gl) + tl.sum(b_k * b_dks, 0)
        tl.store(dg + p_tk, tl.cumsum(b_dG, 0, reverse=True) + b_extra[None, :], mask=m_tk)
    else:
        if GATE == 1:
            b_gam = tl.exp(tl.where(m_t, b_G, float("-inf")))
            b_dq = b_dqi * b_gam[:, None]
            b_dks = b_dks * tl.exp(tl.where(m_t, b_Gl - b_G, float("-inf")))[:, None]
        else:
            b_gam = tl.where(m_t, 1.0, 0.0).to(ACC)
            b_dq = b_dqi
        b_dq += _mm(b_dA * _pair_decay(b_G, m_t, rows, False, False, GATE), b_k, DT, EMU, PREC)
        b_dk = _mm(b_dAt * _pair_decay(b_G, m_t, rows, False, True, GATE), b_q, DT, EMU, PREC) + b_dks
        # log-gate terms of the read and the state (before the WY terms, which enter G differently)
        b_dG = tl.sum(b_q * b_dq - b_k * b_dk, 1)
        if DELTA:
            b_bg = b_b * b_gam
            b_y = b_k * b_bg[:, None]
            b_dy = _mm(b_Tt, b_dW, DT, EMU, PREC)  # Tm^T dW
            b_kdy = tl.sum(b_k * b_dy, 1)
            b_dk += b_dy * b_bg[:, None]
            b_db += b_gam * b_kdy
            b_dT += _mm(b_dW, tl.trans(b_y), DT, EMU, PREC)
            b_dTt += _mm(b_y, b_dWt, DT, EMU, PREC)
            b_dL = -_mm(_mm(b_Tt, b_dT, DT, EMU, PREC), b_Tt, DT, EMU, PREC)
            b_dLt = -_mm(_mm(b_T, b_dTt, DT, EMU, PREC), b_T, DT, EMU, PREC)
            b_R = b_dL * _pair_decay(b_G, m_t, rows, True, False, GATE)  # dL * Gamma, strictly lower
            b_Rt = b_dLt * _pair_decay(b_G, m_t, rows, True, True, GATE)  # its transpose
            b_M = b_R * _mm(b_k, tl.trans(b_k), DT, EMU, PREC)  # dL_ij Gamma_ij (k_i . k_j)
            b_db += tl.sum(b_M, 1)
            b_dk += _mm(b_R * b_b[:, None], b_k, DT, EMU, PREC) + _mm(b_Rt * b_b[None, :], b_k, DT, EMU, PREC)
            tl.store(dbeta + o_t * H + i_h, b_db, mask=m_t)
            b_E = b_M * b_b[:, None]  # dL * L
            b_dG += b_bg * b_kdy + tl.sum(b_E, 1) - tl.sum(b_E, 0)
        if GATE == 1:
            b_extra = tl.sum(b_hdh) * tl.exp(b_Gl) + tl.sum(b_k * b_dks)
            tl.store(dg + o_t * H + i_h, tl.cumsum(b_dG, 0, reverse=True) + b_extra, mask=m_t)
    tl.store(dq + p_tk, b_dq * scale, mask=m_tk)
    tl.store(dk + p_tk, b_dk, mask=m_tk)


# ======================================================================================
# host side
# ======================================================================================
# Precision of fp32 products: tf32x3 splits each operand into two TF32 parts and keeps three of the four
# products (relative error about 2**-21, a few fp32 ulps) on tensor cores. Exact FMA-only "ieee" products
# made the fp32 kernels slow and their compiles take minutes (the delta rule's backward: 449 s ahead of
# time for sm_90 on this machine); plain TF32 (fla's default for fp32 inputs) keeps only 11 bits.
_FP32_PRECISION = "tf32x3"


def _dot_config(dtype: torch.dtype):
    """(ACC, DT, EMU, PREC, stored dtype) for inputs of ``dtype``: the accumulator dtype, the dtype the
    matmul operands are rounded to, whether the interpreter must emulate bf16 operands, the input
    precision of fp32 products and the dtype of the stored chunk states and pseudo-values."""
    if dtype == torch.bfloat16:
        return tl.float32, tl.bfloat16, INTERPRETED, None, dtype
    if dtype == torch.float16:
        return tl.float32, tl.float16, False, None, dtype
    if dtype == torch.float64:
        return tl.float64, tl.float64, False, None, dtype
    return tl.float32, tl.float32, False, _FP32_PRECISION, torch.float32


# Grids put the large counts (chunks, sequences x heads) on axis 0, which CUDA allows up to 2**31 - 1;
# axes 1 and 2 (V-blocks, heads) stay far below their limit of 65535.


def _tiles(K: int, V: int):
    """Register tiles: all of K in one tile (padded to a power of two >= 16), V in blocks of up to 64."""
    BK = max(16, triton.next_power_of_2(K))
    BV = min(64 if BK <= 128 else 32, max(16, triton.next_power_of_2(V)))
    return BK, BV


def _sm_count(device: torch.device) -> Optional[int]:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None


def _scan_block_v(P: Problem, device: torch.device) -> int:
    """V-block of the sequential scans (_state_fwd, _state_bwd, _recurrent_fwd): their grid is only
    N * H * V/BV programs, so when that leaves SMs idle (few long sequences, e.g. B = 1, T = 32768,
    H = 16: 32 programs at BV = 64 for 132 SMs) the V-block is halved, down to 32."""
    BV = _tiles(P.K, P.V)[1]
    sms = _sm_count(device)
    if sms is not None and BV > 32 and P.N * P.H * triton.cdiv(P.V, BV) < sms:
        BV //= 2
    return BV


def _flat(x: Optional[Tensor], P: Problem) -> Optional[Tensor]:
    """[B, T, H, *] -> [B*T, H, *] contiguous (the batch laid end to end; cu_seqlens marks the sequences)."""
    return None if x is None else x.reshape(P.B * P.T, *x.shape[2:]).contiguous()


def _states(P: Problem, C: int, k, v, W, U, Gc, h0, store_final: bool):
    """Run _state_fwd: chunk-entering states h [chunks, H, K, V], pseudo-values D, final state."""
    ACC, DT, EMU, PREC, sdt = _dot_config(k.dtype)
    BK, BV = _tiles(P.K, P.V)[0], _scan_block_v(P, k.device)
    h = torch.empty(P.n_chunks, P.H, P.K, P.V, dtype=sdt, device=k.device)
    D = torch.empty(P.B * P.T, P.H, P.V, dtype=sdt, device=k.device) if P.delta else v
    ht = torch.empty(P.N, P.H, P.K, P.V, dtype=P.acc_dtype, device=k.device) if store_final else None
    _state_fwd[(P.N * P.H, triton.cdiv(P.V, BV))](
        k, v, W, U, Gc, h, D, h0, ht, P.cu_seqlens, P.chunk_offsets,
        H=P.H, K=P.K, V=P.V, BT=C, BK=BK, BV=BV, GATE=P.gate, DELTA=P.delta, HAS_H0=h0 is not None,
        STORE_HT=store_final, ACC=ACC, DT=DT, EMU=EMU, PREC=PREC, **_launch(k.dtype))
    return h, D, ht


class _ChunkGatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, P: Problem, C: int, output_final_state: bool):
        ACC, DT, EMU, PREC, sdt = _dot_config(q.dtype)
        BK, BV = _tiles(P.K, P.V)
        TT, H, K, V = P.B * P.T, P.H, P.K, P.V
        dev, acc = q.device, P.acc_dtype
        qf, kf, vf, gf, bf = (_flat(x, P) for x in (q, k, v, g, beta))
        h0 = None if initial_state is None else initial_state.contiguous()
        Gc = None if P.gate == 0 else torch.empty(gf.shape, dtype=acc, device=dev)
        A = torch.empty(TT, H, C, dtype=acc, device=dev)
        Tm = W = U = None
        if P.delta:
            Tm = torch.empty(TT, H, C, dtype=acc, device=dev)
            W = torch.empty(TT, H, K, dtype=acc, device=dev)
            U = torch.empty(TT, H, V, dtype=acc, device=dev)
        cfg = dict(ACC=ACC, DT=DT, EMU=EMU, PREC=PREC, **_launch(q.dtype))
        if P.n_chunks and P.gate:
            _gate_cumsum[(P.n_chunks, H)](gf, Gc, P.cu_seqlens, P.chunk_table, H=H, K=K, BT=C, BK=BK, GATE=P.gate,
                                          ACC=ACC, **_launch(q.dtype))
        if P.n_chunks:
            _prep_fwd[(P.n_chunks, H)](
                qf, kf, vf, bf, Gc, A, Tm, W, U, P.cu_seqlens, P.chunk_table, P.scale,
                H=H, K=K, V=V, BT=C, BK=BK, BV=BV, LOG2_BT=C.bit_length() - 1, GATE=P.gate, DELTA=P.delta,
                PREC_ACC=None if q.dtype == torch.float64 else _FP32_PRECISION, **cfg)
        h, D, ht = _states(P, C, kf, vf, W, U, Gc, h0, output_final_state)
        o = torch.empty(TT, H, V, dtype=v.dtype, device=dev)
        if P.n_chunks:
            _output_fwd[(P.n_chunks, triton.cdiv(V, BV), H)](
                qf, D, Gc, A, h, o, P.cu_seqlens, P.chunk_table, P.scale,
                H=H, K=K, V=V, BT=C, BK=BK, BV=BV, GATE=P.gate, **cfg)
        ctx.save_for_backward(qf, kf, vf, bf, h0, Gc, A, Tm, W, U)
        ctx.P, ctx.C = P, C
        ctx.in_dtypes = (q.dtype, None if g is None else g.dtype, None if beta is None else beta.dtype,
                         None if initial_state is None else initial_state.dtype)
        ctx.set_materialize_grads(False)
        return o.view(P.B, P.T, H, V), ht

    @staticmethod
    def backward(ctx, do, dht):
        qf, kf, vf, bf, h0, Gc, A, Tm, W, U = ctx.saved_tensors
        P, C = ctx.P, ctx.C
        _, g_dtype, b_dtype, h0_dtype = ctx.in_dtypes
        ACC, DT, EMU, PREC, sdt = _dot_config(qf.dtype)
        BK, BV = _tiles(P.K, P.V)
        TT, H, K, V = P.B * P.T, P.H, P.K, P.V
        dev, acc = qf.device, P.acc_dtype
        cfg = dict(ACC=ACC, DT=DT, EMU=EMU, PREC=PREC, **_launch(qf.dtype))
        do = torch.zeros(TT, H, V, dtype=vf.dtype, device=dev) if do is None else _flat(do, P)
        dht = None if dht is None else dht.contiguous()

        h, D, _ = _states(P, C, kf, vf, W, U, Gc, h0, False)  # recomputed, not kept from the forward
        dh = torch.empty(P.n_chunks, H, K, V, dtype=sdt, device=dev)
        dD = torch.empty(TT, H, V, dtype=acc, device=dev)
        dh0 = None if h0 is None else torch.empty(P.N, H, K, V, dtype=acc, device=dev)
        BVs = _scan_block_v(P, dev)
        _state_bwd[(P.N * H, triton.cdiv(V, BVs))](
            qf, kf, W, Gc, A, do, dh, dD, dh0, dht, P.cu_seqlens, P.chunk_offsets, P.scale,
            H=H, K=K, V=V, BT=C, BK=BK, BV=BVs, GATE=P.gate, DELTA=P.delta, HAS_H0=h0 is not None,
            HAS_DHT=dht is not None, **cfg)

        dq, dk = torch.empty_like(qf), torch.empty_like(kf)
        dv = torch.empty_like(vf) if P.delta else dD.to(vf.dtype)
        dbeta = torch.empty(TT, H, dtype=b_dtype, device=dev) if P.delta else None
        dg = None if P.gate == 0 else torch.empty(Gc.shape, dtype=g_dtype, device=dev)
        if P.n_chunks:
            _grad_bwd[(P.n_chunks, H)](
                qf, kf, vf, bf, Gc, Tm, h, dh, D, do, dD, dq, dk, dv, dbeta, dg, P.cu_seqlens, P.chunk_table,
                P.scale, H=H, K=K, V=V, BT=C, BK=BK, BV=BV, GATE=P.gate, DELTA=P.delta, **cfg)
        else:  # nothing to read: zero-length input
            dq.zero_(), dk.zero_(), dv.zero_()
            for t in (dbeta, dg):
                if t is not None:
                    t.zero_()
        shape = (P.B, P.T, H)
        return (dq.view(*shape, K), dk.view(*shape, K), dv.view(*shape, V),
                None if dg is None else dg.view(*shape, *dg.shape[2:]),
                None if dbeta is None else dbeta.view(*shape),
                None if dh0 is None else dh0.to(h0_dtype), None, None, None)


def chunk_gated_delta_rule(
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
    chunk_size: int = 64,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Chunked (gated) delta rule / gated linear attention on Triton, forward and backward.

    q, k: [B, T, H, K]; v: [B, T, H, V] (one dtype: fp16, bf16, fp32, or fp64 under the interpreter)
    g: None | [B, T, H] scalar log-decay | [B, T, H, K] vector log-decay (no vector gate with beta)
    beta: None (no delta term: S_t = Diag(e^g) S + k v^T) | [B, T, H] (delta rule step sizes)
    scale: the read's scale, default K**-0.5
    initial_state: [N, H, K, V] (N = B, or the number of sequences with cu_seqlens)
    cu_seqlens: [N + 1] int32/int64 sequence bounds into a flattened batch (B must be 1); each sequence
        starts from its own initial state and has its own final state
    chunk_size: 16, 32 or 64
    Returns o [B, T, H, V] in v's dtype and the final state [N, H, K, V] in fp32 (fp64 for fp64 inputs)
    or None. Gradients flow to q, k, v, g, beta and initial_state.

    Same recurrence and conventions as kernels/gla.py (beta None) and kernels/delta_rule.py (beta given);
    raises TritonUnavailable where Triton cannot run (see triton_support.triton_available).
    """
    P = prepare(q, k, v, g, beta, scale, initial_state, cu_seqlens, chunk_size, "chunk_gated_delta_rule")
    o, ht = _ChunkGatedDeltaRule.apply(q, k, v, g, beta, initial_state, P, int(chunk_size),
                                       bool(output_final_state))
    return o, (ht if output_final_state else None)
