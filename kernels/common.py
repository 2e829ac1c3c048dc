"""What the sequence kernels share: their contract, their shape legend, and the chunking helpers.

Shape legend (every kernel file)
--------------------------------
    B  batch size            T  sequence length       H  heads
    K  key / query head dim  V  value head dim
    N  number of chunks (ceil(T / C))                 C  chunk length (``chunk_size``)

The op contract (the fla convention, fla-org/flash-linear-attention ``fla/ops``): q, k ``[B, T, H, K]`` and
v ``[B, T, H, V]`` are positional; everything else is keyword-only, so two gates of the same shape
(a log-decay ``g`` and a step size ``beta``, both ``[B, T, H]``) cannot be swapped silently:

    op(q, k, v, *, <gates and step sizes>, scale=None, initial_state=None, output_final_state=False
       [, chunk_size=64]) -> (o [B, T, H, V] in v.dtype, final state or None)
    step(q, k, v, *, <gates>, state=None, scale=None) -> (o [B, H, V], new state)   (one token, [B, H, D])

Gates are in LOG space (g <= 0), ``scale`` defaults to K**-0.5, recurrent states are fp32. Each op has a
token-by-token reference (``naive_*``, straight from its paper's recurrence) beside its chunked form.
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


def unit_lower_inverse(L: Tensor) -> Tensor:
    """(I + L)^{-1} for strictly lower-triangular L [..., C, C]: the UT transform of the WY representation
    (DeltaNet, Yang et al. 2024, https://arxiv.org/abs/2406.06484, Sec. 3.2), one batched triangular
    solve for every chunk at once (used by kernels/delta_rule.py and kernels/log_linear.py)."""
    C = L.shape[-1]
    eye = torch.eye(C, dtype=torch.float32, device=L.device)
    return torch.linalg.solve_triangular(eye + L, eye.expand_as(L), upper=False, unitriangular=True)


def chunk_operands(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float], chunk_size: int):
    """The operands of a chunked kernel: q * scale, k, v as [B, H, N, C, D] fp32 chunks (zero-padded along T)
    and the causal mask tril [C, C] (scale None: K**-0.5)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    C = int(chunk_size)
    qc = _to_chunks(q, C) * scale  # [B, H, N, C, K]
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    return qc, _to_chunks(k, C), _to_chunks(v, C), tril


def oracle_start(q: Tensor, v: Tensor, scale: Optional[float], initial_state: Optional[Tensor]):
    """(scale, S_0) of a token-by-token oracle over q [B, T, H, K], v [B, T, H, V]: scale None -> K**-0.5,
    initial_state None -> zeros [B, H, K, V] fp32."""
    B, _, H, K = q.shape
    return (K ** -0.5 if scale is None else scale), _init_state(initial_state, B, H, K, v.shape[-1], q.device)


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


def _sub_chunk_len(C: int, target: int = 16) -> int:
    """Largest divisor of C that is <= target."""
    return max(d for d in range(1, min(C, target) + 1) if C % d == 0)


def _intra_vector(q: Tensor, k: Tensor, G: Tensor, c: int) -> Tensor:
    """Causal intra-chunk score matrix for vector gates, without overflow (GLA's chunked form).

    q, k, G: [B, H, N, C, K] (q already scaled, G the inclusive in-chunk cumsum of g).
    Returns A [B, H, N, C, C] with A_ij = sum_d q_id k_jd exp(G_id - G_jd) for i >= j, 0 otherwise.

    A direct "q * exp(G), k * exp(-G)" factorisation overflows when the decay is strong
    (exp(-G) grows like exp(5 C)). GLA (Yang et al. 2023, Sec. 4, secondary chunking) splits
    the chunk into sub-chunks of length c:
      * diagonal sub-blocks use the exact [c, c, K] tensor exp(G_i - G_j), masked to i >= j
        before the exp, so every exponent is <= 0;
      * an off-diagonal block (I > J) factors through the last position r of sub-chunk J:
        exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j), both exponents <= 0.
    """
    B, H, N, C, K = q.shape
    m = C // c
    qs = q.view(B, H, N, m, c, K)
    ks = k.view(B, H, N, m, c, K)
    Gs = G.view(B, H, N, m, c, K)

    # diagonal sub-blocks: [B, H, N, m, c, c, K]
    tril_c = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    D = Gs[..., :, None, :] - Gs[..., None, :, :]
    A_diag = (qs[..., :, None, :] * ks[..., None, :, :] * _decay(D, tril_c[:, :, None])).sum(-1)  # [B,H,N,m,c,c]
    if m == 1:
        return A_diag.view(B, H, N, C, C)

    # off-diagonal sub-blocks I > J through the reference row r = last of sub-chunk J
    Gr = Gs[..., -1, :]  # [B, H, N, m, K]
    k_ref = ks * _decay(Gr[..., None, :] - Gs)  # [B,H,N,m(J),c,K], exponent <= 0
    E = Gs[..., :, None, :, :] - Gr[..., None, :, None, :]  # [B,H,N,m(I),m(J),c,K]
    lower_m = torch.ones(m, m, dtype=torch.bool, device=q.device).tril(-1)
    q_ref = qs[..., :, None, :, :] * _decay(E, lower_m[:, :, None, None])  # [B,H,N,m(I),m(J),c,K]
    A_off = torch.einsum("bhnIJck,bhnJdk->bhnIJcd", q_ref, k_ref)  # [B,H,N,m,m,c,c]

    eye_m = torch.eye(m, dtype=q.dtype, device=q.device)
    A_blocks = A_off + A_diag[:, :, :, :, None] * eye_m[:, :, None, None]
    return A_blocks.permute(0, 1, 2, 3, 5, 4, 6).reshape(B, H, N, C, C)


# exp(x) with |x| <= _SPAN never overflows a product of two such factors summed over a head (e^(2 _SPAN) K << 3e38)
_SPAN = 30.0


def _intra_scores(q: Tensor, k: Tensor, G: Tensor, g_max: float, G_col: Optional[Tensor] = None,
                  strict: bool = False) -> Tensor:
    """Causal intra-chunk score matrix for vector (per key channel) decays, as matmuls, exact for any gate.

    q, k, G: [B, H, N, C, K] (q already scaled; G an in-chunk cumsum of the log-decay g for the rows, ``G_col``
    the inclusive cumsum for the columns, default G; ``g_max`` >= max |g|). Returns A [B, H, N, C, C] with
        A_ij = sum_d q_id k_jd exp(G_id - G_col_jd)   for i >= j (i > j when ``strict``), 0 otherwise,
    for the inclusive cumsum (G_i - G_j <= 0: GLA, KDA) or the exclusive row cumsum G_{i-1} with ``strict`` (DPLR).

    A block of b rows and columns factors through a reference row p inside it,
        exp(G_i - G_col_j) = exp(G_i - G_col_p) exp(G_col_p - G_col_j),
    one matmul of (q * exp(G - G_col_p)) and (k * exp(G_col_p - G_col)), when every factor stays within
    exp(+-_SPAN): with p the block's middle row, |exponent| <= (b/2 + 1) g_max. A block too long for its gates is
    halved: its lower-left quadrant factors through the last row s of the upper half with both exponents <= 0
    (rows below s, columns up to s: exp(G_i - G_col_s) exp(G_col_s - G_col_j)), the two diagonal halves recurse.
    Weak gates give one matmul per chunk; strong gates smaller blocks, down to single rows (where the diagonal is
    q_i . k_i, or 0 when strict). GLA's secondary chunking (Yang et al. 2023, Sec. 4) and fla's KDA kernels use
    the same factorisation through reference rows with fixed sub-chunks; here the block length follows the gates
    so that the elementwise work stays O(C K) per level instead of O(C c K).
    """
    Gc = G if G_col is None else G_col
    B, H, N, C, K = q.shape
    out = _score_blocks(q.view(B, H, N, 1, C, K), k.view(B, H, N, 1, C, K), G.view(B, H, N, 1, C, K),
                        Gc.view(B, H, N, 1, C, K), float(g_max), strict)
    return out.view(B, H, N, C, C)


def _score_blocks(q: Tensor, k: Tensor, Gq: Tensor, Gk: Tensor, g_max: float, strict: bool) -> Tensor:
    """``_intra_scores`` on diagonal blocks: q, k, Gq, Gk [..., nb, b, K] -> [..., nb, b, b]."""
    b = q.shape[-2]
    if b == 1:
        # one row: the diagonal q_i . k_i exp(G_i - G_col_i) is q_i . k_i for the inclusive cumsum, absent if strict
        return q.new_zeros(*q.shape[:-1], 1) if strict else (q * k).sum(-1, keepdim=True)
    if (b // 2 + 1) * g_max <= _SPAN:
        tril = torch.ones(b, b, dtype=torch.bool, device=q.device).tril(-1 if strict else 0)
        Gp = Gk[..., b // 2:b // 2 + 1, :]  # the middle row's column cumsum: [..., nb, 1, K]
        A = (q * torch.exp(Gq - Gp)) @ (k * torch.exp(Gp - Gk)).transpose(-1, -2)
        return torch.where(tril, A, 0.0)
    h = b // 2  # upper half rows [0, h), lower half [h, b)
    # lower-left quadrant through the last row s = h - 1 of the upper half: exponents <= 0, tiny factors flushed
    Gs = Gk[..., h - 1:h, :]
    low = (q[..., h:, :] * _decay(Gq[..., h:, :] - Gs)) @ (k[..., :h, :] * _decay(Gs - Gk[..., :h, :])).transpose(-1, -2)
    if b % 2 == 0:  # both halves in one call: [..., nb, b, K] -> [..., 2 nb, h, K]
        lead, K = q.shape[:-2], q.shape[-1]

        def halves(t):
            return t.reshape(*lead[:-1], 2 * lead[-1], h, K)

        diag = _score_blocks(halves(q), halves(k), halves(Gq), halves(Gk), g_max, strict).view(*lead, 2, h, h)
        upper, lower = diag[..., 0, :, :], diag[..., 1, :, :]
    else:
        upper = _score_blocks(q[..., :h, :], k[..., :h, :], Gq[..., :h, :], Gk[..., :h, :], g_max, strict)
        lower = _score_blocks(q[..., h:, :], k[..., h:, :], Gq[..., h:, :], Gk[..., h:, :], g_max, strict)
    top = torch.cat([upper, low.new_zeros(*low.shape[:-2], h, b - h)], dim=-1)
    return torch.cat([top, torch.cat([low, lower], dim=-1)], dim=-2)
