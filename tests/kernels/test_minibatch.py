"""The mini-batch memory engine (kernels/minibatch.py) against an oracle written here straight from the formulas:
the memory M_W(x) = x + LN(act(x W1 + b1) W2 + b2) with torch's own LayerNorm and activations, each attentional
bias as its loss (not its gradient), the inner gradient by autograd (create_graph: the outer gradients flow through
it), each retention map Phi, update and the mini-batch anchor t' = t - (t mod C) as a plain loop over tokens.

Checked in fp64 (the chunked dual form and the loop are the same function in exact arithmetic; the tolerance is
10^5 fp64 ulps): outputs, final states and the gradients of every input (q, k, v, every gate and learned tensor),
at mini-batch sizes 1 (the exact online recurrence) and 3 (anchors inside the sequence), plus continuation
(forward then steps) and the hand-written gradient factors against autograd."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archspace.kernels.delta_rule import naive_recurrent_delta_rule
from archspace.kernels.minibatch import (_split, Layer, MemorySpec, chunk_minibatch, grad_factors, minibatch_step,
                                         naive_minibatch, tensor_shapes, weight_numel)

DT = torch.float64
TOL = 1e5 * torch.finfo(DT).eps  # ~2e-11
B, T, H, K = 2, 9, 2, 4
HID = 6

MLP = (Layer(K, HID, bias=True), Layer(HID, K, bias=True))
DEEP = dict(layers=MLP, activation="gelu", norm=True, residual=True)
CASES = {
    "l2-gd": dict(DEEP),
    "dot-gd-silu": dict(DEEP, loss="dot", activation="silu"),
    "lp3-momentum": dict(DEEP, loss="lp", p=3.0, update="momentum"),
    "l1-lq": dict(DEEP, loss="lp", p=1.0, abs_eps=1e-3, phi="lq", q=4.0),
    "huber_yaad-kl": dict(DEEP, loss="huber", huber_form="yaad", phi="kl", kl_scale=2.0),
    "huber_coord-shrink-momentum": dict(DEEP, loss="huber", huber_form="coordinate", phi="shrink",
                                        update="momentum"),
    "huber_norm-newton_schulz": dict(DEEP, loss="huber", huber_form="norm", update="newton_schulz", ns_steps=3,
                                     activation="gelu_tanh"),
    "omega3-newton_schulz": dict(DEEP, window=3, update="newton_schulz"),
    "omega2-momentum-read_before": dict(DEEP, window=2, update="momentum", read_before=True),
    "token_scale": dict(layers=(Layer(K, K, bias=True),), norm=True, residual=True, token_scale=True),
    "clip-momentum": dict(DEEP, update="momentum", grad_clip=0.05),
    "vector-lp": dict(layers=(Layer(K, K, diag=True),), loss="lp", p=3.0, update="momentum"),
    "matrix-huber-kl": dict(layers=(Layer(K, K),), scale=K ** -0.5, loss="huber", huber_form="coordinate", phi="kl"),
}


def _inputs(spec: MemorySpec, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=DT)

    x = {"q": r(B, T, H, K), "k": F.normalize(r(B, T, H, K), dim=-1), "v": r(B, T, H, K)}
    gates = {"beta": 0.6 * torch.sigmoid(r(B, T, H)), "g": F.logsigmoid(r(B, T, H) + 3.0),
             "log_eta": F.logsigmoid(r(B, T, H) + 1.0), "gamma": torch.sigmoid(r(B, T, H)),
             "delta": 0.05 + 0.5 * torch.sigmoid(r(B, T, H))}
    if spec.loss != "huber":
        del gates["delta"]
    if spec.update == "gd":
        del gates["log_eta"]
    if spec.window == 1:
        del gates["gamma"]
    if spec.token_scale:
        del gates["g"]  # TTT's token scale: no retention
    statics = {"w0": 0.5 * r(B, H, weight_numel(spec)), "ln_w": 1.0 + 0.2 * r(B, H, K), "ln_b": 0.2 * r(B, H, K),
               "token_offset": 0.2 * r(B, H, spec.chunk), "shrink": 0.02 + 0.02 * torch.rand(B, H, generator=g,
                                                                                                 dtype=DT)}
    return x, gates, statics


# ----------------------------------------------------------------------------------------- the oracle
_weights = _split  # the packed layout [N, P] -> weight tensors: bookkeeping, not the maths under test


def _act(spec, z):
    return {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu}[spec.activation](z)


def _memory(spec, W, x, ln_w, ln_b):
    """M_W(x) per row: x [N, K], W the weight tensors [N, ...]."""
    a, i = x, 0
    for li, lay in enumerate(spec.layers):
        z = a * W[i] if lay.diag else torch.einsum("na,nab->nb", a, W[i])
        i += 1
        if lay.bias:
            z = z + W[i]
            i += 1
        a = _act(spec, z) if li < len(spec.layers) - 1 else z
    y = a
    if spec.norm:  # torch's LayerNorm (eps 1e-6, as TTT's), then each row's affine
        y = F.layer_norm(y, (y.shape[-1],), eps=1e-6) * ln_w + ln_b
    return y + x if spec.residual else y


def _loss(spec, y, v, d, weight=None):
    """The attentional bias of rows y, v [N, V] (thresholds d [N]), weighted per row and summed over rows."""
    r = y - v
    if spec.loss == "dot":
        per = -(y * v)
    elif spec.loss == "l2":
        per = 0.5 * r * r
    elif spec.loss == "lp":
        per = (r * r + spec.abs_eps) ** (spec.p / 2)
    elif spec.huber_form == "coordinate":
        dd = d[:, None]
        per = torch.where(r.abs() <= dd, 0.5 * r * r, dd * (r.abs() - 0.5 * dd))
    else:
        dd = d[:, None]
        n = r.norm(dim=-1, keepdim=True)
        if spec.huber_form == "norm":
            per = torch.where(n <= dd, 0.5 * n * n, dd * (n - 0.5 * dd))
        else:  # yaad: l2 in the ball, d * (smooth) l1 outside
            per = torch.where(n <= dd, 0.5 * n * n, dd * torch.sqrt(r * r + spec.abs_eps).sum(-1, keepdim=True))
    per = per.sum(-1)
    return (per if weight is None else weight * per).sum()


def _phi(spec, A, shrink):
    out = []
    for (_, kind, shape), a in zip(tensor_shapes(spec), A):
        dims = tuple(range(1, a.dim()))
        if spec.phi == "identity":
            out.append(a)
        elif spec.phi == "lq":
            out.append(a / torch.linalg.vector_norm(a, ord=spec.q, dim=dims, keepdim=True) ** (spec.q - 2))
        elif spec.phi == "kl":
            out.append(spec.kl_scale * torch.softmax(a, dim=1 if kind == "dense" else -1))
        else:
            lam = shrink.view(-1, *[1] * (a.dim() - 1))
            out.append(torch.sign(a) * torch.clamp(a.abs() - lam, min=0.0))
    return out


def _ns(X, steps):
    a, b, c = 3.4445, -4.7750, 2.0315  # Muon
    tall = X.shape[-2] > X.shape[-1]
    X = X.mT if tall else X
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


def oracle(spec, x, gates, statics):
    """The recurrence of kernels/minibatch.py's docstring, token by token, rows [N = B*H]."""
    def rows(t):
        return t.transpose(1, 2).reshape(B * H, T, *t.shape[3:])

    q, k, v = rows(x["q"]), rows(x["k"]), rows(x["v"])
    gt = {n: rows(t) for n, t in gates.items()}
    st = {n: t.reshape(B * H, *t.shape[2:]) for n, t in statics.items()}
    A = _weights(spec, st["w0"])
    S = [torch.zeros_like(a) for a in A]
    anchor = A
    c1 = spec.window - 1
    outs = []
    for t in range(T):
        i = t % spec.chunk  # tokens of this mini-batch before t
        if i == 0:
            anchor = A
        # u_t: the gradient at the anchor of the token's loss (the Omega rule: its window's weighted sum)
        probe = [w.clone() for w in _phi(spec, anchor, st["shrink"])]
        total = 0.0
        for j in range(max(0, t - c1), t + 1):
            w_j = gt["gamma"][:, j] if c1 else torch.ones(B * H, dtype=DT)
            y = _memory(spec, probe, k[:, j], st["ln_w"], st["ln_b"])
            total = total + _loss(spec, y, v[:, j], None if "delta" not in gt else gt["delta"][:, j], w_j)
        u = torch.autograd.grad(total, probe, create_graph=True)
        if spec.grad_clip is not None:
            n = torch.sqrt(sum((uu.flatten(1) ** 2).sum(1) for uu in u))
            s = spec.grad_clip * torch.tanh(n / spec.grad_clip) / n
            u = [uu * s.view(-1, *[1] * (uu.dim() - 1)) for uu in u]

        def sh(gate, ref):
            return gate.view(-1, *[1] * (ref.dim() - 1))

        a_t = torch.exp(gt["g"][:, t]) if "g" in gt else torch.ones(B * H, dtype=DT)
        th = gt["beta"][:, t]
        A_prev = A
        if spec.update == "gd":
            A = [sh(a_t, w) * w - sh(th, w) * uu for w, uu in zip(A, u)]
        elif spec.update == "momentum":
            S = [sh(torch.exp(gt["log_eta"][:, t]), s) * s - sh(th, s) * uu for s, uu in zip(S, u)]
            A = [sh(a_t, w) * w + s for w, s in zip(A, S)]
        else:
            S = [sh(torch.exp(gt["log_eta"][:, t]), s) * s + uu for s, uu in zip(S, u)]
            O = [_ns(s, spec.ns_steps) if kind == "dense" else s for (_, kind, _), s in zip(tensor_shapes(spec), S)]
            A = [sh(a_t, w) * w - sh(th, w) * o for w, o in zip(A, O)]

        def seen(A_, n_):  # TTT's token scale: anchor + c_n (A - anchor) after n tokens of the mini-batch
            if not spec.token_scale or n_ == 0:
                return A_
            c = torch.clamp(1.0 / n_ + st["token_offset"][:, n_ - 1], min=0.0)
            return [wa + sh(c, w) * (w - wa) for w, wa in zip(A_, anchor)]

        read = seen(A_prev, i) if spec.read_before else seen(A, i + 1)
        outs.append(_memory(spec, _phi(spec, read, st["shrink"]), spec.scale * q[:, t], st["ln_w"], st["ln_b"]))
        if (i + 1) == spec.chunk:
            A = seen(A, i + 1)
    o = torch.stack(outs, 1).view(B, H, T, -1).transpose(1, 2)
    return o, A, S


