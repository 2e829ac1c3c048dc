"""chunk_mlstm / mlstm_step against the stabilised token loop (fp32, CPU), and the stabilised loop against the
unstabilised recurrence of xLSTM's equations (fp64)."""

import pytest
import torch
import torch.nn.functional as F

from kernel_testutil import TOL, rel

from archspace.kernels.mlstm import EPS, chunk_mlstm, mlstm_init_state, mlstm_step, naive_recurrent_mlstm

B, H, K, V = 2, 2, 16, 12
T_CHUNK = [(1, 16), (37, 16), (64, 32), (100, 64)]
# gates: "xlstm": i~ ~ N(0, 1), f~ ~ N(3, 2) (xLSTM's forget bias starts in [3, 6]); "capped": i~ = 15 tanh(./15)
# around 10 (near the soft cap of xLSTM 7B: exp(15) = 3e6 stresses the stabiliser); "forgetful": f~ ~ N(-8, 1)
# (f ~ e^-8, in-chunk cumsums of log f reach -500); "no_forget": g = None (f = 1)
GATES = ["xlstm", "capped", "forgetful", "no_forget"]


def make_inputs(T, gate, init, seed=0):
    """Keys of unit expected norm, as xLSTM's k_t = W_k x_t / sqrt(d) (Beck et al. 2024, Eq. 22). h_t is a ratio
    S^T q / max(|n^T q|, 1) whose denominator cancels when q and n point in different directions: with input gates
    spread over several e-folds ("capped", i~ ~ N(0, 3)) both fp32 paths sit 5e-5 .. 5e-4 from an fp64 run of the
    same loop. The "capped" case therefore uses nonnegative q and k (no cancellation in n^T q): it tests the
    stabiliser, not the conditioning of h."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K) * K ** -0.5, "v": r(B, T, H, V)}
    x["i"], x["g"] = r(B, T, H), F.logsigmoid(3.0 + 2 * r(B, T, H))
    if gate == "capped":
        x["q"], x["k"] = x["q"].abs(), x["k"].abs()
        x["i"] = 15.0 * torch.tanh((10.0 + 2 * x["i"]) / 15.0)
    elif gate == "forgetful":
        x["g"] = F.logsigmoid(-8.0 + r(B, T, H))
    elif gate == "no_forget":
        x["g"] = None
    x["initial_state"] = None
    if init:
        x["initial_state"] = {"memory": r(B, H, K, V), "normalizer": r(B, H, K).abs(), "stabilizer": r(B, H)}
    return x


def leaves(x):
    out = {}
    for name, t in x.items():
        if isinstance(t, dict):
            out.update({f"h0_{k}": v.clone().requires_grad_(True) for k, v in t.items()})
        elif t is not None:
            out[name] = t.clone().requires_grad_(True)
    return out


def run_with_grads(fn, x, do, dS, **kw):
    xs = leaves(x)
    h0 = {k[3:]: v for k, v in xs.items() if k.startswith("h0_")} or None
    o, st = fn(xs["q"], xs["k"], xs["v"], i=xs["i"], g=xs.get("g"), initial_state=h0, output_final_state=True, **kw)
    loss = (o * do).sum() + sum((st[k] * dS[k]).sum() for k in st)
    loss.backward()
    return o, st, {n: t.grad for n, t in xs.items()}


def _dS(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {"memory": torch.randn(B, H, K, V, generator=gen), "normalizer": torch.randn(B, H, K, generator=gen),
            "stabilizer": torch.randn(B, H, generator=gen)}


@pytest.mark.parametrize("init", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("T,C", T_CHUNK)
@pytest.mark.parametrize("gate", GATES)
def test_chunk_matches_naive_fwd_bwd(gate, T, C, init):
    if gate == "capped" and T == 1:
        # i'_1 ~ 1 >> f'_1: h_1 ~ v_1 (k^T q) / (|k^T q| + eps e^-m) hardly depends on q; its gradient is eps-sized
        # rounding noise (~1e-8), nothing to compare
        pytest.skip("no gradient of q to compare at one token with the normaliser branch active")
    x = make_inputs(T, gate, init)
    do = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(2))
    dS = _dS()
    o_ref, S_ref, g_ref = run_with_grads(naive_recurrent_mlstm, x, do, dS)
    o, S, grads = run_with_grads(chunk_mlstm, x, do, dS, chunk_size=C)
    assert o.shape == (B, T, H, V)
    assert rel(o, o_ref) <= TOL
    for key in ("memory", "normalizer", "stabilizer"):
        assert S[key].dtype == torch.float32 and rel(S[key], S_ref[key]) <= TOL, key
    assert set(grads) == set(g_ref)
    for n in g_ref:
        assert torch.isfinite(grads[n]).all(), n
        assert rel(grads[n], g_ref[n]) <= TOL, (n, rel(grads[n], g_ref[n]))


@pytest.mark.parametrize("gate", ["xlstm", "forgetful"])
def test_stabilised_equals_the_equations(gate):
    """The stabilised loop computes xLSTM's h_t = S_t^T q~ / max(|n_t^T q~|, 1) with S, n, i = exp(i~) unstabilised
    (fp64, gates small enough that exp does not overflow; eps = 0 makes the two exactly equal)."""
    T = 30
    x = make_inputs(T, gate, False)
    q, k, v, i, g = (x[n].double() for n in ("q", "k", "v", "i", "g"))
    S, n = torch.zeros(B, H, K, V, dtype=torch.float64), torch.zeros(B, H, K, dtype=torch.float64)
    hs = []
    for t in range(T):
        f_t, i_t = torch.exp(g[:, t]), torch.exp(i[:, t])
        S = f_t[..., None, None] * S + i_t[..., None, None] * k[:, t, ..., None] * v[:, t, :, None, :]
        n = f_t[..., None] * n + i_t[..., None] * k[:, t]
        qt = q[:, t] * K ** -0.5
        den = torch.einsum("bhk,bhk->bh", n, qt).abs().clamp(min=1.0)
        hs.append(torch.einsum("bhkv,bhk->bhv", S, qt) / den[..., None])
    o, _ = naive_recurrent_mlstm(q, k, v, i=i, g=g, eps=0.0)
    o_chunk, _ = chunk_mlstm(x["q"], x["k"], x["v"], i=x["i"], g=x["g"], eps=0.0, chunk_size=8)
    assert rel(o, torch.stack(hs, 1)) <= 1e-12  # the oracle itself runs in fp64 here
    assert rel(o_chunk, torch.stack(hs, 1)) <= TOL


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("gate", GATES)
def test_step_matches_naive(gate, init):
    T = 13
    x = make_inputs(T, gate, init)
    o_ref, S_ref = naive_recurrent_mlstm(**x, output_final_state=True)
    st = x["initial_state"] or mlstm_init_state(B, H, K, V)
    outs = []
    for t in range(T):
        h, st = mlstm_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], i=x["i"][:, t],
                           g=None if x["g"] is None else x["g"][:, t], state=st)
        outs.append(h)
    assert rel(torch.stack(outs, 1), o_ref) <= TOL
    for key in S_ref:
        assert rel(st[key], S_ref[key]) <= TOL, key


@pytest.mark.parametrize("split", [1, 16, 23])
def test_split_sequence_equals_whole(split):
    T = 50
    x = make_inputs(T, "capped", True)
    o_ref, S_ref = naive_recurrent_mlstm(**x, output_final_state=True)

    def part(sl, h0):
        return chunk_mlstm(x["q"][:, sl], x["k"][:, sl], x["v"][:, sl], i=x["i"][:, sl], g=x["g"][:, sl],
                           initial_state=h0, output_final_state=True, chunk_size=16)

    o1, S1 = part(slice(0, split), x["initial_state"])
    o2, S2 = part(slice(split, T), S1)
    assert rel(torch.cat([o1, o2], 1), o_ref) <= TOL
    for key in S_ref:
        assert rel(S2[key], S_ref[key]) <= TOL, key


def test_eps_is_the_kernels_default():
    assert EPS == 1e-6
