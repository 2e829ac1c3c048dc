"""Log-linear memory kernels: chunked form vs the quadratic masked form vs the token recurrence (CPU)."""

import pytest
import torch
import torch.nn.functional as F

from archspace.kernels.delta_rule import chunk_delta_rule
from archspace.kernels.gla import chunk_gla
from archspace.kernels.log_linear import (
    chunk_log_linear,
    level_of,
    levels_in_use,
    log_linear_step,
    log_linear_step_slots,
    naive_quadratic_log_linear,
    naive_recurrent_log_linear,
)

B, H, K, V = 2, 2, 8, 6  # K != V so that a transposed state cannot pass
TOL = 1e-5
NAMES = ("q", "k", "v", "g", "lam", "beta")


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    nb = b.norm()
    if nb == 0:
        return a.norm().item()
    return ((a - b).norm() / nb).item()


def make_inputs(T, bias, gate, L, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, K), "k": F.normalize(r(B, T, H, K), dim=-1), "v": r(B, T, H, V)}
    if gate == "scalar":
        x["g"] = F.logsigmoid(r(B, T, H))
    elif gate == "scalar_strong":  # down to -5 per step
        x["g"] = -5.0 * torch.rand(B, T, H, generator=gen)
    else:
        x["g"] = None
    x["lam"] = F.softplus(r(B, T, H, L))  # well away from 1: every level matters
    x["beta"] = torch.sigmoid(r(B, T, H)) if bias == "delta" else None
    return x


def leaves(x, dtype=None):
    return {n: (t.to(dtype) if dtype else t).clone().requires_grad_(True) for n, t in x.items() if t is not None}


def args(xs, x):
    """((q, k, v), {g, lam, beta}) from the leaves xs of the inputs x (None where x has none)."""
    vals = {n: xs.get(n) if x[n] is not None else None for n in NAMES}
    return (vals["q"], vals["k"], vals["v"]), {n: vals[n] for n in ("g", "lam", "beta")}


def _dbl(a):
    return tuple(t.double() for t in a[0]), {n: None if t is None else t.double() for n, t in a[1].items()}


def call(fn, a, **extra):
    """fn(q, k, v, *, gates..., extra...): tensors positionally, gates as keywords (the kernels' contract)."""
    return fn(*a[0], **a[1], **extra)


def sl(x, a, b):
    return {n: (None if t is None else t[:, a:b]) for n, t in x.items()}


CASES = [("dot", "none"), ("dot", "scalar"), ("delta", "none"), ("delta", "scalar")]
SHAPES = [(45, 8, 16), (45, 16, 3), (64, 16, 16), (64, 8, 4), (45, 8, 1)]  # (T, C, levels)


@pytest.mark.parametrize("T,C,L", SHAPES)
@pytest.mark.parametrize("bias,gate", CASES)
def test_three_forms_agree_outputs_states_grads(bias, gate, T, C, L):
    x = make_inputs(T, bias, gate, L)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(B, T, H, V, generator=gen)

    # chunk (fp32) vs the quadratic masked form (fp64): outputs and every input gradient
    xc = leaves(x)
    o, S = call(chunk_log_linear, args(xc, x), output_final_state=True, chunk_size=C)
    dS = torch.randn(S["levels"].shape, generator=gen)
    ((o * do).sum() + (S["levels"] * dS).sum()).backward()
    assert o.shape == (B, T, H, V) and o.dtype == torch.float32
    assert S["pos"] == T and S["levels"].shape == (B, H, levels_in_use(T, L), K, V)
    assert S["levels"].dtype == torch.float32

    xq = leaves(x, torch.float64)
    o_q = call(naive_quadratic_log_linear, args(xq, x))
    (o_q * do.double()).sum().backward()
    assert rel(o, o_q) <= TOL

    # recurrent (fp64) with the same loss on outputs and final level states
    xr = leaves(x, torch.float64)
    o_r, S_r = call(naive_recurrent_log_linear, args(xr, x), output_final_state=True)
    ((o_r * do.double()).sum() + (S_r["levels"] * dS.double()).sum()).backward()
    assert rel(o_r, o_q) <= 1e-10
    assert rel(S["levels"], S_r["levels"]) <= TOL

    xc2 = leaves(x)
    o2, _ = call(chunk_log_linear, args(xc2, x), chunk_size=C)
    (o2 * do).sum().backward()
    for n in xq:
        assert torch.isfinite(xc[n].grad).all(), n
        assert rel(xc2[n].grad, xq[n].grad) <= TOL, (n, rel(xc2[n].grad, xq[n].grad))
        assert rel(xc[n].grad, xr[n].grad) <= TOL, (n, rel(xc[n].grad, xr[n].grad))


