"""Retention `hgrn2`: HGRN2 (Qin et al. 2024, https://arxiv.org/abs/2404.07904), GLA with the key tied to the forget
gate, against the recurrence written here from the paper (in probability space, no logs):

    f_t = l + (1 - l) sigmoid(W_f x_t)           [H, K], l the lower bound (0: none)
    S_t = Diag(f_t) S_{t-1} + (1 - f_t) v_t^T,     o_t = K**-0.5 S_t^T q_t,  q_t = silu(W_q x_t)

plus decoding, accounting, a Mixture-of-Memories, Titans and the grammar."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.config import AttentionConfig, MemoryConfig, TitansConfig
from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.presets import memory_preset
from archspace.blocks.titans import TitansMixer

from blocks_testutil import check_against_formula, check_decoding, check_mom, design_error, perturbed, state_numel

D, H, K, V = 24, 2, 6, 5


def _cfg(**kw) -> MemoryConfig:
    return memory_preset("hgrn2", D, H, K, V, chunk_size=8, **kw)


def _formula(mod, x):
    cfg = mod.cfg
    B, T = x.shape[:2]
    q = F.silu(mod.q_proj(x)).view(B, T, H, K)
    v = mod.v_proj(x).view(B, T, H, V)
    lb = cfg.lower_bound
    f = lb + (1 - lb) * torch.sigmoid(mod.f_proj(x)).view(B, T, H, K)
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S = f[:, t, :, :, None] * S + (1 - f[:, t])[..., None] * v[:, t, :, None, :]
        outs.append(K ** -0.5 * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return output(mod, cfg, torch.stack(outs, 1), x)


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("lower_bound", [0.0, 0.6])
def test_mixer_equals_the_recurrence(lower_bound, path):
    check_against_formula(perturbed(MemoryMixer(_cfg(lower_bound=lower_bound, path=path))), _formula)


def test_decoding_equals_the_forward():
    check_decoding(perturbed(MemoryMixer(_cfg(lower_bound=0.3, short_conv=3))))


def test_key_is_tied_to_the_gate_and_exact_near_one():
    mod = MemoryMixer(_cfg(lower_bound=0.9))
    assert not hasattr(mod, "k_proj")
    x = torch.randn(2, 7, D)
    _, k, _, gates, _ = mod._inputs(x, None, step=False)
    f = gates["g"].exp()
    assert (f > 0.9).all() and torch.allclose(k, 1 - f)
    # near one, 1 - exp(g) cancels; -expm1(g) keeps the relative precision of g
    g = torch.tensor([-1e-7, -1e-5])
    assert torch.allclose(-torch.expm1(g), -g, rtol=1e-6)


def test_costs():
    cfg = _cfg(short_conv=3)
    mod = MemoryMixer(cfg)
    cost = MemoryMixer.cost(cfg, 11)
    assert cost.params == sum(p.numel() for p in mod.parameters())
    # q, f, v and o projections, the q and v convs, the per-head norm; no W_k
    HK, HV = H * K, H * V
    assert cost.params == D * HK + D * HK + D * HV + HV * D + 3 * (HK + HV) + HV
    # FLOPs: linears, convs, per head decay K*V + write 2*K*V + read 2*K*V
    assert cost.flops_per_token == 2 * (2 * D * HK + 2 * D * HV) + 2 * 3 * (HK + HV) + H * 5 * K * V
    with torch.no_grad():
        _, st = mod(torch.randn(1, 4, D), return_state=True)
    assert state_numel(st) == cost.state == H * K * V + 2 * (HK + HV)


def test_mixture_of_memories_and_titans():
    mem = _cfg(lower_bound=0.2, short_conv=3)
    for extra in ({}, {"share_kv": True, "shared_memory": False}):
        check_mom(mem, **extra)
    check_decoding(perturbed(TitansMixer(TitansConfig(mem, AttentionConfig(D, 2, 12), variant="mac", segment=5))),
                   T=11)


def test_grammar(tmp_path):
    assert design_error(tmp_path, "{preset: hgrn2, lower_bound: 0.5}") is None
    err = design_error(tmp_path, "{preset: hgrn2, lower_bound: 1.0}")
    assert err is not None and "lower_bound" in str(err)
    err = design_error(tmp_path, "{preset: hgrn2, bias: l2, key_norm: l2}")
    assert err is not None and err.kind == "incompatible" and "tied" in str(err)