# ----------------------------------------------------------------------------------------- tests
def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _leaves(x, gates, statics, spec):
    used = [t for n, t in statics.items() if n in _used_statics(spec)]
    return [t.requires_grad_(True) for t in [*x.values(), *gates.values(), *used]]


def _used_statics(spec):
    out = {"w0"}
    if spec.norm:
        out |= {"ln_w", "ln_b"}
    if spec.token_scale:
        out.add("token_offset")
    if spec.phi == "shrink":
        out.add("shrink")
    return out


# the token scale acts inside mini-batches of at least 2 tokens: its cases run at chunk 3 only
@pytest.mark.parametrize("name, chunk", [(n, c) for n in sorted(CASES) for c in (1, 3)
                                         if c > 1 or not CASES[n].get("token_scale")])
def test_chunked_and_loop_equal_the_oracle(name, chunk):
    spec = MemorySpec(**CASES[name], chunk=chunk)
    torch.manual_seed(0)
    x, gates, statics = _inputs(spec)
    leaves = _leaves(x, gates, statics, spec)
    w = torch.randn(B, T, H, K, dtype=DT)
    o_ref, A_ref, _ = oracle(spec, x, gates, statics)
    grads_ref = torch.autograd.grad((o_ref * w).sum(), leaves, allow_unused=True)
    for fn in (chunk_minibatch, naive_minibatch):
        o, st = fn(x["q"], x["k"], x["v"], spec=spec, **gates, statics=statics, output_final_state=True,
                   chunk_size=chunk)
        assert rel(o, o_ref) <= TOL, fn.__name__
        A = st["memory"].reshape(B * H, -1)[:, :weight_numel(spec)]
        assert rel(A, torch.cat([a.flatten(1) for a in A_ref], 1)) <= TOL, fn.__name__
        grads = torch.autograd.grad((o * w).sum(), leaves, allow_unused=True)
        for i, (a, b) in enumerate(zip(grads, grads_ref)):
            assert b is not None and b.abs().max() > 0, i
            assert rel(a, b) <= TOL, (fn.__name__, i)