@pytest.mark.parametrize("bias", ["dot", "delta"])
def test_strong_decay(bias):
    T, C, L = 45, 16, 16
    x = make_inputs(T, bias, "scalar_strong", L, seed=3)
    o = call(chunk_log_linear, args(x, x), chunk_size=C)[0]
    o_q = call(naive_quadratic_log_linear, _dbl(args(x, x)))
    assert torch.isfinite(o).all() and rel(o, o_q) <= TOL


@pytest.mark.parametrize("bias,gate", CASES)
def test_lambda_one_is_the_ordinary_kernel(bias, gate):
    T, C, L = 45, 8, 16
    x = make_inputs(T, bias, gate, L)
    x["lam"] = torch.ones_like(x["lam"])
    o, S = call(chunk_log_linear, args(x, x), output_final_state=True, chunk_size=C)
    if bias == "dot":
        o_ref, S_ref = chunk_gla(x["q"], x["k"], x["v"], g=x["g"], output_final_state=True, chunk_size=C)
    else:
        o_ref, S_ref = chunk_delta_rule(x["q"], x["k"], x["v"], beta=x["beta"], g=x["g"], output_final_state=True,
                                        chunk_size=C)
    assert rel(o, o_ref) <= TOL
    assert rel(S["levels"].sum(2), S_ref) <= TOL  # the sum of the level states is the ordinary state
    # and the hierarchy matters once lambda is not constant (guards against a vacuous mask)
    x2 = make_inputs(T, bias, gate, L)
    assert rel(call(chunk_log_linear, args(x2, x2), chunk_size=C)[0], o_ref) > 1e-2


@pytest.mark.parametrize("bias,gate", CASES)
def test_step_decode_equals_forward(bias, gate):
    T, C, L = 37, 8, 5  # L = 5 saturates: the clamped top level absorbs old tokens
    x = make_inputs(T, bias, gate, L)
    o_ref, S_ref = call(chunk_log_linear, args(x, x), output_final_state=True, chunk_size=C)
    state, outs = None, []
    for t in range(T):
        xt = {n: (None if v is None else v[:, t]) for n, v in x.items()}
        o_t, state = call(log_linear_step, args(xt, xt), state=state)
        assert state["pos"] == t + 1 and state["levels"].shape[2] == levels_in_use(t + 1, L)
        assert o_t.shape == (B, H, V) and state["levels"].dtype == torch.float32
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o_ref) <= TOL
    assert rel(state["levels"], S_ref["levels"]) <= TOL


@pytest.mark.parametrize("C", [4, 16])
@pytest.mark.parametrize("bias,gate", [("dot", "scalar"), ("delta", "scalar"), ("delta", "none")])
def test_prefill_continue_and_step(bias, gate, C):
    """Split points off the chunk grid: chunk + chunk(initial_state) + steps == one forward."""
    T, L = 60, 16
    x = make_inputs(T, bias, gate, L, seed=4)
    o_ref, S_ref = call(naive_recurrent_log_linear, args(x, x), output_final_state=True)
    for p1, p2 in [(1, 2), (13, 31), (16, 50), (27, 28)]:
        a = sl(x, 0, p1)
        o1, s = call(chunk_log_linear, args(a, a), output_final_state=True, chunk_size=C)
        b = sl(x, p1, p2)
        o2, s = call(chunk_log_linear, args(b, b), initial_state=s, output_final_state=True, chunk_size=C)
        outs = [o1, o2]
        for t in range(p2, T):
            xt = {n: (None if v is None else v[:, t]) for n, v in x.items()}
            o_t, s = call(log_linear_step, args(xt, xt), state=s)
            outs.append(o_t[:, None])
        assert rel(torch.cat(outs, 1), o_ref) <= TOL, (p1, p2)
        assert s["pos"] == T and rel(s["levels"], S_ref["levels"]) <= TOL, (p1, p2)


@pytest.mark.parametrize("bias,gate", CASES)
def test_slot_step_rows_at_different_positions(bias, gate):
    """log_linear_step_slots == log_linear_step run per row, rows advancing at different times
    (a row steps only where its mask is set), with the levels padded to L slots."""
    T, L, R = 40, 5, 3  # L = 5 saturates; R rows
    gen = torch.Generator().manual_seed(7)
    x = make_inputs(T, bias, gate, L, seed=7)
    x = {n: (None if t is None else torch.cat([t, t.flip(1)], 0)[:R]) for n, t in x.items()}  # R rows
    active = torch.rand(R, T, generator=gen) < torch.tensor([0.9, 0.5, 0.2])[:, None]
    levels = torch.zeros(R, H, L, K, V)
    pos = torch.zeros(R, dtype=torch.long)
    per_row = [None] * R
    for t in range(T):
        xt = {n: (None if v is None else v[:, t]) for n, v in x.items()}
        o, new = call(log_linear_step_slots, args(xt, xt), levels=levels, pos=pos)
        sel = active[:, t]
        levels = torch.where(sel[:, None, None, None, None], new, levels)
        pos = pos + sel.long()
        for r in range(R):
            if not sel[r]:
                continue
            xr = {n: (None if v is None else v[r: r + 1]) for n, v in xt.items()}
            o_r, per_row[r] = call(log_linear_step, args(xr, xr), state=per_row[r])
            assert rel(o[r: r + 1], o_r) <= TOL, (t, r)
    for r in range(R):
        n = levels_in_use(int(pos[r]), L)
        assert per_row[r]["pos"] == int(pos[r])
        assert rel(levels[r, :, :n], per_row[r]["levels"][0]) <= TOL
        assert torch.count_nonzero(levels[r, :, n:]) == 0  # slots beyond those in use stay empty


