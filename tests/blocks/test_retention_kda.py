"""Retention `kda`: Kimi Delta Attention's decay per key channel (Kimi Linear, https://arxiv.org/abs/2510.26692),
with the delta rule (preset kda) and with a Hebbian write, against the recurrence written here from the report:

    a_t = exp(-exp(A_log) softplus(W_up W_down x_t + dt_bias))              [H, K], per head and key channel
    S_t = (I - b_t k_t k_t^T) Diag(a_t) S_{t-1} + b_t k_t v_t^T             (decay first, then the delta step)
    o_t = K**-0.5 S_t^T q_t

plus decoding, accounting, a Mixture-of-Memories, Titans and the grammar (including the lifted l2 x vector rule)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.config import MemoryConfig, TitansConfig, AttentionConfig
from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.presets import memory_preset
from archspace.blocks.titans import TitansMixer

from blocks_testutil import check_against_formula, check_decoding, check_mom, design_error, perturbed, state_numel

D, H, K, V = 24, 2, 6, 5


def _cfg(**kw) -> MemoryConfig:
    return memory_preset("kda", D, H, K, V, chunk_size=8, gate_rank=4, **kw)


def _formula(mod, x):
    cfg = mod.cfg
    q, k, v, _, _ = mod._inputs(x, None, step=False)  # the shared query / write paths
    B, T = x.shape[:2]
    f = mod.f_up(mod.f_down(x)).view(B, T, H, K)
    a = torch.exp(-torch.exp(mod.A_log)[:, None] * F.softplus(f + mod.dt_bias.view(H, K)))
    lo, hi = cfg.beta_range
    b = lo + (hi - lo) * torch.sigmoid(mod.b_proj(x)) if cfg.bias == "l2" else None
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S = a[:, t, :, :, None] * S  # Diag(a_t) S_{t-1}
        kt, vt = k[:, t], v[:, t]
        if b is None:
            S = S + kt[..., None] * vt[:, :, None]
        else:
            bt = b[:, t, :, None, None]
            S = S - bt * kt[..., None] * torch.einsum("bhk,bhkv->bhv", kt, S)[:, :, None] + bt * kt[..., None] * vt[:, :, None]
        outs.append(K ** -0.5 * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return output(mod, cfg, torch.stack(outs, 1), x)


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("variant", ["kda", "negative_eigenvalues", "hebbian"])
def test_mixer_equals_the_recurrence(variant, path):
    kw = {"beta_range": (0.0, 2.0)} if variant == "negative_eigenvalues" else {}
    if variant == "hebbian":
        kw = {"bias": "dot", "key_norm": "none", "feature_map": "identity"}
    check_against_formula(perturbed(MemoryMixer(_cfg(path=path, **kw))), _formula)


def test_decoding_equals_the_forward():
    check_decoding(perturbed(MemoryMixer(_cfg())))


def test_gate_shape_range_and_init():
    mod = MemoryMixer(_cfg())
    A = torch.exp(mod.A_log.detach())
    assert mod.A_log.shape == (H,) and (A >= 1).all() and (A <= 16).all()
    dt = F.softplus(mod.dt_bias.detach())
    assert mod.dt_bias.shape == (H * K,) and (dt >= 1e-3 * 0.999).all() and (dt <= 0.1 * 1.001).all()
    g = mod._inputs(torch.randn(2, 5, D), None, step=False)[3]["g"]
    assert g.shape == (2, 5, H, K) and (g < 0).all()
    assert mod.ops.family == "delta_rule"


def test_costs():
    cfg = _cfg()
    mod = MemoryMixer(cfg)
    cost = MemoryMixer.cost(cfg, 17)
    assert cost.params == sum(p.numel() for p in mod.parameters())
    gdn = dataclasses.replace(cfg, retention="scalar")
    # KDA replaces Mamba2's dt_proj (D*H) and A_log, dt_bias (H each) by a rank-4 projection to H*K and dt_bias H*K
    assert cost.params == MemoryMixer.cost(gdn, 17).params - (D * H + 2 * H) + (D * 4 + 4 * H * K) + H + H * K
    # recurrence per head: decay K*V, delta step 4*K*V, read 2*K*V = 7*K*V, as Gated DeltaNet's
    lin = 2 * (D * 4 + 4 * H * K) - 2 * D * H
    assert cost.flops_per_token == MemoryMixer.cost(gdn, 17).flops_per_token + lin
    with torch.no_grad():
        _, st = mod(torch.randn(1, 9, D), return_state=True)
    assert state_numel(st) == cost.state == H * K * V + 3 * (2 * H * K + H * V)  # memory + conv(k=4) state


def test_mixture_of_memories_and_titans():
    mem = _cfg()
    check_mom(mem)
    for variant in ("mac", "mag"):
        blk = TitansMixer(TitansConfig(mem, AttentionConfig(D, 2, 12), variant=variant, segment=5,
                                       persistent_tokens=2))
        check_decoding(perturbed(blk), T=11)


def test_grammar(tmp_path):
    assert design_error(tmp_path, "{preset: kda, beta_range: [0, 2]}") is None
    # the delta rule with GLA's vector gate was refused by grammar v1; it is KDA's transition with GLA's gate now
    assert design_error(tmp_path, "{preset: gated_deltanet, retention: vector}") is None
    err = design_error(tmp_path, "{preset: kda, hierarchy: log_linear}")
    assert err is not None and err.kind == "incompatible" and "not implemented" in str(err)
    assert str(err).startswith(f"{tmp_path / 'd.yaml'}:3:")
    err = design_error(tmp_path, "{preset: kda, beta_range: [0, 3]}")
    assert err is not None and "beta_range" in str(err) and ":3:" in str(err)