@pytest.mark.parametrize("name", ["lp3-momentum", "omega3-newton_schulz", "token_scale", "huber_yaad-kl"])
def test_prefill_then_steps_equal_the_forward(name):
    """forward(x[:n]) continued token by token (and by a second forward) equals forward(x), across anchors."""
    C = 3
    spec = MemorySpec(**CASES[name], chunk=C)
    x, gates, statics = _inputs(spec, seed=1)

    def cut(d, sl):
        return {n: t[:, sl] for n, t in d.items()}

    o_full, st_full = chunk_minibatch(*x.values(), spec=spec, **gates, statics=statics, output_final_state=True,
                                      chunk_size=C)
    for n in (C - 1, C, C + 1):
        o1, st = chunk_minibatch(*cut(x, slice(0, n)).values(), spec=spec, **cut(gates, slice(0, n)), statics=statics,
                                 output_final_state=True, chunk_size=C)
        o2, st2 = chunk_minibatch(*cut(x, slice(n, T)).values(), spec=spec, **cut(gates, slice(n, T)),
                                  statics=statics, initial_state=st, output_final_state=True, chunk_size=C)
        assert rel(torch.cat([o1, o2], 1), o_full) <= TOL
        assert rel(st2["memory"], st_full["memory"]) <= TOL and st2["pos"] == T
        steps = []
        for t in range(n, T):
            o_t, st = minibatch_step(*(x[s][:, t] for s in "qkv"), spec=spec, **{g: v[:, t] for g, v in gates.items()},
                                     statics=statics, state=st)
            steps.append(o_t)
        assert rel(torch.stack(steps, 1), o_full[:, n:]) <= TOL
        assert rel(st["memory"], st_full["memory"]) <= TOL


