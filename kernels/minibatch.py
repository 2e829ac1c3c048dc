"""Mini-batch memory engine: deep (MLP) and non-linear test-time-trained memories, the Miras design space.

Shapes and the op contract: kernels/common.py; here also N = B*H rows (one memory per sequence and head),
E the tokens whose gradients a chunk uses (the chunk, plus c-1 earlier ones for the Omega rule), P the numbers
of one memory's packed state.

The memory (Miras, Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, Sec. 3) is a function M_W of its
weights W, trained online by its inner loss l (the attentional bias), per head, in row form (a [K, V] weight
maps a key row x to x W):

    a^0 = x;  z^l = a^{l-1} W_l (+ b_l);  a^l = act(z^l) (l < L);  y = LN(z^L) (+ x with a residual)
    matrix: one dense layer, no bias (S in R^{K x V});  vector: one elementwise layer y = x * w (K = V);
    mlp: L dense layers (TTT-MLP, Sun et al. 2024, https://arxiv.org/abs/2407.04620; Titans, Behrouz et al.
    2024, https://arxiv.org/abs/2501.00663, Sec. 3.1)

The state is A (weights before the retention map Phi; W = Phi(A)), the momentum S when the update has one, and
the anchor A_a: every token's gradient is taken at the memory of its mini-batch start (TTT, Sec. 2.4-2.5; Titans
Eq. 16), t' = t - (t mod C), C = ``chunk_size``, the mini-batch size (a hyperparameter of the model: C = 1 is
the exact online recurrence). Per token t, with u_t = grad_W l(Phi(A_{t'}); k_t, v_t):

    gd:             A_t = a_t A_{t-1} - theta_t u_t
    momentum:       S_t = eta_t S_{t-1} - theta_t u_t;   A_t = a_t A_{t-1} + S_t         (Titans Eq. 13-14)
    newton_schulz:  S_t = eta_t S_{t-1} + u_t;   A_t = a_t A_{t-1} - theta_t NS_5(S_t)   (ATLAS, Muon's NS)
    read:           o_t = M_{Phi(A_t)}(scale q_t)   (``read_before``: M_{Phi(A_{t-1})})

a_t = exp(g_t) the retention decay, theta_t the step size, eta_t = exp(log_eta_t) the momentum. Phi is the
identity, or (Miras Sec. 4) ``lq``: A / ||A||_q^(q-2) per weight tensor (Moneta), ``kl``: c softmax(A) over each
weight's input axis (Memora), ``shrink``: sign(A) max(|A| - lam, 0) (elastic net, FTRL form). The inner loss
gives psi = dl/dy at r = y - v: dot -v, l2 r, lp p r (r^2 + eps)^((p-2)/2) (the smooth |r| = sqrt(r^2 + eps)),
huber (coordinate clamp(r, -d, d); norm r min(1, d/||r||); yaad r if ||r|| <= d else d r/|r|_eps), and with
the Omega rule (ATLAS, Behrouz et al. 2025, https://arxiv.org/abs/2505.23735) u_t sums gamma_i u_i over the
window i = t-c+1..t, all taken at the anchor. TTT's token scale (``token_scale``): inside a mini-batch the read
and carried weights are A_a + c_i (A_i - A_a), c_i = max(0, 1/i + delta_i) at in-batch position i (1-based).
``grad_clip``: each token's gradient (each term of an Omega window) is scaled by m tanh(|u|/m) / |u| (|u| over
all weight tensors).

Gradients: every u_t is a sum over layers of rank-one products X_t^T Delta_t (layer input and back-propagated
error of token t at the anchor), so inside a chunk (identity Phi, gd or momentum) the reads have a closed dual
form without per-token weight copies (TTT Sec. 2.7 generalised to decay and momentum):

    W_i = beta_i W_0 + f_i S_0 - sum_j G_ij u_j   (beta_i = prod a, G = R N, f = R m: the decay and momentum
                                                   products of the chunk, computed from log-space cumsums)
    z^l_q = beta (A_q W_0 + b_0) + f (A_q S_0 + s_0) - (G o (A_q X^T + 1)) Delta      (per layer, A_q the reads'
                                                                                      own layer inputs)

A non-identity Phi or Newton-Schulz needs the per-token weights: they are materialised per chunk
(C copies of W per row), then mapped and read token by token.

Functions (gates [B, T, H]: ``beta`` step size, ``g`` log-decay, ``log_eta`` log-momentum, ``gamma`` Omega
weights, ``delta`` Huber threshold; ``statics``: the learned tensors of the memory, [B, H, ...]):
    naive_minibatch    token-by-token reference, straight from the recurrences above
    chunk_minibatch    chunked: dual form, or materialised per-token weights
    minibatch_step     one decoding step (``pos`` an int or a [B] tensor: rows at their own positions)
    minibatch_read     a read of a state without a write (Titans' memory as context)
The state is {"memory": [B, H, P] fp32 packed (A, S, A_a, the Omega window), "pos": tokens seen}.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["Layer", "MemorySpec", "tensor_shapes", "weight_numel", "state_parts", "packed_numel",
           "naive_minibatch", "chunk_minibatch", "minibatch_step", "minibatch_read", "memory_forward",
           "grad_factors", "newton_schulz"]

LN_EPS = 1e-6  # TTT's LayerNorm epsilon inside the memory
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Muon's quintic Newton-Schulz (K. Jordan, github.com/KellerJordan/Muon)


class Layer(NamedTuple):
    d_in: int
    d_out: int
    diag: bool = False  # elementwise weight [d] (a vector memory), else dense [d_in, d_out]
    bias: bool = False


class MemorySpec(NamedTuple):
    """What the engine computes: names and numbers only (built from a MemoryConfig by blocks/dispatch.py)."""

    layers: tuple
    activation: str = "none"  # between layers: gelu | gelu_tanh | silu
    norm: bool = False  # LayerNorm (affine from statics) on the memory's output
    residual: bool = False
    scale: float = 1.0  # on q before a read
    loss: str = "l2"  # dot | l2 | lp | huber
    p: float = 2.0
    abs_eps: float = 1e-6
    huber_form: str = "yaad"  # yaad | coordinate | norm
    window: int = 1  # Omega rule window c (1: the plain per-token loss)
    phi: str = "identity"  # identity | lq | kl | shrink
    q: float = 2.0
    kl_scale: float = 1.0
    update: str = "gd"  # gd | momentum | newton_schulz
    ns_steps: int = 5
    read_before: bool = False
    token_scale: bool = False
    grad_clip: Optional[float] = None
    chunk: int = 1  # the mini-batch size C


# --------------------------------------------------------------------------------------------- layout
def tensor_shapes(spec: MemorySpec) -> list:
    """(layer, kind, shape) of every weight tensor in packing order; kind dense | diag | bias."""
    out = []
    for li, lay in enumerate(spec.layers):
        out.append((li, "diag", (lay.d_out,)) if lay.diag else (li, "dense", (lay.d_in, lay.d_out)))
        if lay.bias:
            out.append((li, "bias", (lay.d_out,)))
    return out


def weight_numel(spec: MemorySpec) -> int:
    return sum(math.prod(s) for _, _, s in tensor_shapes(spec))


def state_parts(spec: MemorySpec) -> dict:
    """Numbers of each part of one memory's packed state: A, S (momentum), Wa (anchor, C > 1), window."""
    pw = weight_numel(spec)
    K, V = spec.layers[0].d_in, spec.layers[-1].d_out
    return {"A": pw, "S": pw if spec.update != "gd" else 0, "Wa": pw if spec.chunk > 1 else 0,
            "window": (spec.window - 1) * (K + V + 1)}


