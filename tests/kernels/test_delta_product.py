"""chunk_delta_product / delta_product_step against the token-by-token oracle (fp32, CPU): DeltaProduct (no gate),
Gated DeltaProduct (scalar gate) and a per-channel gate, n = 1..3 Householder steps, step sizes in (0, 1) and (0, 2)."""

import pytest
import torch
import torch.nn.functional as F

from kernel_testutil import TOL, rel

from archspace.kernels.delta_product import chunk_delta_product, delta_product_step, naive_recurrent_delta_product
from archspace.kernels.delta_rule import chunk_delta_rule

B, H, K, V = 2, 2, 16, 12  # K != V so that a transposed state cannot pass

GATES = ["none", "scalar", "scalar_strong", "vector", "scalar_near_one"]


def make_inputs(T, n, gate, init, beta_max=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, K), "k": F.normalize(r(B, T, n, H, K), dim=-1), "v": r(B, T, n, H, V),
         "beta": beta_max * torch.sigmoid(r(B, T, n, H))}
    x["g"] = {"none": None, "scalar": F.logsigmoid(r(B, T, H)), "scalar_strong": -5.0 * torch.rand(B, T, H, generator=gen),
              "vector": F.logsigmoid(r(B, T, H, K)), "scalar_near_one": -1e-4 * torch.rand(B, T, H, generator=gen)}[gate]
    x["initial_state"] = r(B, H, K, V) if init else None
    return x


def run_with_grads(fn, x, do, dS, **kw):
    xs = {name: t.clone().requires_grad_(True) for name, t in x.items() if t is not None}
    args = {name: xs.get(name) for name in x}
    o, S = fn(args["q"], args["k"], args["v"], beta=args["beta"], g=args["g"], initial_state=args["initial_state"],
              output_final_state=True, **kw)
    ((o * do).sum() + (S * dS).sum()).backward()
    return o, S, {name: t.grad for name, t in xs.items()}


@pytest.mark.parametrize("beta_max", [1.0, 2.0])
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("T,C", [(1, 16), (23, 16), (37, 32), (50, 64)])
@pytest.mark.parametrize("gate", GATES)
def test_chunk_matches_naive_fwd_bwd(gate, T, C, n, beta_max):
    x = make_inputs(T, n, gate, init=T != 23, beta_max=beta_max)
    gen = torch.Generator().manual_seed(1)
    do, dS = torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen)
    o_ref, S_ref, g_ref = run_with_grads(naive_recurrent_delta_product, x, do, dS)
    o, S, grads = run_with_grads(chunk_delta_product, x, do, dS, chunk_size=C)
    assert o.shape == (B, T, H, V) and S.dtype == torch.float32
    assert rel(o, o_ref) <= TOL and rel(S, S_ref) <= TOL
    assert set(grads) == set(g_ref)
    for name in g_ref:
        assert rel(grads[name], g_ref[name]) <= TOL, (name, rel(grads[name], g_ref[name]))


@pytest.mark.parametrize("gate", ["none", "scalar"])
def test_one_step_is_the_delta_rule_bit_for_bit(gate):
    x = make_inputs(29, 1, gate, init=True)
    o1, S1 = chunk_delta_product(**x, output_final_state=True, chunk_size=16)
    o2, S2 = chunk_delta_rule(x["q"], x["k"][:, :, 0], x["v"][:, :, 0], beta=x["beta"][:, :, 0], g=x["g"],
                              initial_state=x["initial_state"], output_final_state=True, chunk_size=16)
    assert torch.equal(o1, o2) and torch.equal(S1, S2)


def test_product_of_householder_matrices():
    """The state after one token is A_t S + sum of writes, A_t = a_t H_n ... H_1 with H_j = I - b_j k_j k_j^T
    (step 1 applied first), written here as an explicit K x K product in fp64."""
    x = make_inputs(1, 3, "scalar", init=True, beta_max=2.0)
    _, S = naive_recurrent_delta_product(**x, output_final_state=True)
    A = torch.eye(K, dtype=torch.float64).expand(B, H, K, K)
    S_exp = torch.exp(x["g"][:, 0].double())[:, :, None, None] * x["initial_state"].double()
    for j in range(3):
        k, v, b = x["k"][:, 0, j].double(), x["v"][:, 0, j].double(), x["beta"][:, 0, j].double()
        Hj = torch.eye(K, dtype=torch.float64) - b[..., None, None] * k[..., :, None] * k[..., None, :]
        S_exp = Hj @ S_exp + b[..., None, None] * k[..., :, None] * v[..., None, :]
        A = Hj @ A
    assert rel(S, S_exp) <= TOL
    # b = 2 on a unit key is a reflection: eigenvalue -1 along k
    k = x["k"][0, 0, 0, 0].double()
    refl = torch.eye(K, dtype=torch.float64) - 2 * torch.outer(k, k)
    assert torch.allclose(refl @ k, -k)


@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("gate", GATES)
def test_step_matches_naive(gate, init):
    T, n = 11, 2
    x = make_inputs(T, n, gate, init, beta_max=2.0)
    o_ref, S_ref = naive_recurrent_delta_product(**x, output_final_state=True)
    S, outs = x["initial_state"], []
    for t in range(T):
        o_t, S = delta_product_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], beta=x["beta"][:, t],
                                    g=None if x["g"] is None else x["g"][:, t], state=S)
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o_ref) <= TOL and rel(S, S_ref) <= TOL


def test_split_sequence_equals_whole():
    x = make_inputs(40, 2, "scalar", True)
    o_ref, S_ref = naive_recurrent_delta_product(**x, output_final_state=True)

    def part(sl, h0):
        return chunk_delta_product(x["q"][:, sl], x["k"][:, sl], x["v"][:, sl], beta=x["beta"][:, sl],
                                   g=x["g"][:, sl], initial_state=h0, output_final_state=True, chunk_size=16)

    o1, S1 = part(slice(0, 13), x["initial_state"])
    o2, S2 = part(slice(13, 40), S1)
    assert rel(torch.cat([o1, o2], 1), o_ref) <= TOL and rel(S2, S_ref) <= TOL
