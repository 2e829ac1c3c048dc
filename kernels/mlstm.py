"""mLSTM: the matrix memory of xLSTM, with an exponential input gate, a normaliser state and a max-stabiliser.

Shapes and the op contract: kernels/common.py. The state is a dict (not one tensor):
    {"memory": S [B, H, K, V], "normalizer": n [B, H, K], "stabilizer": m [B, H]}, all fp32.

Recurrence (per batch and head; Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory",
https://arxiv.org/abs/2405.04517, Sec. 2.3, Eq. 19-27, transposed to the K x V convention: xLSTM writes
C_t = f_t C_{t-1} + i_t v_t k_t^T):

    S_t = f_t S_{t-1} + i_t k_t v_t^T,     n_t = f_t n_{t-1} + i_t k_t
    h_t = S_t^T q~_t / max(|n_t^T q~_t|, 1),         q~ = scale * q
    i_t = exp(i~_t)  (``i``: the input gate's pre-activation, [B, T, H]),   f_t = exp(g_t)  (``g``: log forget
    gate <= 0, [B, T, H], e.g. logsigmoid; None: f = 1)

exp(i~) overflows, so the state is kept stabilised (Eq. 15-17): with m_t = max(g_t + m_{t-1}, i~_t),
    f'_t = exp(g_t + m_{t-1} - m_t) <= 1,  i'_t = exp(i~_t - m_t) <= 1,
    S'_t = f'_t S'_{t-1} + i'_t k_t v_t^T,  n'_t = f'_t n'_{t-1} + i'_t k_t      (S_t = e^{m_t} S'_t)
    h_t  = S'_t^T q~_t / (max(|n'_t^T q~_t|, exp(-m_t)) + eps)
exactly the h above when eps = 0 (exp(-m) is the image of the 1). The state starts at S' = 0, n' = 0, m = 0, and
eps = 1e-6, as in NX-AI's mlstm_kernels (``torch/recurrent/native_step.py``); with eps > 0 the output depends
slightly on m, so the chunked form and the token loop share this stabiliser: their m agree exactly in real
arithmetic (below), hence their outputs too.

Functions
    naive_recurrent_mlstm  token-by-token oracle (the stabilised recurrence above)
    chunk_mlstm            chunkwise-parallel form for training (pure PyTorch, autograd)
    mlstm_step             one decoding step
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .common import _to_chunks, chunk_operands

Tensor = torch.Tensor

__all__ = ["EPS", "naive_recurrent_mlstm", "chunk_mlstm", "mlstm_step", "mlstm_init_state"]

EPS = 1e-6  # added to the denominator (mlstm_kernels' default)


def mlstm_init_state(B: int, H: int, K: int, V: int, device=None) -> dict:
    """The state before the first token: S' = 0, n' = 0, m = 0."""
    z = dict(dtype=torch.float32, device=device)
    return {"memory": torch.zeros(B, H, K, V, **z), "normalizer": torch.zeros(B, H, K, **z),
            "stabilizer": torch.zeros(B, H, **z)}


def _start(state: Optional[dict], B: int, H: int, K: int, V: int, device, dtype=torch.float32):
    st = mlstm_init_state(B, H, K, V, device) if state is None else state
    return st["memory"].to(dtype), st["normalizer"].to(dtype), st["stabilizer"].to(dtype)


def _dtype(q: Tensor) -> torch.dtype:
    """The loop's arithmetic: fp32, or fp64 for fp64 inputs (the tests of the stabiliser identity)."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _token(S, n, m, q, k, v, i, g, scale: float, eps: float):
    """One stabilised step: S [B,H,K,V], n [B,H,K], m [B,H]; q, k [B,H,K]; v [B,H,V]; i, g [B,H] (g may be None)."""
    dt = S.dtype
    i = i.to(dt)
    g = torch.zeros_like(i) if g is None else g.to(dt)
    m_new = torch.maximum(g + m, i)
    f_s, i_s = torch.exp(g + m - m_new), torch.exp(i - m_new)  # f', i' <= 1
    k, v = k.to(dt), v.to(dt)
    S = f_s[:, :, None, None] * S + i_s[:, :, None, None] * k[:, :, :, None] * v[:, :, None, :]
    n = f_s[:, :, None] * n + i_s[:, :, None] * k
    qs = q.to(dt) * scale
    num = torch.einsum("bhkv,bhk->bhv", S, qs)
    den = torch.maximum(torch.einsum("bhk,bhk->bh", n, qs).abs(), torch.exp(-m_new)) + eps
    return S, n, m_new, num / den[:, :, None]