def packed_numel(spec: MemorySpec) -> int:
    return sum(state_parts(spec).values())


def _split(spec: MemorySpec, flat: Tensor) -> list:
    """[N, Pw] -> the weight tensors [N, *shape]."""
    out, off = [], 0
    for _, _, shape in tensor_shapes(spec):
        n = math.prod(shape)
        out.append(flat[:, off:off + n].reshape(flat.shape[0], *shape))
        off += n
    return out


def _flat(ws: list) -> Tensor:
    return torch.cat([w.reshape(w.shape[0], -1) for w in ws], dim=1)


class _State(NamedTuple):
    A: list  # current weights (before Phi; with a token scale, the unscaled sum)
    S: Optional[list]  # momentum
    Wa: list  # anchor (before Phi); A itself when C == 1
    kb: Optional[Tensor]  # Omega window: the last c-1 keys [N, c-1, K], values, weights [N, c-1]
    vb: Optional[Tensor]
    gb: Optional[Tensor]


def _unpack(spec: MemorySpec, packed: Tensor) -> _State:
    parts = state_parts(spec)
    off, got = 0, {}
    for name, n in parts.items():
        got[name] = packed[:, off:off + n]
        off += n
    A = _split(spec, got["A"])
    S = _split(spec, got["S"]) if parts["S"] else None
    Wa = _split(spec, got["Wa"]) if parts["Wa"] else A
    kb = vb = gb = None
    if spec.window > 1:
        K, V, c1 = spec.layers[0].d_in, spec.layers[-1].d_out, spec.window - 1
        w = got["window"].reshape(-1, c1, K + V + 1)
        kb, vb, gb = w[..., :K], w[..., K:K + V], w[..., -1]
    return _State(A, S, Wa, kb, vb, gb)


def _pack(spec: MemorySpec, st: _State) -> Tensor:
    parts = [_flat(st.A)]
    if st.S is not None:
        parts.append(_flat(st.S))
    if spec.chunk > 1:
        parts.append(_flat(st.Wa))
    if spec.window > 1:
        parts.append(torch.cat([st.kb, st.vb, st.gb[..., None]], -1).flatten(1))
    return torch.cat(parts, dim=1)


def _fresh(spec: MemorySpec, w0: Optional[Tensor], N: int, K: int, V: int, device, dtype) -> _State:
    """The state before the first token: A = the learned initial weights (or zeros), S = 0, A_a = A."""
    flat = torch.zeros(N, weight_numel(spec), device=device, dtype=dtype) if w0 is None else w0.to(dtype)
    A = _split(spec, flat)
    S = [torch.zeros_like(a) for a in A] if spec.update != "gd" else None
    kb = vb = gb = None
    if spec.window > 1:
        c1 = spec.window - 1
        kb, vb, gb = flat.new_zeros(N, c1, K), flat.new_zeros(N, c1, V), flat.new_zeros(N, c1)
    return _State(A, S, A, kb, vb, gb)


