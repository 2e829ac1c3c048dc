"""chunk_gla / gla_step against the token-by-token oracle naive_recurrent_gla (fp32, CPU)."""

import pytest
import torch
import torch.nn.functional as F

from archspace.kernels.gla import chunk_gla, chunk_hgrn2, gla_step, naive_recurrent_gla
from kernel_testutil import rel_grad

B, H, K, V = 2, 2, 16, 12  # K != V so that a transposed state cannot pass
TOL = 1e-5

GATES = ["none", "scalar", "vector", "vector_strong"]
T_CHUNK = [(1, 16), (37, 16), (64, 32), (100, 32), (100, 64)]


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    nb = b.norm()
    if nb == 0:
        return a.norm().item()
    return ((a - b).norm() / nb).item()


def make_inputs(T, gate, init, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float32)
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K), "v": r(B, T, H, V)}
    if gate == "scalar":
        x["g"] = F.logsigmoid(r(B, T, H))
    elif gate == "vector":
        x["g"] = F.logsigmoid(r(B, T, H, K))
    elif gate == "vector_strong":  # log-decay down to -5 per step: exp(-cumsum) over a chunk overflows
        x["g"] = -5.0 * torch.rand(B, T, H, K, generator=gen)
    else:
        x["g"] = None
    x["initial_state"] = r(B, H, K, V) if init else None
    return {n: (t.to(dtype) if t is not None else None) for n, t in x.items()}


def leaves(x):
    return {n: t.clone().requires_grad_(True) for n, t in x.items() if t is not None}


def run_with_grads(fn, x, do, dS, **kw):
    xs = leaves(x)
    args = {n: xs.get(n) for n in x}
    o, S = fn(args["q"], args["k"], args["v"], g=args["g"], initial_state=args["initial_state"],
              output_final_state=True, **kw)
    ((o * do).sum() + (S * dS).sum()).backward()
    return o, S, {n: t.grad for n, t in xs.items()}


@pytest.mark.parametrize("init", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("T,C", T_CHUNK)
@pytest.mark.parametrize("gate", GATES)
def test_chunk_matches_naive_fwd_bwd(gate, T, C, init):
    x = make_inputs(T, gate, init)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(B, T, H, V, generator=gen)
    dS = torch.randn(B, H, K, V, generator=gen)
    o_ref, S_ref, g_ref = run_with_grads(naive_recurrent_gla, x, do, dS)
    o, S, grads = run_with_grads(chunk_gla, x, do, dS, chunk_size=C)
    assert o.shape == (B, T, H, V) and S.shape == (B, H, K, V) and S.dtype == torch.float32
    assert rel(o, o_ref) <= TOL
    assert rel(S, S_ref) <= TOL
    assert set(grads) == set(g_ref)
    for n in g_ref:
        assert torch.isfinite(grads[n]).all(), n
        assert rel(grads[n], g_ref[n]) <= TOL, (n, rel(grads[n], g_ref[n]))


@pytest.mark.parametrize("gate", GATES)
def test_no_final_state_and_default_scale(gate):
    x = make_inputs(20, gate, False)
    o, S = chunk_gla(x["q"], x["k"], x["v"], g=x["g"], chunk_size=16)
    assert S is None
    o2, _ = chunk_gla(x["q"], x["k"], x["v"], g=x["g"], scale=K ** -0.5, chunk_size=16)
    o3, S3 = naive_recurrent_gla(x["q"], x["k"], x["v"], g=x["g"], scale=0.3)
    o4, _ = chunk_gla(x["q"], x["k"], x["v"], g=x["g"], scale=0.3, chunk_size=16)
    assert S3 is None
    assert torch.equal(o, o2)
    assert rel(o4, o3) <= TOL


@pytest.mark.parametrize("init", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("gate", GATES)
def test_step_matches_naive(gate, init):
    T = 13
    x = make_inputs(T, gate, init)
    o_ref, S_ref = naive_recurrent_gla(**x, output_final_state=True)
    S = x["initial_state"]
    outs = []
    for t in range(T):
        g_t = None if x["g"] is None else x["g"][:, t]
        o_t, S = gla_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], g=g_t, state=S)
        assert o_t.shape == (B, H, V) and S.dtype == torch.float32
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o_ref) <= TOL
    assert rel(S, S_ref) <= TOL


