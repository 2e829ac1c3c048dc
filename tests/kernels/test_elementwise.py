"""The elementwise (vector) memory kernels against its recurrence written here, fp64 oracle, fp32 kernels:
m_t = a_t (1 - b_t k_t^2) m_{t-1} + b_t k_t v_t, o_t = q_t m_t; Longhorn's exact step for a vector memory."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archspace.kernels.elementwise import chunk_elementwise, elementwise_step, naive_recurrent_elementwise

B, T, H, V = 2, 19, 2, 6
TOL = 1e-5  # the kernels compute in fp32: ~100 ulps accumulated over T steps, as the other kernel tests


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _inputs(write: str, gate: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    k = F.normalize(r(B, T, H, V), dim=-1) if write != "implicit" else r(B, T, H, V)
    x = {"q": r(B, T, H, V), "k": k, "v": r(B, T, H, V), "initial_state": r(B, H, V)}
    if write == "l2":
        x["beta"] = torch.sigmoid(r(B, T, H))
    elif write == "l2_channel":
        x["beta"] = torch.sigmoid(r(B, T, H, V))
    elif write == "implicit":
        x["eps"] = torch.sigmoid(r(B, T, H, V))
    if gate == "scalar":
        x["g"] = F.logsigmoid(r(B, T, H) + 2.0)
    elif gate == "vector":
        x["g"] = F.logsigmoid(r(B, T, H, V) + 2.0)
    return x


def _oracle(x):
    d = {n: t.double() for n, t in x.items()}
    m, outs = d["initial_state"], []
    for t in range(T):
        k, v = d["k"][:, t], d["v"][:, t]
        a = torch.ones_like(k) if "g" not in d else torch.exp(d["g"][:, t])
        a = a[..., None] if a.dim() == 2 else a
        if "eps" in d:  # argmin (m - a m_prev)^2 + eps (k m - v)^2, per channel
            e = d["eps"][:, t]
            m = (a * m + e * k * v) / (1.0 + e * k * k)
        elif "beta" in d:
            b = d["beta"][:, t]
            b = b[..., None] if b.dim() == 2 else b
            m = a * (1.0 - b * k * k) * m + b * k * v
        else:
            m = a * m + k * v
        outs.append(d["q"][:, t] * m)
    return torch.stack(outs, 1), m


@pytest.mark.parametrize("gate", ["none", "scalar", "vector"])
@pytest.mark.parametrize("write", ["dot", "l2", "l2_channel", "implicit"])
def test_chunk_loop_and_step_equal_the_recurrence(write, gate):
    x = _inputs(write, gate)
    o_ref, m_ref = _oracle(x)
    do = torch.randn(o_ref.shape)
    grads = []
    for fn, kw in ((chunk_elementwise, {"chunk_size": 8}), (naive_recurrent_elementwise, {})):
        xs = {n: t.clone().requires_grad_(True) for n, t in x.items()}
        gates = {n: t for n, t in xs.items() if n not in ("q", "k", "v", "initial_state")}
        o, m = fn(xs["q"], xs["k"], xs["v"], **gates, initial_state=xs["initial_state"], output_final_state=True,
                  **kw)
        assert rel(o, o_ref) <= TOL and rel(m, m_ref) <= TOL
        ((o * do).sum() + m.sum()).backward()
        grads.append({n: t.grad for n, t in xs.items()})
    for n in grads[0]:
        assert grads[0][n].abs().max() > 0, n
        assert rel(grads[0][n], grads[1][n]) <= TOL, n
    m, steps = x["initial_state"], []
    gates = {n: t for n, t in x.items() if n not in ("q", "k", "v", "initial_state")}
    for t in range(T):
        o_t, m = elementwise_step(x["q"][:, t], x["k"][:, t], x["v"][:, t], **{n: g[:, t] for n, g in gates.items()},
                                  state=m)
        steps.append(o_t)
    assert rel(torch.stack(steps, 1), o_ref) <= TOL and rel(m, m_ref) <= TOL