@pytest.mark.parametrize("name", ["l2-gd", "dot-gd-silu", "lp3-momentum", "l1-lq", "huber_yaad-kl",
                                  "huber_coord-shrink-momentum", "huber_norm-newton_schulz", "vector-lp"])
def test_gradient_factors_equal_autograd(name):
    """grad_factors' per-token rank-one factors X^T Delta reproduce autograd's gradient of each token's loss."""
    spec = MemorySpec(**CASES[name])
    x, gates, statics = _inputs(spec, seed=2)
    N = B * H
    ws = [w.requires_grad_(True) for w in _weights(spec, statics["w0"].reshape(N, -1))]
    st = {n: t.reshape(N, *t.shape[2:]) for n, t in statics.items()}
    k = x["k"].transpose(1, 2).reshape(N, T, K)
    v = x["v"].transpose(1, 2).reshape(N, T, K)
    d = gates["delta"].transpose(1, 2).reshape(N, T) if "delta" in gates else None
    X, D = grad_factors(spec, ws, k, v, st, d)
    j = 4
    y = _memory(spec, ws, k[:, j], st["ln_w"], st["ln_b"])
    loss = _loss(spec, y, v[:, j], None if d is None else d[:, j])
    auto = torch.autograd.grad(loss, ws)
    i = 0
    for li, lay in enumerate(spec.layers):
        mine = X[li][:, j] * D[li][:, j] if lay.diag else X[li][:, j, :, None] * D[li][:, j, None, :]
        assert rel(mine, auto[i]) <= TOL
        i += 1
        if lay.bias:
            assert rel(D[li][:, j], auto[i]) <= TOL
            i += 1


def test_depth_one_matrix_l2_at_chunk_one_is_the_delta_rule():
    """A linear memory S with the l2 bias, one gd step per token (C = 1, no decay): DeltaNet's recurrence."""
    spec = MemorySpec(layers=(Layer(K, K),), scale=K ** -0.5, loss="l2", chunk=1)
    x, gates, _ = _inputs(spec, seed=3)
    o, S = chunk_minibatch(*x.values(), spec=spec, beta=gates["beta"], output_final_state=True, chunk_size=1)
    o_d, S_d = naive_recurrent_delta_rule(*x.values(), beta=gates["beta"], output_final_state=True)
    # the delta-rule oracle runs in fp32: its rounding, accumulated over T tokens
    tol = 100 * T * torch.finfo(torch.float32).eps
    assert rel(o, o_d.double()) <= tol
    assert rel(S["memory"].view(B, H, K, K), S_d.double()) <= tol


def test_chunk_size_must_be_the_mini_batch():
    spec = MemorySpec(**CASES["l2-gd"], chunk=4)
    x, gates, statics = _inputs(spec)
    with pytest.raises(ValueError, match="mini-batch size"):
        chunk_minibatch(*x.values(), spec=spec, **gates, statics=statics, chunk_size=8)