@pytest.mark.parametrize("split", [1, 16, 23])
@pytest.mark.parametrize("gate", GATES)
def test_split_sequence_equals_whole(gate, split):
    T = 50
    x = make_inputs(T, gate, True)
    o_ref, S_ref = naive_recurrent_gla(**x, output_final_state=True)

    def part(sl, h0):
        g = None if x["g"] is None else x["g"][:, sl]
        return chunk_gla(x["q"][:, sl], x["k"][:, sl], x["v"][:, sl], g=g, initial_state=h0,
                         output_final_state=True, chunk_size=16)

    o1, S1 = part(slice(0, split), x["initial_state"])
    o2, S2 = part(slice(split, T), S1)
    assert rel(torch.cat([o1, o2], 1), o_ref) <= TOL
    assert rel(S2, S_ref) <= TOL


def test_padding_keeps_final_state():
    # T=17 with chunk 64: 47 padded steps must not decay or feed the state
    x = make_inputs(17, "vector_strong", True)
    _, S_ref = naive_recurrent_gla(**x, output_final_state=True)
    _, S = chunk_gla(**x, output_final_state=True, chunk_size=64)
    assert rel(S, S_ref) <= TOL


@pytest.mark.parametrize("gate", GATES)
def test_low_precision_io(gate):
    x = make_inputs(40, gate, True, dtype=torch.bfloat16)
    o_ref, S_ref = naive_recurrent_gla(**x, output_final_state=True)
    o, S = chunk_gla(**x, output_final_state=True, chunk_size=16)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert rel(S, S_ref) <= TOL  # state math is fp32 on both paths
    assert rel(o, o_ref) <= 1e-2  # only the final cast to bf16 differs


def test_strong_decay_long_chunk_is_finite():
    # cumsum of g over a 64 chunk reaches about -160 here: exp(+160) is inf in fp32
    x = make_inputs(64, "vector_strong", False)
    o, S = chunk_gla(**x, output_final_state=True, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()


@pytest.mark.parametrize("T,C", [(37, 16), (100, 32), (100, 64)])
@pytest.mark.parametrize("gate", ["vector", "vector_strong", "near_one", "zero"])
def test_hgrn2_block_scores_match_naive_fwd_bwd(gate, T, C):
    """chunk_hgrn2 (GLA with block-factored intra-chunk scores) against the token loop, with HGRN2's tied key
    k = 1 - exp(g) (an input of its own: the kernels take k and g separately)."""
    x = make_inputs(T, "vector_strong" if gate == "vector_strong" else "vector", True)
    gen = torch.Generator().manual_seed(2)
    if gate == "near_one":  # f ~ 1 - 1e-4: k = 1 - f is tiny (-expm1 keeps it exact)
        x["g"] = -1e-4 * torch.rand(B, T, H, K, generator=gen)
    elif gate == "zero":  # f = exp(-10 .. -20): the state is wiped at every token
        x["g"] = -10.0 - 10.0 * torch.rand(B, T, H, K, generator=gen)
    x["k"] = -torch.expm1(x["g"])
    do, dS = torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen)
    o_ref, S_ref, g_ref = run_with_grads(naive_recurrent_gla, x, do, dS)
    o, S, grads = run_with_grads(chunk_hgrn2, x, do, dS, chunk_size=C)
    assert rel(o, o_ref) <= TOL and rel(S, S_ref) <= TOL
    for n in g_ref:
        err = rel_grad(n, grads[n], g_ref[n], x, g_ref, gate == "zero")
        assert torch.isfinite(grads[n]).all() and err <= TOL, (n, err)