# --------------------------------------------------------------------------------------
# reference: token-by-token recurrence
# --------------------------------------------------------------------------------------
def naive_recurrent_mlstm(q: Tensor, k: Tensor, v: Tensor, *, i: Tensor, g: Optional[Tensor] = None,
                          scale: Optional[float] = None, initial_state: Optional[dict] = None,
                          output_final_state: bool = False, eps: float = EPS) -> Tuple[Tensor, Optional[dict]]:
    """Oracle: the stabilised recurrence of the module docstring, one token at a time.

    q, k: [B, T, H, K]; v: [B, T, H, V]; i: [B, T, H]; g: None | [B, T, H]
    returns h [B, T, H, V] (v.dtype) and the final state dict (or None). Computes in fp32 (fp64 for fp64 q).
    """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S, n, m = _start(initial_state, B, H, K, v.shape[-1], q.device, _dtype(q))
    outs = []
    for t in range(T):
        S, n, m, h = _token(S, n, m, q[:, t], k[:, t], v[:, t], i[:, t], None if g is None else g[:, t], scale, eps)
        outs.append(h)
    o = torch.stack(outs, dim=1).to(v.dtype)  # [B, T, H, V]
    return o, ({"memory": S, "normalizer": n, "stabilizer": m} if output_final_state else None)


# --------------------------------------------------------------------------------------
# one decoding step
# --------------------------------------------------------------------------------------
def mlstm_step(q: Tensor, k: Tensor, v: Tensor, *, i: Tensor, g: Optional[Tensor] = None,
               state: Optional[dict] = None, scale: Optional[float] = None, eps: float = EPS) -> Tuple[Tensor, dict]:
    """One token. q, k: [B, H, K]; v: [B, H, V]; i, g: [B, H] (g may be None); state: the dict above or None.
    Returns h [B, H, V] (v.dtype) and the new state."""
    B, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S, n, m = _start(state, B, H, K, v.shape[-1], q.device, _dtype(q))
    S, n, m, h = _token(S, n, m, q, k, v, i, g, scale, eps)
    return h.to(v.dtype), {"memory": S, "normalizer": n, "stabilizer": m}


# --------------------------------------------------------------------------------------
# chunkwise form
# --------------------------------------------------------------------------------------
def _segsum(g: Tensor, tril: Tensor) -> Tensor:
    """seg[..., i, j] = sum_{j < l <= i} g_l for j <= i, -inf above the diagonal; g [..., C] -> [..., C, C].

    Summed directly per segment (the ``segsum`` of Mamba2's minimal SSD, Dao & Gu 2024, ``ssd_minimal.py``), not
    as a difference of cumsums: with strong forget gates the in-chunk cumsum reaches hundreds, and b_i - b_j near
    the diagonal would carry its absolute rounding error (~|b| * 6e-8), which exp turns into a relative error of
    the same size (5e-5 at log f = -8 over 64 steps).
    """
    C = g.shape[-1]
    strict = torch.ones(C, C, dtype=torch.bool, device=g.device).tril(-1)
    x = torch.where(strict, g[..., :, None].expand(*g.shape, C), 0.0)  # x[.., l, j] = g_l for l > j
    return torch.where(tril, x.cumsum(-2), -torch.inf)