# --------------------------------------------------------------------------------------------- the memory
def _act(name: str, z: Tensor, grad: bool):
    """act(z) and (if grad) act'(z)."""
    if name == "gelu":  # exact: z Phi(z)
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        if not grad:
            return z * cdf, None
        return z * cdf, cdf + z * torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
    if name == "gelu_tanh":  # 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))
        c = math.sqrt(2.0 / math.pi)
        t = torch.tanh(c * (z + 0.044715 * z * z * z))
        a = 0.5 * z * (1.0 + t)
        if not grad:
            return a, None
        return a, 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * z * z)
    if name == "silu":
        s = torch.sigmoid(z)
        return z * s, (s * (1.0 + z * (1.0 - s)) if grad else None)
    raise ValueError(f"unknown activation {name!r}")


def _layer_norm(z: Tensor, w: Tensor, b: Tensor):
    """LayerNorm over the last dim with an affine (w, b) [N, V] broadcast over the tokens [N, n, V]."""
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    std = torch.sqrt((zc * zc).mean(-1, keepdim=True) + LN_EPS)
    xhat = zc / std
    return xhat * w[:, None] + b[:, None], xhat, std


def _layer_norm_bwd(g: Tensor, xhat: Tensor, std: Tensor, w: Tensor) -> Tensor:
    """d/dz of <g, LN(z)>: (w g - mean(w g) - xhat mean(w g xhat)) / std."""
    gx = g * w[:, None]
    return (gx - gx.mean(-1, keepdim=True) - xhat * (gx * xhat).mean(-1, keepdim=True)) / std


def _apply(kind: str, a: Tensor, w: Tensor, per_token: bool) -> Tensor:
    """a [N, n, d_in] through one weight tensor: shared [N, *shape] or per token [N, n, *shape]."""
    if kind == "dense":
        return (a.unsqueeze(-2) @ w).squeeze(-2) if per_token else a @ w
    if kind == "diag":
        return a * (w if per_token else w[:, None])
    return w if per_token else w[:, None]  # bias: added by the caller


def _layers(spec: MemorySpec, ws: list) -> list:
    """The weight tensors grouped per layer: [(kind, W, b or None)]."""
    out, i = [], 0
    for lay in spec.layers:
        W = ws[i]
        i += 1
        b = None
        if lay.bias:
            b = ws[i]
            i += 1
        out.append(("diag" if lay.diag else "dense", W, b))
    return out


def memory_forward(spec: MemorySpec, ws: list, x: Tensor, statics: dict, per_token: bool = False,
                   grad: bool = False):
    """M_W(x) for x [N, n, K] with weights ws (shared [N, *shape] or, ``per_token``, [N, n, *shape]).
    Returns y [N, n, V] and (grad) the cache: layer inputs, act' per hidden layer, LN's xhat and std."""
    a, inputs, dacts = x, [], []
    L = len(spec.layers)
    for li, (kind, W, b) in enumerate(_layers(spec, ws)):
        inputs.append(a)
        z = _apply(kind, a, W, per_token)
        if b is not None:
            z = z + _apply("bias", a, b, per_token)
        if li < L - 1:
            a, da = _act(spec.activation, z, grad)
            dacts.append(da)
    xhat = std = None
    y = z
    if spec.norm:
        y, xhat, std = _layer_norm(z, statics["ln_w"], statics["ln_b"])
    if spec.residual:
        y = y + x
    return y, (inputs, dacts, xhat, std)


def _psi(spec: MemorySpec, y: Tensor, v: Tensor, delta: Optional[Tensor]) -> Tensor:
    """dl/dy of the attentional bias at y [N, n, V] (Miras Sec. 3.1-3.2; the smooth forms named in the spec)."""
    if spec.loss == "dot":  # l = -<y, v>
        return -v.expand_as(y)
    r = y - v
    if spec.loss == "l2":  # l = 1/2 ||r||^2
        return r
    if spec.loss == "lp":  # l = sum (r^2 + eps)^(p/2)
        return spec.p * r * (r * r + spec.abs_eps) ** ((spec.p - 2.0) / 2.0)
    d = delta[..., None]
    if spec.huber_form == "coordinate":  # sum_j H_d(r_j)
        return torch.minimum(torch.maximum(r, -d), d)
    n = torch.sqrt((r * r).sum(-1, keepdim=True))
    if spec.huber_form == "norm":  # H_d(||r||)
        return r * torch.clamp(d / n.clamp_min(1e-30), max=1.0)
    # yaad: l2 inside the ball ||r|| <= d, d * l1 (smooth |r|) outside
    return torch.where(n <= d, r, d * r * torch.rsqrt(r * r + spec.abs_eps))


def grad_factors(spec: MemorySpec, ws: list, k: Tensor, v: Tensor, statics: dict, delta: Optional[Tensor]):
    """The per-token gradient of l(M_W(k_j), v_j) at shared weights ws as rank-one factors: per layer the
    inputs X^l [N, n, d_in] and errors Delta^l [N, n, d_out], so that grad W_l = X^T Delta (dense), X * Delta
    (diag) and grad b_l = Delta, token by token."""
    y, (inputs, dacts, xhat, std) = memory_forward(spec, ws, k, statics, grad=True)
    d = _psi(spec, y, v, delta)
    if spec.norm:
        d = _layer_norm_bwd(d, xhat, std, statics["ln_w"])
    layers = _layers(spec, ws)
    deltas = [None] * len(layers)
    deltas[-1] = d
    for li in range(len(layers) - 2, -1, -1):
        kind, W, _ = layers[li + 1]
        back = d * W[:, None] if kind == "diag" else d @ W.transpose(-1, -2)
        d = back * dacts[li]
        deltas[li] = d
    return inputs, deltas


