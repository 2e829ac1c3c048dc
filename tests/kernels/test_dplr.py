"""chunk_dplr / dplr_step against the token-by-token oracle (fp32, CPU); RWKV-7's row-convention kernel and
Kimi Delta Attention as special cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from kernel_testutil import TOL, rel, rel_grad

from archspace.kernels.delta_rule import chunk_delta_rule
from archspace.kernels.dplr import chunk_dplr, dplr_step, naive_recurrent_dplr

B, H, K, V = 2, 2, 16, 12  # K != V so that a transposed state cannot pass

# rwkv7: log w = -e^{-1/2} sigmoid(.) (RWKV-7's own bound, w in (0.545, 1)); strong: down to -5 per step;
# near_one: g ~ -1e-4; zero: g in (-20, -10), the state wiped every step; none: no decay
GATES = ["rwkv7", "strong", "near_one", "zero", "none"]
T_CHUNK = [(1, 16), (37, 16), (64, 32), (100, 64)]


def make_inputs(T, gate, init, low_rank="rwkv7", seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K), "v": r(B, T, H, V)}
    if low_rank == "rwkv7":  # a = -kh, b = iclr * kh: the removal of RWKV-7
        kh = F.normalize(r(B, T, H, K), dim=-1)
        x["a"], x["b"] = -kh, torch.sigmoid(r(B, T, H, K)) * kh
    else:  # any small low-rank term
        x["a"], x["b"] = 0.3 * r(B, T, H, K), 0.3 * r(B, T, H, K)
    x["g"] = {"rwkv7": -math.exp(-0.5) * torch.sigmoid(r(B, T, H, K)), "strong": -5.0 * torch.rand(B, T, H, K, generator=gen),
              "near_one": -1e-4 * torch.rand(B, T, H, K, generator=gen),
              "zero": -10.0 - 10.0 * torch.rand(B, T, H, K, generator=gen), "none": None}[gate]
    x["initial_state"] = r(B, H, K, V) if init else None
    return x


def run_with_grads(fn, x, do, dS, **kw):
    xs = {n: t.clone().requires_grad_(True) for n, t in x.items() if t is not None}
    args = {n: xs.get(n) for n in x}
    o, S = fn(args["q"], args["k"], args["v"], a=args["a"], b=args["b"], g=args["g"],
              initial_state=args["initial_state"], output_final_state=True, **kw)
    ((o * do).sum() + (S * dS).sum()).backward()
    return o, S, {n: t.grad for n, t in xs.items()}


@pytest.mark.parametrize("low_rank", ["rwkv7", "random"])
@pytest.mark.parametrize("init", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("T,C", T_CHUNK)
@pytest.mark.parametrize("gate", GATES)
def test_chunk_matches_naive_fwd_bwd(gate, T, C, init, low_rank):
    x = make_inputs(T, gate, init, low_rank)
    gen = torch.Generator().manual_seed(1)
    do, dS = torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen)
    o_ref, S_ref, g_ref = run_with_grads(naive_recurrent_dplr, x, do, dS)
    o, S, grads = run_with_grads(chunk_dplr, x, do, dS, chunk_size=C)
    assert o.shape == (B, T, H, V) and S.dtype == torch.float32
    assert rel(o, o_ref) <= TOL and rel(S, S_ref) <= TOL
    assert set(grads) == set(g_ref)
    for n in g_ref:
        assert torch.isfinite(grads[n]).all(), n
        err = rel_grad(n, grads[n], g_ref[n], x, g_ref, gate == "zero")
        assert err <= TOL, (n, err)


def test_rwkv7_row_convention_kernel():
    """RWKV-LM's kernel (RWKV-v7 ``rwkv7_clampw.cu``) keeps S with rows = value channels and runs
    sa = S a;  S = S Diag(w) + sa b^T + v k^T;  y = S r   with a = -kh, b = kh * a_iclr, no scale.
    The DPLR op with the same a, b, k and scale 1 must give the same reads (this pins the transposition)."""
    T = 29
    x = make_inputs(T, "rwkv7", False)
    w = torch.exp(x["g"].double())
    a, b, k, v, r = (x[n].double() for n in ("a", "b", "k", "v", "q"))
    S = torch.zeros(B, H, V, K, dtype=torch.float64)
    ys = []
    for t in range(T):
        sa = torch.einsum("bhvk,bhk->bhv", S, a[:, t])
        S = S * w[:, t, :, None, :] + sa[..., None] * b[:, t, :, None, :] + v[:, t, ..., None] * k[:, t, :, None, :]
        ys.append(torch.einsum("bhvk,bhk->bhv", S, r[:, t]))
    o, S_ours = chunk_dplr(x["q"], x["k"], x["v"], a=x["a"], b=x["b"], g=x["g"], scale=1.0, output_final_state=True,
                           chunk_size=16)
    assert rel(o, torch.stack(ys, 1)) <= TOL
    assert rel(S_ours, S.transpose(-1, -2)) <= TOL  # the same state, transposed


def test_kda_is_a_special_case():
    """(I - b k k^T) Diag(e^g) S + b k v^T = (Diag(e^g) + (b k)(-(k * e^g))^T) S + (b k) v^T."""
    T = 45
    gen = torch.Generator().manual_seed(3)
    q, v = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, V, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    beta, g = torch.sigmoid(torch.randn(B, T, H, generator=gen)), F.logsigmoid(torch.randn(B, T, H, K, generator=gen))
    o1, S1 = chunk_delta_rule(q, k, v, beta=beta, g=g, output_final_state=True, chunk_size=16)
    bk = beta[..., None] * k
    o2, S2 = chunk_dplr(q, bk, v, a=-(k * g.exp()), b=bk, g=g, output_final_state=True, chunk_size=16)
    assert rel(o2, o1) <= TOL and rel(S2, S1) <= TOL


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("gate", GATES)
def test_step_matches_naive(gate, init):
    T = 13
    x = make_inputs(T, gate, init)
    o_ref, S_ref = naive_recurrent_dplr(**x, output_final_state=True)
    S, outs = x["initial_state"], []
    for t in range(T):
        o_t, S = dplr_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], a=x["a"][:, t], b=x["b"][:, t],
                           g=None if x["g"] is None else x["g"][:, t], state=S)
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o_ref) <= TOL and rel(S, S_ref) <= TOL


@pytest.mark.parametrize("split", [1, 16, 23])
def test_split_sequence_equals_whole(split):
    T = 50
    x = make_inputs(T, "rwkv7", True)
    o_ref, S_ref = naive_recurrent_dplr(**x, output_final_state=True)

    def part(sl, h0):
        return chunk_dplr(x["q"][:, sl], x["k"][:, sl], x["v"][:, sl], a=x["a"][:, sl], b=x["b"][:, sl],
                          g=x["g"][:, sl], initial_state=h0, output_final_state=True, chunk_size=16)

    o1, S1 = part(slice(0, split), x["initial_state"])
    o2, S2 = part(slice(split, T), S1)
    assert rel(torch.cat([o1, o2], 1), o_ref) <= TOL and rel(S2, S_ref) <= TOL


def test_strong_decay_long_chunk_is_finite():
    x = make_inputs(64, "strong", False)
    o, S = chunk_dplr(**x, output_final_state=True, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
