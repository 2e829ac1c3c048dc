"""Update `householder`: DeltaProduct and Gated DeltaProduct (Siems et al. 2025, https://arxiv.org/abs/2502.10297),
n delta-rule steps per token with their own keys, values and step sizes, against the recurrence written here:

    S_{t,0} = a_t S_{t-1}        (gated: a_t = exp(-exp(A_log) softplus(W_dt x_t + dt_bias)); DeltaProduct: a_t = 1)
    S_{t,j} = (I - b_{t,j} k_{t,j} k_{t,j}^T) S_{t,j-1} + b_{t,j} k_{t,j} v_{t,j}^T,   j = 1..n
    o_t = K**-0.5 S_{t,n}^T q_t,   b = lo + (hi - lo) sigmoid(W_b x), [lo, hi] = beta_range

plus decoding, accounting, a Mixture-of-Memories, Titans and the grammar."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.config import AttentionConfig, MemoryConfig, TitansConfig
from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.presets import PRESETS, memory_preset
from archspace.blocks.titans import TitansMixer

from blocks_testutil import (check_against_formula, check_decoding, check_mom, design_error, perturbed, rel_err,
                             state_numel)

D, H, K, V = 24, 2, 6, 5


def _cfg(preset="gated_deltaproduct", **kw) -> MemoryConfig:
    return memory_preset(preset, D, H, K, V, chunk_size=8, **kw)


def _formula(mod, x):
    cfg = mod.cfg
    n = cfg.n_householder
    B, T = x.shape[:2]
    q, k, v, _, _ = mod._inputs(x, None, step=False)  # k [B, T, n, H, K], v [B, T, n, H, V]
    lo, hi = cfg.beta_range
    b = (lo + (hi - lo) * torch.sigmoid(mod.b_proj(x))).view(B, T, n, H)
    a = None
    if cfg.retention == "scalar":
        a = torch.exp(-torch.exp(mod.A_log) * F.softplus(mod.dt_proj(x) + mod.dt_bias))  # [B, T, H]
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        if a is not None:
            S = a[:, t, :, None, None] * S
        for j in range(n):
            kj, vj, bj = k[:, t, j], v[:, t, j], b[:, t, j, :, None, None]
            S = S - bj * kj[..., None] * torch.einsum("bhk,bhkv->bhv", kj, S)[:, :, None] + bj * kj[..., None] * vj[:, :, None]
        outs.append(K ** -0.5 * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return output(mod, cfg, torch.stack(outs, 1), x)


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("preset,n,beta_range", [("gated_deltaproduct", 2, (0.0, 2.0)), ("deltaproduct", 3, (0.0, 1.0)),
                                                 ("gated_deltaproduct", 1, (0.5, 1.5))])
def test_mixer_equals_the_recurrence(preset, n, beta_range, path):
    mod = MemoryMixer(_cfg(preset, n_householder=n, beta_range=beta_range, path=path))
    check_against_formula(perturbed(mod), _formula)


def test_decoding_equals_the_forward():
    check_decoding(perturbed(MemoryMixer(_cfg())))


def test_presets_and_one_step_is_gated_deltanet():
    assert PRESETS["deltaproduct"]["beta_range"] == [0.0, 2.0] and PRESETS["gated_deltaproduct"]["n_householder"] == 2
    one = MemoryMixer(_cfg(n_householder=1, beta_range=(0.0, 1.0)))
    gdn = MemoryMixer(memory_preset("gated_deltanet", D, H, K, V, chunk_size=8))
    assert [n for n, _ in one.named_parameters()] == [n for n, _ in gdn.named_parameters()]
    gdn.load_state_dict(one.state_dict())
    x = torch.randn(2, 11, D)
    with torch.no_grad():
        assert rel_err(one(x), gdn(x)) <= 1e-6


def test_costs():
    n = 3
    cfg = _cfg(n_householder=n)
    mod = MemoryMixer(cfg)
    cost = MemoryMixer.cost(cfg, 17)
    assert cost.params == sum(p.numel() for p in mod.parameters())
    gdn = memory_preset("gated_deltanet", D, H, K, V)
    HK, HV = H * K, H * V
    # k, v and b projections and the k, v convs are n times as wide
    extra = (n - 1) * (D * HK + D * HV + D * H + 4 * (HK + HV))
    assert cost.params == MemoryMixer.cost(gdn, 17).params + extra
    # FLOPs: the wider linears and convs, and n delta steps (4*K*V each) per head
    extra_flops = (n - 1) * (2 * (D * HK + D * HV + D * H) + 2 * 4 * (HK + HV) + H * 4 * K * V)
    assert cost.flops_per_token == MemoryMixer.cost(gdn, 17).flops_per_token + extra_flops
    with torch.no_grad():
        _, st = mod(torch.randn(1, 5, D), return_state=True)
    assert state_numel(st) == cost.state == H * K * V + 3 * (HK + n * HK + n * HV)
    assert mod.ops.family == "delta_product"


def test_mixture_of_memories_and_titans():
    mem = _cfg()
    for extra in ({}, {"share_kv": True, "top_k": 1, "shared_memory": False}):
        check_mom(mem, **extra)
    check_decoding(perturbed(TitansMixer(TitansConfig(mem, AttentionConfig(D, 2, 12), variant="mac", segment=5))),
                   T=11)


def test_grammar(tmp_path):
    assert design_error(tmp_path, "{preset: deltaproduct, n_householder: 3, beta_range: [0, 1]}") is None
    err = design_error(tmp_path, "{preset: mamba2, update: householder}")
    assert err is not None and err.kind == "incompatible" and "bias: l2" in str(err)
    err = design_error(tmp_path, "{preset: deltaproduct, hierarchy: log_linear}")
    assert err is not None and err.kind == "incompatible" and "token" in str(err)
    err = design_error(tmp_path, "{preset: deltaproduct, n_householder: 0}")
    assert err is not None and "n_householder" in str(err)