def _clip(spec: MemorySpec, X: list, D: list) -> list:
    """Scale each token's errors so its gradient norm n becomes m tanh(n / m) (``grad_clip`` = m)."""
    if spec.grad_clip is None:
        return D
    sq = 0.0
    for lay, x, d in zip(spec.layers, X, D):
        dd = (d * d).sum(-1)
        sq = sq + (((x * d) ** 2).sum(-1) if lay.diag else (x * x).sum(-1) * dd)
        if lay.bias:
            sq = sq + dd
    n = torch.sqrt(sq)
    m = spec.grad_clip
    s = torch.where(n > 0, m * torch.tanh(n / m) / n.clamp_min(1e-30), torch.ones_like(n))
    return [d * s[..., None] for d in D]


def _combine(spec: MemorySpec, X: list, D: list, coef: Tensor, per_token: bool) -> list:
    """sum_j coef[.., j] u_j per weight tensor: coef [N, E] -> [N, *shape]; [N, n, E] (per_token) -> [N, n, *shape]."""
    out = []
    for li, kind, _ in tensor_shapes(spec):
        x, d = X[li], D[li]
        if kind == "dense":
            if per_token:
                out.append(torch.einsum("nij,nja,njb->niab", coef, x, d))
            else:
                out.append(x.transpose(-1, -2) @ (coef[..., None] * d))
        elif kind == "diag":
            xd = x * d
            out.append(coef @ xd if per_token else (coef[..., None] * xd).sum(1))
        else:
            out.append(coef @ d if per_token else (coef[..., None] * d).sum(1))
    return out


def _minus_combined(spec: MemorySpec, base: list, X: list, D: list, coef: Tensor) -> list:
    """base_l - _combine(spec, X, D, coef)_l for shared weights (coef [N, E]), in place: ``base`` holds tensors
    the caller has just made. A dense layer's sum X^T (coef D) is subtracted inside one baddbmm."""
    out = []
    for (li, kind, _), b in zip(tensor_shapes(spec), base):
        x, d = X[li], D[li]
        if kind == "dense":
            out.append(b.baddbmm_(x.transpose(-1, -2), coef[..., None] * d, alpha=-1.0))
        elif kind == "diag":
            out.append(b.sub_((coef[..., None] * (x * d)).sum(1)))
        else:
            out.append(b.sub_((coef[..., None] * d).sum(1)))
    return out


def newton_schulz(X: Tensor, steps: int) -> Tensor:
    """Muon's quintic Newton-Schulz orthogonalisation of the last two dims (fp32/fp64, no bf16 cast, no scale)."""
    a, b, c = NS_COEFFS
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.transpose(-1, -2)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.transpose(-1, -2)
        X = a * X + (b * A + c * A @ A) @ X
    return X.transpose(-1, -2) if tall else X


def _ns_all(spec: MemorySpec, S: list) -> list:
    """NS on every weight matrix; bias vectors pass through (titans-pytorch and Muon skip vectors)."""
    return [newton_schulz(s, spec.ns_steps) if kind == "dense" else s
            for (_, kind, _), s in zip(tensor_shapes(spec), S)]


def _phi(spec: MemorySpec, A: list, statics: dict) -> list:
    """The retention map W = Phi(A) per weight tensor (its own dims are the last 1 or 2 of each tensor)."""
    if spec.phi == "identity":
        return A
    out = []
    for (_, kind, shape), a in zip(tensor_shapes(spec), A):
        dims = tuple(range(-len(shape), 0))
        if spec.phi == "lq":  # Moneta: A / ||A||_q^(q-2)
            n = (a.abs() ** spec.q).sum(dims, keepdim=True) ** (1.0 / spec.q)
            out.append(a / n.clamp_min(1e-12) ** (spec.q - 2.0))
        elif spec.phi == "kl":  # Memora: c softmax over the input axis of each weight
            out.append(spec.kl_scale * torch.softmax(a, dim=-2 if kind == "dense" else -1))
        else:  # elastic net, FTRL form: soft threshold by lam >= 0 per row
            lam = statics["shrink"].view(-1, *([1] * (a.dim() - 1)))
            out.append(torch.sign(a) * F.relu(a.abs() - lam))
    return out