# --------------------------------------------------------------------------------------
def chunk_mlstm(q: Tensor, k: Tensor, v: Tensor, *, i: Tensor, g: Optional[Tensor] = None,
                scale: Optional[float] = None, initial_state: Optional[dict] = None,
                output_final_state: bool = False, chunk_size: int = 64,
                eps: float = EPS) -> Tuple[Tensor, Optional[dict]]:
    """Chunkwise-parallel mLSTM (same contract as ``naive_recurrent_mlstm``).

    The chunkwise form of mlstm_kernels (NX-AI, ``torch/chunkwise/native/fw.py``; Beck et al. 2025, "Tiled
    Flash Linear Attention", https://arxiv.org/abs/2503.14376), derived from the recurrence. In chunk k, with
    b_i = sum_{l<=i} g_l (inclusive, in-chunk), chunk decay b_C, entering stabilised state (C, n, m_{k-1}):
        a_j = b_C - b_j + i~_j;   m_k = max(b_C + m_{k-1}, max_j a_j)
        C_k = e^{b_C + m_{k-1} - m_k} C + sum_j e^{a_j - m_k} k_j v_j^T,   n_k likewise with v_j -> 1
    (sequential over chunks), and for all chunks at once
        D_ij = b_i - b_j + i~_j (j <= i),   m_i = max(b_i + m_{k-1}, max_{j<=i} D_ij)
        num_i = e^{b_i + m_{k-1} - m_i} C^T q~_i + sum_{j<=i} e^{D_ij - m_i} (q~_i . k_j) v_j
        den_i = max(|e^{b_i + m_{k-1} - m_i} n^T q~_i + sum_{j<=i} e^{D_ij - m_i} (q~_i . k_j)|, e^{-m_i}) + eps
    Unrolling m_t = max(g_t + m_{t-1}, i~_t) gives m_t = max(b_t + m_{k-1}, max_{j<=t} D_tj): the recurrent
    stabiliser itself, so both forms compute the same h (and the same stabilised final state). Every exponent
    above is <= 0. Padding of T uses i~ = -inf (no write, m unchanged) and g = 0.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = int(chunk_size)
    qc, kc, vc, tril = chunk_operands(q, k, v, scale, C)  # [B, H, N, C, K|V], q scaled
    N = qc.shape[2]
    ic = _to_chunks(i, C)  # [B, H, N, C]
    if N * C != T:  # padded steps write nothing: i~ = -inf
        valid = (torch.arange(N * C, device=q.device) < T).view(N, C)
        ic = torch.where(valid, ic, -torch.inf)
    gc = torch.zeros_like(ic) if g is None else _to_chunks(g, C)  # [B, H, N, C]
    seg = _segsum(gc, tril)  # seg[i, j] = b_i - b_j = sum_{j<l<=i} g_l, -inf above the diagonal
    b = gc.cumsum(-1)  # inclusive in-chunk cumsum [B, H, N, C]
    b_last = b[..., -1]  # [B, H, N]
    a = seg[..., -1, :] + ic  # a_j = b_C - b_j + i~_j  [B, H, N, C]

    S, n, m = _start(initial_state, B, H, K, V, q.device)
    S_n, n_n, m_n = [], [], []
    for c in range(N):
        S_n.append(S)
        n_n.append(n)
        m_n.append(m)
        m_new = torch.maximum(b_last[:, :, c] + m, a[:, :, c].amax(-1))  # [B, H]
        f = torch.exp(b_last[:, :, c] + m - m_new)  # [B, H]
        w = torch.exp(a[:, :, c] - m_new[..., None])  # [B, H, C]
        kw = kc[:, :, c] * w[..., None]  # [B, H, C, K]
        S = f[..., None, None] * S + kw.transpose(-1, -2) @ vc[:, :, c]
        n = f[..., None] * n + kw.sum(-2)
        m = m_new
    S_prev, n_prev, m_prev = torch.stack(S_n, 2), torch.stack(n_n, 2), torch.stack(m_n, 2)  # [B,H,N,K,V] [B,H,N,K] [B,H,N]

    D = seg + ic[..., None, :]  # [B, H, N, C, C], -inf above the diagonal
    m_inter = b + m_prev[..., None]  # [B, H, N, C]
    m_i = torch.maximum(m_inter, D.amax(-1))
    e_inter = torch.exp(m_inter - m_i)  # [B, H, N, C]
    A = (qc @ kc.transpose(-1, -2)) * torch.exp(D - m_i[..., None])  # [B, H, N, C, C], 0 above the diagonal
    num = e_inter[..., None] * (qc @ S_prev) + A @ vc  # [B, H, N, C, V]
    den = e_inter * (qc @ n_prev[..., None])[..., 0] + A.sum(-1)
    h = num / (torch.maximum(den.abs(), torch.exp(-m_i)) + eps)[..., None]
    o = h.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(v.dtype), ({"memory": S, "normalizer": n, "stabilizer": m} if output_final_state else None)
