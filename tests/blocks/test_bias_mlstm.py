"""Bias `mlstm` (preset mlstm: with retention `forget`): xLSTM's mLSTM (Beck et al. 2024,
https://arxiv.org/abs/2405.04517, Eq. 19-27), written here from the paper's unstabilised equations in its own
convention (C in R^{V x K}), in fp64:

    i_t = exp(i~_t),  i~_t = c tanh((W_i x_t + b_i) / c)   (xLSTM 7B's soft cap c = 15),   f_t = sigmoid(W_f x_t + b_f)
    C_t = f_t C_{t-1} + i_t v_t k_t^T,   n_t = f_t n_{t-1} + i_t k_t
    h_t = C_t q~_t / max(|n_t^T q~_t|, 1),   q~ = q / sqrt(K)

with the kernels' eps = 1e-6 of the stabilised denominator (eps e^{m_t} in these units, m_t the stabiliser of
Eq. 15), plus
decoding, accounting, Titans and the grammar's refusals."""
from __future__ import annotations

import pytest
import torch

from archspace.blocks.config import AttentionConfig, MemoryConfig, TitansConfig
from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.presets import memory_preset
from archspace.blocks.titans import TitansMixer
from archspace.kernels.mlstm import EPS

from blocks_testutil import check_against_formula, check_decoding, design_error, perturbed, state_numel

D, H, K, V = 24, 2, 6, 5


def _cfg(**kw) -> MemoryConfig:
    return memory_preset("mlstm", D, H, K, V, chunk_size=8, **kw)


def _formula(mod, x):
    cfg = mod.cfg
    B, T = x.shape[:2]
    q, k, v, _, _ = mod._inputs(x, None, step=False)
    z = mod.i_proj(x)
    if z.requires_grad:
        z.retain_grad()
        _LAST["z"] = z
    c = cfg.gate_soft_cap
    i = torch.exp(c * torch.tanh(z / c) if c > 0 else z)  # [B, T, H]
    f = torch.sigmoid(mod.f_proj(x)) if cfg.retention == "forget" else torch.ones_like(i)
    C = x.new_zeros(B, H, V, K)
    n = x.new_zeros(B, H, K)
    m = x.new_zeros(B, H)  # the stabiliser m_t = max(log f_t + m_{t-1}, i~_t) of Eq. 15, only for the eps term
    hs = []
    for t in range(T):
        C = f[:, t, :, None, None] * C + i[:, t, :, None, None] * v[:, t, :, :, None] * k[:, t, :, None, :]
        n = f[:, t, :, None] * n + i[:, t, :, None] * k[:, t]
        m = torch.maximum(torch.log(f[:, t]) + m, torch.log(i[:, t]))
        qt = q[:, t] / K ** 0.5
        # the kernels add eps = 1e-6 to the stabilised denominator: eps e^{m_t} in these units
        den = torch.einsum("bhk,bhk->bh", n, qt).abs().clamp(min=1.0) + EPS * torch.exp(m)
        hs.append(torch.einsum("bhvk,bhk->bhv", C, qt) / den[..., None])
    return output(mod, cfg, torch.stack(hs, 1), x)


_LAST = {}  # the formula's input-gate pre-activations, for the scale of their bias' gradient


def _bias_scale(name):
    """The input gate's bias gets sum_t dL/di~_t, which largely cancels (h does not change when every i~ moves by
    one constant, wherever max(|n^T q|, 1) does not bind): its error is measured against the size of the terms,
    max over heads of sum_t |dL/di~_t|, not against the small sum."""
    return _LAST["z"].grad.abs().sum((0, 1)).max().item() if name == "i_proj.bias" else None


def _mod(**kw):
    mod = perturbed(MemoryMixer(_cfg(**kw)))
    # input gates spread over a few e-folds around e^-2 (the init's -10 makes every i tiny), so that both branches
    # of max(|n^T q|, 1) occur
    with torch.no_grad():
        mod.i_proj.bias.normal_(-2.0, 1.0, generator=torch.Generator().manual_seed(5))
    return mod


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("variant", [{}, {"gate_soft_cap": 0.0}, {"retention": "none"}])
def test_mixer_equals_the_equations(variant, path):
    check_against_formula(_mod(path=path, **variant), _formula, grad_scale=_bias_scale)


def test_decoding_equals_the_forward():
    check_decoding(_mod())


def test_gates_init():
    mod = MemoryMixer(_cfg())
    assert torch.equal(mod.i_proj.bias.detach(), torch.full((H,), -10.0))  # xLSTM 7B's input gate bias
    i = mod._inputs(torch.randn(2, 5, D) * 1e3, None, step=False)[3]["i"]
    assert i.abs().max() <= 15.0  # the soft cap


def test_costs():
    cfg = _cfg()
    mod = MemoryMixer(cfg)
    cost = MemoryMixer.cost(cfg, 12)
    assert cost.params == sum(p.numel() for p in mod.parameters())
    HK, HV = H * K, H * V
    # q, k D*HK; v, g, o D*HV; i and f gates D*H + H each; the per-head norm HV
    assert cost.params == 2 * D * HK + 3 * D * HV + 2 * (D * H + H) + HV
    # per head: decay K*V, write 2*K*V, read 2*K*V, the normaliser's decay, write and read 5*K
    assert cost.flops_per_token == 2 * (2 * D * HK + 3 * D * HV + 2 * D * H) + H * (5 * K * V + 5 * K)
    with torch.no_grad():
        _, st = mod(torch.randn(1, 6, D), return_state=True)
    assert set(st) == {"memory", "normalizer", "stabilizer"}
    assert state_numel(st) == cost.state == H * K * V + H * K + H


def test_titans_memory_as_layer():
    check_decoding(perturbed(TitansMixer(TitansConfig(_cfg(), AttentionConfig(D, 2, 12), variant="mal",
                                                      persistent_tokens=2))), T=9)


def test_grammar(tmp_path):
    assert design_error(tmp_path, "{preset: mlstm, gate_soft_cap: 0}") is None
    for mixer, why in [("{preset: mlstm, retention: vector}", "stabiliser"),
                       ("{preset: mlstm, mom: {memories: 2}}", "normaliser"),
                       ("{preset: mlstm, titans: {variant: mac}}", "normaliser"),
                       ("{preset: mlstm, hierarchy: log_linear}", "not implemented")]:
        err = design_error(tmp_path, mixer)
        assert err is not None and err.kind == "incompatible" and why in str(err), (mixer, str(err))