# --------------------------------------------------------------------------------------------- coefficients
def _coeffs(spec: MemorySpec, g: Tensor, th: Tensor, le: Optional[Tensor]):
    """In-chunk coefficients of L tokens from the log-decay g, step th and log-momentum le, each [N, L].

    Returns rows 0..L (row 0: before the first token) of beta [N, L+1], f [N, L+1], G [N, L+1, L] (the
    coefficient of u_j in W_i) and, for the momentum, N [N, L+1, L] (of u_j in S_i) and m [N, L+1]; for
    newton_schulz R [N, L+1, L] (decay products from k to i) instead of G, and N without the step size."""
    Nr, L = th.shape
    z = th.new_zeros(Nr, 1)
    lb = torch.cat([z, torch.cumsum(g, -1)], -1)  # log beta_i, i = 0..L
    mask = torch.ones(L + 1, L, dtype=torch.bool, device=th.device).tril(-1)  # j < i  (token j+1 <= row i)
    diff = lb[:, :, None] - lb[:, None, 1:]  # log beta_i - log beta_j  [N, L+1, L]
    R = torch.exp(torch.where(mask, diff, -math.inf))
    beta = torch.exp(lb)
    if spec.update == "gd":
        return beta, None, R * th[:, None, :], None, None, None
    lm = torch.cat([z, torch.cumsum(le, -1)], -1)
    m = torch.exp(lm)
    Nm = torch.exp(torch.where(mask, lm[:, :, None] - lm[:, None, 1:], -math.inf))  # m_k / m_j
    if spec.update == "newton_schulz":
        return beta, None, None, Nm, m, R
    Nm = Nm * th[:, None, :]
    # W_i = beta_i W_0 + sum_{k<=i} (beta_i/beta_k) S_k, S_k = m_k S_0 - sum_j Nm[k, j] u_j
    G = R @ Nm[:, 1:, :]  # R's column k-1 is token k
    f = (R @ m[:, 1:, None]).squeeze(-1)
    return beta, f, G, Nm, m, None


def _token_scale(offsets: Tensor, n: Tensor) -> Tensor:
    """TTT's token scale c_n = max(0, 1/n + delta_n) after n tokens of a mini-batch (n >= 1; n = 0, the batch
    start, reads the anchor itself: 1). offsets [N, C], n [N, ...] long -> [N, ...]."""
    nf = n.clamp_min(1)
    off = offsets.gather(1, (nf - 1).reshape(n.shape[0], -1)).view(n.shape)
    c = torch.clamp(1.0 / nf.to(offsets.dtype) + off, min=0.0)
    return torch.where(n == 0, torch.ones_like(c), c)


# --------------------------------------------------------------------------------------------- one chunk
def _chunk(spec: MemorySpec, st: _State, q, k, v, g, th, le, gam, dl, statics, pos0: int):
    """L <= C - (pos0 mod C) tokens that stay inside one mini-batch -> (o [N, L, V], new state)."""
    N, L, _ = q.shape
    C, c1 = spec.chunk, spec.window - 1
    Wa = _phi(spec, st.Wa, statics)
    # gradients at the anchor of every token this piece uses (the Omega window's earlier tokens included)
    if c1:
        kE, vE = torch.cat([st.kb, k], 1), torch.cat([st.vb, v], 1)
        gE, dE = torch.cat([st.gb, gam], 1), None  # the Omega rule's inner loss is l2 (no threshold)
    else:
        kE, vE, gE, dE = k, v, None, dl
    X, D = grad_factors(spec, Wa, kE, vE, statics, dE)
    D = _clip(spec, X, D)
    beta, f, G, Nm, m, R = _coeffs(spec, g, th, le)
    band = None
    if c1:  # u_t = sum_{i=t-c+1..t} gamma_i u_i: token t (E index t + c1) reaches E indices t .. t + c1
        t = torch.arange(L, device=q.device)[:, None]
        j = torch.arange(L + c1, device=q.device)[None, :]
        band = ((j >= t) & (j <= t + c1)).to(q.dtype) * gE[:, None, :]  # [N, L, E]
        G = None if G is None else G @ band
        Nm = None if Nm is None else Nm @ band
    c = None
    if spec.token_scale:  # rows 0..L: after (pos0 mod C) + r tokens of the mini-batch
        n = (pos0 % C) + torch.arange(L + 1, device=q.device).expand(N, L + 1)
        c = _token_scale(statics["token_offset"], n)
    rows = slice(0, L) if spec.read_before else slice(1, L + 1)
    Q = q * spec.scale
    materialise = spec.phi != "identity" or spec.update == "newton_schulz"
    if not materialise:
        o = _dual_read(spec, st, Q, X, D, beta[:, rows], None if f is None else f[:, rows], G[:, rows],
                       None if c is None else c[:, rows], Wa, statics)
        # A_L = beta_L A_0 (+ f_L S_0) - sum_j G[L, j] u_j and S_L = m_L S_0 - sum_j Nm[L, j] u_j, each weight
        # tensor written once: the scaled state, then the gradient sum subtracted into it (_minus_combined)
        A = [beta[:, -1].view(-1, *[1] * (a.dim() - 1)) * a for a in st.A]
        if st.S is not None:
            A = [a.addcmul_(f[:, -1].view(-1, *[1] * (s.dim() - 1)), s) for a, s in zip(A, st.S)]
        A = _minus_combined(spec, A, X, D, G[:, -1])
        S = None
        if st.S is not None:
            S = _minus_combined(spec, [m[:, -1].view(-1, *[1] * (s.dim() - 1)) * s for s in st.S], X, D,
                                Nm[:, -1])
    else:
        A_all, S = _materialise(spec, st, X, D, beta, f, G, Nm, m, R, th, band)  # rows 1..L: [N, L, *shape]
        W_all = _phi(spec, [torch.cat([a[:, None], b], 1) for a, b in zip(st.A, A_all)], statics)
        o = memory_forward(spec, [w[:, rows] for w in W_all], Q, statics, per_token=True)[0]
        A = [a[:, -1] for a in A_all]
    Wa_new = st.Wa
    if (pos0 % C) + L == C:  # the mini-batch is complete: its last weights anchor the next one
        if c is not None:
            A = [wa + c[:, -1].view(-1, *[1] * (a.dim() - 1)) * (a - wa) for a, wa in zip(A, st.Wa)]
        Wa_new = A
    kb, vb, gb = st.kb, st.vb, st.gb
    if c1:
        kb, vb, gb = kE[:, -c1:], vE[:, -c1:], gE[:, -c1:]
    return o, _State(A, S, Wa_new if C > 1 else A, kb, vb, gb)


