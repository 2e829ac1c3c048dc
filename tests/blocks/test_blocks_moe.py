"""MoE SwiGLU MLP: against a per-token reference, the one-expert special case, aux loss, capacity, cost."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.config import MoEConfig, SwiGLUConfig
from archspace.blocks.moe import MoEMLP
from archspace.blocks.swiglu import SwiGLU

from blocks_testutil import rel_err

D, HID = 32, 24


def _perturb(mod):
    with torch.no_grad():
        mod.router.weight.normal_(0.0, 0.5)  # a decisive router, so top-k choices are well separated


def _reference(mod: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """Loop over tokens and their top-k experts; capacity by per-expert counters in token order."""
    cfg = mod.cfg
    xf = x.reshape(-1, D)
    N = xf.shape[0]
    limit = None if cfg.capacity is None else math.ceil(cfg.capacity * N * cfg.top_k / cfg.experts)
    taken = [0] * cfg.experts
    rows = []
    for n in range(N):
        p = torch.softmax(mod.router.weight @ xf[n], dim=-1)
        chosen = sorted(range(cfg.experts), key=lambda e: -p[e].item())[: cfg.top_k]
        z = sum(p[e] for e in chosen)
        y = torch.zeros(D)
        for e in chosen:
            if limit is not None and taken[e] >= limit:
                continue
            taken[e] += 1
            h = F.silu(mod.w1[e] @ xf[n]) * (mod.w3[e] @ xf[n])
            y = y + (p[e] / z) * (mod.w2[e] @ h)
        rows.append(y)
    return torch.stack(rows).view_as(x)


@pytest.mark.parametrize("experts,top_k,capacity", [(4, 2, None), (6, 1, None), (5, 3, None), (4, 2, 0.75),
                                                    (3, 1, 0.5)])
def test_matches_per_token_reference(experts, top_k, capacity):
    mod = MoEMLP(MoEConfig(D, HID, experts=experts, top_k=top_k, capacity=capacity))
    _perturb(mod)
    x = torch.randn(2, 9, D)
    wgt = torch.randn(2, 9, D)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    grads, ys = [], []
    for fn, xi in ((mod, xs[0]), (lambda z: _reference(mod, z), xs[1])):
        mod.zero_grad()
        y = fn(xi)
        (y * wgt).sum().backward()
        ys.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in mod.named_parameters()})
    assert ys[0].shape == x.shape
    assert rel_err(ys[0], ys[1]) <= 1e-5
    assert rel_err(xs[0].grad, xs[1].grad) <= 1e-5
    for name in grads[1]:
        if name == "router.weight" and top_k == 1:
            # top-1 weight p/p = 1: the output gives the router no gradient (rounding noise only)
            assert grads[0][name].abs().max() < 1e-8 and grads[1][name].abs().max() < 1e-8
            continue
        assert rel_err(grads[0][name], grads[1][name]) <= 1e-5, name
        assert grads[0][name].abs().max() > 0, name


def test_one_expert_is_swiglu():
    mod = MoEMLP(MoEConfig(D, HID, experts=1, top_k=1))
    ref = SwiGLU(SwiGLUConfig(D, HID))
    with torch.no_grad():
        ref.w1.weight.copy_(mod.w1[0])
        ref.w3.weight.copy_(mod.w3[0])
        ref.w2.weight.copy_(mod.w2[0])
    x = torch.randn(3, 5, D)
    assert rel_err(mod(x), ref(x)) <= 1e-6
    assert rel_err(mod(x[:, 0]), ref(x[:, 0])) <= 1e-6  # position-wise: decoding shape [B, D]
    assert mod.aux_loss_raw == pytest.approx(1.0)


def test_aux_loss_formula_and_gradient():
    cfg = MoEConfig(D, HID, experts=4, top_k=2, aux_loss_weight=0.1)
    mod = MoEMLP(cfg)
    _perturb(mod)
    x = torch.randn(2, 7, D)
    mod(x)
    p = torch.softmax(x.reshape(-1, D) @ mod.router.weight.t(), dim=-1)  # [N, E]
    chosen = p.topk(2, dim=-1).indices
    f = torch.stack([(chosen == e).any(-1).float().mean() / 2 for e in range(4)])  # share of the N*k assignments
    raw = 4 * (f * p.mean(0)).sum()
    assert mod.aux_loss.dim() == 0
    assert mod.aux_loss_raw == pytest.approx(raw.item(), rel=1e-6)
    assert mod.aux_loss.item() == pytest.approx(0.1 * raw.item(), rel=1e-6)
    assert abs(mod.aux_loss_raw - 1.0) > 1e-3  # a skewed router is penalised above the uniform value 1
    mod.zero_grad()
    mod.aux_loss.backward()
    assert mod.router.weight.grad.abs().max() > 0
    assert mod.w1.grad is None  # the balance loss reaches the router only
    # refreshed at every forward
    mod(torch.randn(1, 3, D))
    assert mod.aux_loss_raw != pytest.approx(raw.item(), rel=1e-6)


def test_capacity_drops_late_tokens_without_renormalising():
    cfg = MoEConfig(D, HID, experts=2, top_k=1, capacity=0.5)
    mod = MoEMLP(cfg)
    free = MoEMLP(MoEConfig(D, HID, experts=2, top_k=1))
    _perturb(mod)
    free.load_state_dict(mod.state_dict())
    x = torch.randn(12, D)  # N = 12 -> each expert takes ceil(0.5 * 12 * 1 / 2) = 3 tokens
    assert mod.capacity_limit(12) == 3
    with torch.no_grad():
        y, y_free = mod(x), free(x)
        choice = (x @ mod.router.weight.t()).argmax(-1)
    for e in range(2):
        toks = (choice == e).nonzero().flatten().tolist()
        for i, n in enumerate(toks):
            if i < 3:
                assert rel_err(y[n], y_free[n]) <= 1e-6, (e, n)  # first three keep their full output
            else:
                assert torch.all(y[n] == 0), (e, n)  # dropped (top-1: nothing left)
    assert max((choice == e).sum().item() for e in range(2)) > 3  # the cap actually bites
    # top-2 with a cap: a dropped expert's term goes, the other keeps its (un-renormalised) weight
    mod2 = MoEMLP(MoEConfig(D, HID, experts=2, top_k=2, capacity=0.25))  # cap ceil(0.25*12*2/2) = 3
    _perturb(mod2)
    with torch.no_grad():
        y2 = mod2(x)
        p = torch.softmax(x @ mod2.router.weight.t(), -1)
        terms = [p[:, e:e + 1] * (F.silu(x @ mod2.w1[e].t()) * (x @ mod2.w3[e].t())) @ mod2.w2[e].t() for e in range(2)]
    assert rel_err(y2[:3], terms[0][:3] + terms[1][:3]) <= 1e-5
    assert torch.all(y2[3:] == 0)


def test_cost():
    cfg = MoEConfig(D, HID, experts=6, top_k=2)
    c = MoEMLP.cost(cfg, 50)
    mod = MoEMLP(cfg)
    assert c.params == sum(p.numel() for p in mod.parameters()) == D * 6 + 6 * 3 * D * HID
    assert c.active_params == D * 6 + 2 * 3 * D * HID
    assert c.state == 0
    assert c.flops_per_token == 2 * D * 6 + 2 * 6 * D * HID


def test_validation():
    with pytest.raises(ValueError):
        MoEMLP(MoEConfig(D, HID, experts=2, top_k=3))
    with pytest.raises(ValueError):
        MoEMLP(MoEConfig(D, HID, experts=2, top_k=1, capacity=0.0))
