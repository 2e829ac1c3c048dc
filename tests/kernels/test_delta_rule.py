"""chunk_delta_rule / delta_rule_step against the token-by-token oracle (fp32, CPU): DeltaNet, Gated DeltaNet and
the vector-gated delta rule of Kimi Delta Attention (KDA), with step sizes in (0, 1) and in (0, 2)."""

import pytest
import torch
import torch.nn.functional as F

from kernel_testutil import TOL, rel, rel_grad

from archspace.kernels.delta_rule import (
    chunk_delta_rule,
    delta_rule_step,
    naive_recurrent_delta_rule,
)

B, H, K, V = 2, 2, 16, 12  # K != V so that a transposed state cannot pass

# KDA (vector) gates: GLA-like logsigmoid, strong (down to -5 per step, exp(-cumsum) overflows a chunk), near zero
# (a = exp(-10 .. -20): the state is wiped every step), near one (g ~ -1e-4); "beta2": step sizes in (0, 2)
# (negative eigenvalues, Grazzi et al. 2024)
GATES = ["none", "scalar", "scalar_strong", "vector", "vector_strong", "vector_zero", "vector_near_one", "vector_beta2",
         "none_beta2"]
T_CHUNK = [(1, 16), (37, 16), (64, 32), (100, 32), (100, 64)]


def make_inputs(T, gate, init, seed=0, dtype=torch.float32, normalise_k=True):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float32)
    k = r(B, T, H, K)
    x = {
        "q": r(B, T, H, K),
        "k": F.normalize(k, dim=-1) if normalise_k else k,
        "v": r(B, T, H, V),
        "beta": torch.sigmoid(r(B, T, H)),
    }
    if gate == "scalar":
        x["g"] = F.logsigmoid(r(B, T, H))
    elif gate == "scalar_strong":  # down to -5 per step
        x["g"] = -5.0 * torch.rand(B, T, H, generator=gen)
    elif gate in ("vector", "vector_beta2"):
        x["g"] = F.logsigmoid(r(B, T, H, K))
    elif gate == "vector_strong":
        x["g"] = -5.0 * torch.rand(B, T, H, K, generator=gen)
    elif gate == "vector_zero":
        x["g"] = -10.0 - 10.0 * torch.rand(B, T, H, K, generator=gen)
    elif gate == "vector_near_one":
        x["g"] = -1e-4 * torch.rand(B, T, H, K, generator=gen)
    else:
        x["g"] = None
    if gate.endswith("beta2"):
        x["beta"] = 2.0 * x["beta"]
    x["initial_state"] = r(B, H, K, V) if init else None
    return {n: (t.to(dtype) if t is not None else None) for n, t in x.items()}


def leaves(x):
    return {n: t.clone().requires_grad_(True) for n, t in x.items() if t is not None}


def run_with_grads(fn, x, do, dS, **kw):
    xs = leaves(x)
    args = {n: xs.get(n) for n in x}
    o, S = fn(args["q"], args["k"], args["v"], beta=args["beta"], g=args["g"],
              initial_state=args["initial_state"], output_final_state=True, **kw)
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
    o_ref, S_ref, g_ref = run_with_grads(naive_recurrent_delta_rule, x, do, dS)
    o, S, grads = run_with_grads(chunk_delta_rule, x, do, dS, chunk_size=C)
    assert o.shape == (B, T, H, V) and S.shape == (B, H, K, V) and S.dtype == torch.float32
    assert rel(o, o_ref) <= TOL
    assert rel(S, S_ref) <= TOL
    assert set(grads) == set(g_ref)
    for n in g_ref:
        assert torch.isfinite(grads[n]).all(), n
        err = rel_grad(n, grads[n], g_ref[n], x, g_ref, gate.endswith("_zero"))
        assert err <= TOL, (n, err)


@pytest.mark.parametrize("gate", ["none", "scalar"])
def test_unnormalised_keys(gate):
    # the kernels must be exact for any k, not only unit keys: random key norms (~0.3 .. 2),
    # with b ||k||^2 kept <= 2 so the recurrence itself stays stable in fp32.
    T = 45
    x = make_inputs(T, gate, True, normalise_k=False)
    gen = torch.Generator().manual_seed(2)
    norms = 0.3 + 1.7 * torch.rand(B, T, H, 1, generator=gen)
    x["k"] = F.normalize(x["k"], dim=-1) * norms
    x["beta"] = torch.minimum(x["beta"], 2.0 / norms[..., 0] ** 2)
    do = torch.randn(B, T, H, V, generator=gen)
    dS = torch.randn(B, H, K, V, generator=gen)
    o_ref, S_ref, g_ref = run_with_grads(naive_recurrent_delta_rule, x, do, dS)
    o, S, grads = run_with_grads(chunk_delta_rule, x, do, dS, chunk_size=16)
    assert rel(o, o_ref) <= TOL
    assert rel(S, S_ref) <= TOL
    for n in g_ref:
        assert rel(grads[n], g_ref[n]) <= TOL, (n, rel(grads[n], g_ref[n]))


@pytest.mark.parametrize("gate", GATES)
def test_no_final_state_and_scale(gate):
    x = make_inputs(20, gate, False)
    args, gates = (x["q"], x["k"], x["v"]), {"beta": x["beta"], "g": x["g"]}
    o, S = chunk_delta_rule(*args, **gates, chunk_size=16)
    assert S is None
    o2, _ = chunk_delta_rule(*args, **gates, scale=K ** -0.5, chunk_size=16)
    o3, S3 = naive_recurrent_delta_rule(*args, **gates, scale=0.3)
    o4, _ = chunk_delta_rule(*args, **gates, scale=0.3, chunk_size=16)
    assert S3 is None
    assert torch.equal(o, o2)
    assert rel(o4, o3) <= TOL