def _dual_read(spec: MemorySpec, st: _State, Q, X, D, beta, f, G, c, Wa, statics):
    """The reads of one chunk in dual form (identity Phi; gd or momentum): rows of beta, f [N, L], G [N, L, E]."""
    a = Q
    Lr = len(spec.layers)
    bb = beta[..., None]
    ff = None if f is None else f[..., None]
    Wcur = _layers(spec, st.A)
    Scur = None if st.S is None else _layers(spec, st.S)
    Wanc = _layers(spec, Wa) if c is not None else None
    for li, (kind, W, b) in enumerate(Wcur):
        lay = spec.layers[li]
        if kind == "diag":
            z = bb * (a * W[:, None]) - a * (G @ (X[li] * D[li]))
            if ff is not None:
                z = z + ff * (a * Scur[li][1][:, None])
        else:
            coef = G * (a @ X[li].transpose(-1, -2))
            if lay.bias:
                coef = coef + G
            z = bb * (a @ W) - coef @ D[li]
            if ff is not None:
                z = z + ff * (a @ Scur[li][1])
        if b is not None:
            z = z + bb * b[:, None]
            if ff is not None:
                z = z + ff * Scur[li][2][:, None]
        if c is not None:  # TTT token scale (no decay, no momentum): A_a + c (A_i - A_a)
            _, Wa_l, ba_l = Wanc[li]
            za = _apply(kind, a, Wa_l, False) + (0.0 if ba_l is None else ba_l[:, None])
            z = za + c[..., None] * (z - za)
        if li < Lr - 1:
            a = _act(spec.activation, z, False)[0]
    y = z
    if spec.norm:
        y = _layer_norm(z, statics["ln_w"], statics["ln_b"])[0]
    if spec.residual:
        y = y + Q
    return y


def _materialise(spec: MemorySpec, st: _State, X, D, beta, f, G, Nm, m, R, th, band):
    """Per-token A_i (and S_i), rows 1..L: [N, L, *shape] each (a non-identity Phi, or Newton-Schulz)."""
    def ex(coef, t):  # coef [N, L] times a shared tensor [N, *shape] -> [N, L, *shape]
        return coef.view(*coef.shape, *[1] * (t.dim() - 1)) * t[:, None]

    if spec.update == "newton_schulz":
        S_all = [ex(m[:, 1:], s) + u for s, u in zip(st.S, _combine(spec, X, D, Nm[:, 1:], True))]
        O = _ns_all(spec, S_all)
        Rt = R[:, 1:] * th[:, None, :]  # (beta_i / beta_k) theta_k
        A_all = [ex(beta[:, 1:], a) - _mix(Rt, o) for a, o in zip(st.A, O)]
        return A_all, [s[:, -1] for s in S_all]
    A_all = [ex(beta[:, 1:], a) - u for a, u in zip(st.A, _combine(spec, X, D, G[:, 1:], True))]
    S = None
    if st.S is not None:
        A_all = [a + ex(f[:, 1:], s) for a, s in zip(A_all, st.S)]
        S = [m[:, -1].view(-1, *[1] * (s.dim() - 1)) * s - u
             for s, u in zip(st.S, _combine(spec, X, D, Nm[:, -1], False))]
    return A_all, S


def _mix(coef: Tensor, t: Tensor) -> Tensor:
    """coef [N, L, L] over per-token tensors t [N, L, *shape] -> [N, L, *shape]."""
    return (coef @ t.flatten(2)).view(t.shape)


# --------------------------------------------------------------------------------------------- public ops
def _rows(x: Tensor) -> Tensor:
    """[B, T, H, *D] -> [B*H, T, *D]."""
    B, T, H = x.shape[:3]
    return x.transpose(1, 2).reshape(B * H, T, *x.shape[3:])


def _static_rows(statics: dict, dtype) -> dict:
    """[B, H, ...] -> [B*H, ...] in the compute dtype."""
    return {n: t.to(dtype).reshape(-1, *t.shape[2:]) for n, t in statics.items() if t is not None}


def _begin(spec, q, k, v, statics, initial_state):
    B, T, H, K = q.shape
    V = v.shape[-1]
    dt = torch.promote_types(q.dtype, torch.float32)
    st_rows = _static_rows(statics, dt)
    if initial_state is None:
        st = _fresh(spec, st_rows.get("w0"), B * H, K, V, q.device, dt)
        pos = 0
    else:
        st = _unpack(spec, initial_state["memory"].to(dt).reshape(B * H, -1))
        pos = initial_state["pos"]
    return st, pos, st_rows, dt


