"""The conv token mixer, Zoology's BaseConv (Arora et al. 2023, https://arxiv.org/abs/2312.04927; zoology
mixers/base_conv.py): y_t = (b + sum_j w_j u_{t-k+1+j}) * (W u_t + c) + u_t, a depthwise causal convolution with
a bias and no activation, gating a linear projection, plus the input. Checked against that formula written token
by token, with every gradient; decoding equals the forward; the accounting counts the module."""
from __future__ import annotations

import torch

from archspace.blocks.config import ConvConfig
from archspace.blocks.conv import ConvMixer
from archspace.blocks.registry import block_cost

from blocks_testutil import rel_err, rounding_tol

D, B, T, KS = 6, 2, 9, 3


def _formula(m: ConvMixer, u: torch.Tensor) -> torch.Tensor:
    w, b = m.conv.weight[:, 0], m.conv.bias  # [D, k], [D]
    ys = []
    for t in range(T):
        acc = b.clone()
        for j in range(KS):
            s = t - KS + 1 + j
            if s >= 0:
                acc = acc + w[:, j] * u[:, s]
        ys.append(acc * (u[:, t] @ m.proj.weight.T + m.proj.bias) + u[:, t])
    return torch.stack(ys, 1)


def test_base_conv_matches_its_formula_and_decodes():
    torch.manual_seed(0)
    m = ConvMixer(ConvConfig(D, short_conv=KS)).double()
    with torch.no_grad():
        m.proj.bias.normal_()
    u = torch.randn(B, T, D, dtype=torch.float64)
    us = [u.clone().requires_grad_(True) for _ in range(2)]
    w = torch.randn(B, T, D, dtype=torch.float64)
    y, y_ref = m(us[0]), _formula(m, us[1])
    assert rel_err(y, y_ref) <= rounding_tol(KS + D, torch.float64)
    grads = torch.autograd.grad((y * w).sum(), [us[0], *m.parameters()])
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [us[1], *m.parameters()])
    for g, g_ref in zip(grads, grads_ref):
        assert g.abs().max() > 0 and rel_err(g, g_ref) <= rounding_tol(B * T * (KS + D), torch.float64)
    with torch.no_grad():
        state, outs = None, []
        for t in range(T):
            y_t, state = m.step(u[:, t], state)
            outs.append(y_t)
        _, final = m(u, return_state=True)
    assert rel_err(torch.stack(outs, 1), y) <= rounding_tol(KS + D, torch.float64)
    assert torch.equal(state["conv"], final["conv"])


def test_base_conv_cost_counts_the_module():
    cfg = ConvConfig(16, short_conv=3)
    cost = block_cost(cfg, 64)
    assert cost.params == sum(p.numel() for p in ConvMixer(cfg).parameters()) == 16 * 3 + 16 + 16 * 16 + 16
    assert cost.state == 16 * 2