@pytest.mark.parametrize("init", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("gate", GATES)
def test_step_matches_naive(gate, init):
    T = 13
    x = make_inputs(T, gate, init)
    o_ref, S_ref = naive_recurrent_delta_rule(**x, output_final_state=True)
    S = x["initial_state"]
    outs = []
    for t in range(T):
        g_t = None if x["g"] is None else x["g"][:, t]
        o_t, S = delta_rule_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], beta=x["beta"][:, t], g=g_t, state=S)
        assert o_t.shape == (B, H, V) and S.dtype == torch.float32
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o_ref) <= TOL
    assert rel(S, S_ref) <= TOL


@pytest.mark.parametrize("split", [1, 16, 23])
@pytest.mark.parametrize("gate", GATES)
def test_split_sequence_equals_whole(gate, split):
    T = 50
    x = make_inputs(T, gate, True)
    o_ref, S_ref = naive_recurrent_delta_rule(**x, output_final_state=True)

    def part(sl, h0):
        g = None if x["g"] is None else x["g"][:, sl]
        return chunk_delta_rule(x["q"][:, sl], x["k"][:, sl], x["v"][:, sl], beta=x["beta"][:, sl], g=g,
                                initial_state=h0, output_final_state=True, chunk_size=16)

    o1, S1 = part(slice(0, split), x["initial_state"])
    o2, S2 = part(slice(split, T), S1)
    assert rel(torch.cat([o1, o2], 1), o_ref) <= TOL
    assert rel(S2, S_ref) <= TOL


@pytest.mark.parametrize("gate", GATES)
def test_padding_keeps_final_state(gate):
    x = make_inputs(17, gate, True)
    _, S_ref = naive_recurrent_delta_rule(**x, output_final_state=True)
    _, S = chunk_delta_rule(**x, output_final_state=True, chunk_size=64)
    assert rel(S, S_ref) <= TOL


@pytest.mark.parametrize("gate", GATES)
def test_low_precision_io(gate):
    x = make_inputs(40, gate, True, dtype=torch.bfloat16)
    o_ref, S_ref = naive_recurrent_delta_rule(**x, output_final_state=True)
    o, S = chunk_delta_rule(**x, output_final_state=True, chunk_size=16)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert rel(S, S_ref) <= TOL  # state math is fp32 on both paths
    assert rel(o, o_ref) <= 1e-2  # only the final cast to bf16 differs


# ------------------------------------------------------------------ one step per value column; Longhorn's step
def _column_leaves(T, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    return {"q": r(B, T, H, K), "k": 0.7 * r(B, T, H, K), "v": r(B, T, H, V), "eps": torch.sigmoid(r(B, T, H, V)),
            "g": F.logsigmoid(r(B, T, H) + 2.0), "initial_state": r(B, H, K, V)}


@pytest.mark.parametrize("T,C", [(21, 8), (16, 16)])
def test_implicit_step_is_the_proximal_minimiser_chunk_loop_and_step_agree(T, C):
    """Longhorn: per value column d, s_t = argmin ||s - a_t s_{t-1}||^2 + eps_d (s^T k - v_d)^2, solved here by a
    linear solve ((I + eps k k^T) s = a s_{t-1} + eps k v_d); the chunked per-column delta rule, its loop and its
    decoding step give the same outputs, states and gradients (keys of any norm: the step is stable)."""
    from archspace.kernels.delta_rule import (chunk_implicit_delta_rule, implicit_delta_rule_step,
                                              naive_implicit_delta_rule)

    x = _column_leaves(T, 5)
    xs = {n: t.double() for n, t in x.items()}
    S = xs["initial_state"]
    eye = torch.eye(K, dtype=torch.float64)
    outs = []
    for t in range(T):
        k, v, e = xs["k"][:, t], xs["v"][:, t], xs["eps"][:, t]  # [B, H, K], [B, H, V], [B, H, V]
        prev = torch.exp(xs["g"][:, t])[..., None, None] * S
        A = eye + e[..., :, None, None] * (k[..., None, :, None] * k[..., None, None, :])  # [B, H, V, K, K]
        rhs = prev.transpose(-1, -2) + e[..., None] * k[..., None, :] * v[..., None]  # [B, H, V, K]
        S = torch.linalg.solve(A, rhs.unsqueeze(-1)).squeeze(-1).transpose(-1, -2)
        outs.append(K ** -0.5 * torch.einsum("bhkv,bhk->bhv", S, xs["q"][:, t]))
    o_ref = torch.stack(outs, 1)
    do = torch.randn_like(o_ref).float()
    results = []
    for fn, kw in ((chunk_implicit_delta_rule, {"chunk_size": C}), (naive_implicit_delta_rule, {})):
        ls = leaves(x)
        o, S_fin = fn(ls["q"], ls["k"], ls["v"], eps=ls["eps"], g=ls["g"], initial_state=ls["initial_state"],
                      output_final_state=True, **kw)
        assert rel(o, o_ref) <= TOL and rel(S_fin, S) <= TOL
        (o * do).sum().backward()
        results.append({n: t.grad for n, t in ls.items()})
    for n in results[0]:
        assert results[0][n].abs().max() > 0, n
        assert rel(results[0][n], results[1][n]) <= TOL, n
    state, steps = x["initial_state"], []
    for t in range(T):
        o_t, state = implicit_delta_rule_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], eps=x["eps"][:, t],
                                              g=x["g"][:, t], state=state)
        steps.append(o_t)
    assert rel(torch.stack(steps, 1), o_ref) <= TOL and rel(state, S) <= TOL