def _gate_rows(t: Optional[Tensor], dt, like: Tensor, fill: float) -> Tensor:
    return like.new_full(like.shape[:2], fill, dtype=dt) if t is None else _rows(t).to(dt)


def _finish(spec, st, pos, B, H, output_final_state):
    if not output_final_state:
        return None
    return {"memory": _pack(spec, st).view(B, H, -1), "pos": pos}


def _prologue(spec, q, k, v, beta, g, log_eta, gamma, delta, statics, initial_state, chunk_size):
    """What both whole-sequence paths start from: the state, its position, the statics' rows, the compute dtype,
    q, k, v and every gate as rows [N, T, ...] (absent gates filled with their neutral value)."""
    if chunk_size != spec.chunk:
        raise ValueError(f"chunk_size {chunk_size} differs from the memory's mini-batch size {spec.chunk}")
    st, pos, S_rows, dt = _begin(spec, q, k, v, statics or {}, initial_state)
    qr, kr, vr = (_rows(t).to(dt) for t in (q, k, v))
    dl = None if delta is None else _rows(delta).to(dt)
    return (st, pos, S_rows, dt, qr, kr, vr, _gate_rows(g, dt, qr, 0.0), _gate_rows(beta, dt, qr, 1.0),
            _gate_rows(log_eta, dt, qr, 0.0), _gate_rows(gamma, dt, qr, 1.0), dl)


def chunk_minibatch(q: Tensor, k: Tensor, v: Tensor, *, spec: MemorySpec, beta: Optional[Tensor] = None,
                    g: Optional[Tensor] = None, log_eta: Optional[Tensor] = None, gamma: Optional[Tensor] = None,
                    delta: Optional[Tensor] = None, statics: Optional[dict] = None, initial_state=None,
                    output_final_state: bool = False, chunk_size: int = 1):
    """Chunked mini-batch memory (module docstring): q, k [B, T, H, K], v [B, T, H, V], gates [B, T, H];
    ``initial_state`` {"memory": [B, H, P], "pos": int} or None (the learned init ``statics["w0"]``).
    Returns o [B, T, H, V] (v.dtype) and the final state (or None). ``chunk_size`` must be the spec's C."""
    B, T, H = q.shape[:3]
    st, pos, S_rows, dt, qr, kr, vr, gr, th, le, gam, dl = _prologue(spec, q, k, v, beta, g, log_eta, gamma, delta,
                                                                     statics, initial_state, chunk_size)
    le = None if spec.update == "gd" else le
    gam = None if spec.window == 1 else gam
    outs, t = [], 0
    C = spec.chunk
    while t < T:
        L = min(C - pos % C, T - t)
        sl = slice(t, t + L)
        o, st = _chunk(spec, st, qr[:, sl], kr[:, sl], vr[:, sl], gr[:, sl], th[:, sl],
                       None if le is None else le[:, sl], None if gam is None else gam[:, sl],
                       None if dl is None else dl[:, sl], S_rows, pos)
        outs.append(o)
        t += L
        pos += L
    V = v.shape[-1]
    o = torch.cat(outs, 1) if outs else qr.new_zeros(B * H, 0, V)
    o = o.view(B, H, T, V).transpose(1, 2).to(v.dtype)
    return o, _finish(spec, st, pos, B, H, output_final_state)


def _token(spec: MemorySpec, st: _State, q, k, v, g, th, le, gam, dl, statics, pos: Tensor):
    """One token for every row, rows at their own positions ``pos`` [N] (tokens seen before this one):
    q, k [N, K], v [N, V], gates [N]. The recurrence of the module docstring, term by term."""
    C, c1 = spec.chunk, spec.window - 1
    Wa = _phi(spec, st.Wa, statics)
    i = pos % C  # 0-based in-batch index of this token

    def read(A_read):
        return memory_forward(spec, _phi(spec, A_read, statics), (q * spec.scale)[:, None], statics)[0][:, 0]

    def scaled(A, idx):  # TTT token scale: the weights a read sees at in-batch index idx (0: the anchor)
        if not spec.token_scale:
            return A
        c = _token_scale(statics["token_offset"], idx)
        return [wa + c.view(-1, *[1] * (a.dim() - 1)) * (a - wa) for a, wa in zip(A, st.Wa)]

    o = read(scaled(st.A, i)) if spec.read_before else None
    if c1:
        kE, vE, gE = torch.cat([st.kb, k[:, None]], 1), torch.cat([st.vb, v[:, None]], 1), \
            torch.cat([st.gb, gam[:, None]], 1)
        dE = None  # the Omega rule's inner loss is l2 (no threshold)
    else:
        kE, vE, gE, dE = k[:, None], v[:, None], None, (None if dl is None else dl[:, None])
    X, D = grad_factors(spec, Wa, kE, vE, statics, dE)
    D = _clip(spec, X, D)
    coef = torch.ones_like(kE[..., 0]) if gE is None else gE
    u = _combine(spec, X, D, coef, False)  # u_t (the Omega window's weighted sum)

    def sh(x, t):
        return x.view(-1, *[1] * (t.dim() - 1))

    a = torch.exp(g)
    if spec.update == "gd":
        S = None
        A = [sh(a, w) * w - sh(th, w) * uu for w, uu in zip(st.A, u)]
    elif spec.update == "momentum":
        S = [sh(torch.exp(le), s) * s - sh(th, s) * uu for s, uu in zip(st.S, u)]
        A = [sh(a, w) * w + s for w, s in zip(st.A, S)]
    else:
        S = [sh(torch.exp(le), s) * s + uu for s, uu in zip(st.S, u)]
        A = [sh(a, w) * w - sh(th, w) * o_ for w, o_ in zip(st.A, _ns_all(spec, S))]
    if not spec.read_before:
        o = read(scaled(A, i + 1))
    done = (i + 1) % C == 0  # [N] the mini-batch completes with this token
    if spec.token_scale:
        A = [torch.where(sh(done, w), w, a_) for w, a_ in zip(scaled(A, i + 1), A)]
    Wa_new = [torch.where(sh(done, w), a_, w) for w, a_ in zip(st.Wa, A)] if C > 1 else A
    kb, vb, gb = st.kb, st.vb, st.gb
    if c1:
        kb, vb, gb = kE[:, 1:], vE[:, 1:], gE[:, 1:]
    return o, _State(A, S, Wa_new, kb, vb, gb)