def test_initial_state_gradients():
    """Gradients reach the initial level states (chunk vs recurrent)."""
    T, C, L = 29, 8, 16
    x = make_inputs(40, "delta", "scalar", L, seed=5)
    pre = sl(x, 0, 11)
    _, s0 = call(naive_recurrent_log_linear, args(pre, pre), output_final_state=True)
    post = sl(x, 11, 11 + T)
    do = torch.randn(B, T, H, V)
    grads = []
    for fn, kw in ((chunk_log_linear, {"chunk_size": C}), (naive_recurrent_log_linear, {})):
        lev = s0["levels"].clone().requires_grad_(True)
        o, _ = call(fn, args(post, post), initial_state={"levels": lev, "pos": 11}, **kw)
        (o * do).sum().backward()
        grads.append(lev.grad)
    assert grads[1].abs().max() > 0
    assert rel(grads[0], grads[1]) <= TOL


def test_level_rule_is_a_fenwick_partition():
    for t in range(70):
        buckets = {}
        for s in range(t + 1):
            buckets.setdefault(level_of(t, s), []).append(s)
        assert buckets[0] == [t]
        for lvl, members in buckets.items():
            if lvl:
                m = lvl - 1
                assert (t >> m) & 1, (t, lvl)  # level m+1 exists iff bit m of t is set
                assert len(members) == 2 ** m and members == list(range(members[0], members[0] + 2 ** m))
                assert members[0] % 2 ** m == 0  # aligned block
        assert len(buckets) == 1 + bin(t).count("1")
        # the level of a fixed key never decreases as the query advances (merges only go up)
        assert all(level_of(t + 1, s) >= level_of(t, s) for s in range(t + 1))


def test_levels_in_use_grows_as_log2():
    for n in range(0, 12):
        assert levels_in_use(2 ** n, 64) == n + 1
    for T in (1, 2, 3, 5, 7, 9, 100, 1000, 4097):
        assert levels_in_use(T, 64) == (T - 1).bit_length() + 1 <= T.bit_length() + 1
    assert levels_in_use(0, 16) == 0
    assert levels_in_use(10 ** 9, 16) == 16  # saturates at `levels`
    # the decoding state holds exactly that many slots, 1 + popcount(T-1) of them non-empty
    L, Bs, Hs = 16, 1, 1
    gen = torch.Generator().manual_seed(6)
    state = None
    for t in range(130):
        q, k = torch.randn(Bs, Hs, K, generator=gen), torch.randn(Bs, Hs, K, generator=gen)
        v = torch.randn(Bs, Hs, V, generator=gen)
        _, state = log_linear_step(q, k, v, lam=torch.ones(Bs, Hs, L), state=state)
        n_tok = t + 1
        levels = state["levels"]
        assert levels.shape[2] == levels_in_use(n_tok, L) == (n_tok - 1).bit_length() + 1
        nonempty = int((levels.flatten(3).abs().amax(-1) > 0).sum())
        assert nonempty == 1 + bin(n_tok - 1).count("1"), n_tok
    # with few levels the state stops growing
    state = None
    for t in range(40):
        _, state = log_linear_step(q, k, v, lam=torch.ones(Bs, Hs, 3), state=state)
    assert state["levels"].shape[2] == 3


def test_chunk_scale_and_errors():
    T, L = 20, 8
    x = make_inputs(T, "dot", "scalar", L)
    o1 = call(chunk_log_linear, args(x, x), chunk_size=8, scale=0.3)[0]
    o2 = call(naive_quadratic_log_linear, args(x, x), scale=0.3)
    assert rel(o1, o2) <= TOL
    with pytest.raises(ValueError):
        call(chunk_log_linear, args(x, x), chunk_size=12)
    with pytest.raises(ValueError):  # vector gates are not log-linear Mamba2
        chunk_log_linear(x["q"], x["k"], x["v"], g=torch.zeros(B, T, H, K), lam=x["lam"])
    with pytest.raises(ValueError):  # a state that does not fit its position
        bad = {"levels": torch.zeros(B, H, 2, K, V), "pos": 9}
        call(chunk_log_linear, args(x, x), initial_state=bad, chunk_size=8)