def naive_minibatch(q: Tensor, k: Tensor, v: Tensor, *, spec: MemorySpec, beta: Optional[Tensor] = None,
                    g: Optional[Tensor] = None, log_eta: Optional[Tensor] = None, gamma: Optional[Tensor] = None,
                    delta: Optional[Tensor] = None, statics: Optional[dict] = None, initial_state=None,
                    output_final_state: bool = False, chunk_size: int = 1):
    """Oracle: the token loop of the module docstring (same contract as ``chunk_minibatch``)."""
    B, T, H = q.shape[:3]
    st, pos, S_rows, dt, qr, kr, vr, gr, th, le, gam, dl = _prologue(spec, q, k, v, beta, g, log_eta, gamma, delta,
                                                                     statics, initial_state, chunk_size)
    outs = []
    for t in range(T):
        p = torch.full((B * H,), pos + t, dtype=torch.long, device=q.device)
        o, st = _token(spec, st, qr[:, t], kr[:, t], vr[:, t], gr[:, t], th[:, t], le[:, t], gam[:, t],
                       None if dl is None else dl[:, t], S_rows, p)
        outs.append(o)
    V = v.shape[-1]
    o = torch.stack(outs, 1) if outs else qr.new_zeros(B * H, 0, V)
    o = o.view(B, H, T, V).transpose(1, 2).to(v.dtype)
    return o, _finish(spec, st, pos + T, B, H, output_final_state)


def minibatch_step(q: Tensor, k: Tensor, v: Tensor, *, spec: MemorySpec, beta: Optional[Tensor] = None,
                   g: Optional[Tensor] = None, log_eta: Optional[Tensor] = None, gamma: Optional[Tensor] = None,
                   delta: Optional[Tensor] = None, statics: Optional[dict] = None, state=None):
    """One token: q, k [B, H, K], v [B, H, V], gates [B, H]; ``state`` {"memory": [B, H, P], "pos": int or
    [B] tensor} or None (fresh). Returns o [B, H, V] and the new state (pos + 1)."""
    B, H, _ = q.shape
    st, pos, S_rows, dt = _begin(spec, q[:, None], k[:, None], v[:, None], statics or {}, state)

    def rows(t, fill):
        return q.new_full((B * H,), fill, dtype=dt) if t is None else t.reshape(B * H).to(dt)

    p = torch.as_tensor(pos, device=q.device)
    p_rows = p.reshape(-1, 1).expand(B, H).reshape(B * H) if p.dim() else p.expand(B * H)
    o, st = _token(spec, st, q.reshape(B * H, -1).to(dt), k.reshape(B * H, -1).to(dt), v.reshape(B * H, -1).to(dt),
                   rows(g, 0.0), rows(beta, 1.0), rows(log_eta, 0.0), rows(gamma, 1.0),
                   None if delta is None else delta.reshape(B * H).to(dt), S_rows, p_rows)
    return o.view(B, H, -1).to(v.dtype), {"memory": _pack(spec, st).view(B, H, -1), "pos": pos + 1}


def minibatch_read(q: Tensor, state: dict, *, spec: MemorySpec, statics: Optional[dict] = None) -> Tensor:
    """Read a state without writing: q [B, L, H, K] -> [B, L, H, V] through the memory's current weights."""
    B, L, H, _ = q.shape
    dt = torch.promote_types(q.dtype, torch.float32)
    st = _unpack(spec, state["memory"].to(dt).reshape(B * H, -1))
    A = st.A
    if spec.token_scale and spec.chunk > 1:
        n = torch.as_tensor(state["pos"], device=q.device).reshape(-1, 1).expand(B, H).reshape(B * H) % spec.chunk
        c = _token_scale(_static_rows(statics, dt)["token_offset"], n)
        A = [wa + c.view(-1, *[1] * (a.dim() - 1)) * (a - wa) for a, wa in zip(A, st.Wa)]
    S_rows = _static_rows(statics or {}, dt)
    y = memory_forward(spec, _phi(spec, A, S_rows), _rows(q).to(dt) * spec.scale, S_rows)[0]
    return y.view(B, H, L, -1).transpose(1, 2)
