"""Feature maps `taylor2` (Based, Arora et al. 2024, https://arxiv.org/abs/2402.18668) and `hedgehog` (Zhang et
al. 2024, https://arxiv.org/abs/2402.04347), checked against their papers' formulas:

    taylor2   phi(q).phi(k) = 1 + u + u^2 / 2,  u = q.k / sqrt(d)   (the 2nd-order Taylor expansion of exp(u))
    hedgehog  phi(x) = [softmax(x W_h), softmax(-x W_h)] per head, one W_h for queries and one for keys, W_h = I
              at init; a linear attention with the sum normaliser over it, token by token, with the gradients of
              the input and of both maps' weights.
"""
from __future__ import annotations

import pytest
import torch

from archspace.blocks.config import InvalidConfig, MemoryConfig
from archspace.blocks.feature_map import FEATURE_MAP
from archspace.blocks.memory import MemoryMixer

from blocks_testutil import rel_err, rounding_tol


def test_taylor2_kernel_is_the_second_order_expansion_of_exp():
    d = 8
    q, k = torch.randn(5, 3, d, dtype=torch.float64), torch.randn(5, 3, d, dtype=torch.float64)
    phi = FEATURE_MAP["taylor2"]
    u = (q * k).sum(-1) / d ** 0.5
    assert torch.allclose((phi(q) * phi(k)).sum(-1), 1 + u + u ** 2 / 2, rtol=1e-12, atol=0)
    assert phi(q).shape[-1] == 1 + d + d * d
    assert ((phi(q) * phi(k)).sum(-1) >= 0.5 - 1e-12).all()  # ((1 + u)^2 + 1) / 2: never near 0


def test_hedgehog_map_and_identity_init():
    cfg = MemoryConfig(12, 2, 6, 5, feature_map="hedgehog", normalizer="sum", norm="none")
    mod = MemoryMixer(cfg)
    assert cfg.state_key_dim == 12 and torch.equal(mod.q_fmap[0], torch.eye(6)) and torch.equal(mod.k_fmap[1], torch.eye(6))
    x = torch.randn(3, 2, 6, dtype=torch.float64)
    phi = FEATURE_MAP["hedgehog"].apply(mod.double(), cfg, x, "q")
    assert torch.allclose(phi, torch.cat([x.softmax(-1), (-x).softmax(-1)], -1), rtol=1e-12, atol=0)
    narrow = MemoryConfig(12, 2, 6, 5, feature_map="hedgehog", feature_dim=4, normalizer="sum")
    assert narrow.state_key_dim == 8 and MemoryMixer(narrow).k_fmap.shape == (2, 6, 4)


@pytest.mark.parametrize("path", ["chunk", "reference"])
def test_hedgehog_linear_attention_matches_the_formula(path):
    D, H, K, V, B, T = 12, 2, 6, 5, 2, 11
    cfg = MemoryConfig(D, H, K, V, feature_map="hedgehog", normalizer="sum", norm="none", path=path, chunk_size=4)
    mods = []
    for _ in range(2):
        torch.manual_seed(1)
        m = MemoryMixer(cfg)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.3 * torch.randn_like(p))
        mods.append(m.double())
    mod, ref = mods
    x = torch.randn(B, T, D, dtype=torch.float64)
    w = torch.randn(B, T, D, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]

    def phi(t, W):  # [B, T, H, K] -> [B, T, H, 2K]
        z = torch.einsum("bthk,hkf->bthf", t, W)
        return torch.cat([z.softmax(-1), (-z).softmax(-1)], -1)

    xr = xs[1]
    q = phi((xr @ ref.q_proj.weight.T).view(B, T, H, K), ref.q_fmap)
    k = phi((xr @ ref.k_proj.weight.T).view(B, T, H, K), ref.k_fmap)
    v = (xr @ ref.v_proj.weight.T).view(B, T, H, V)
    outs = []
    for t in range(T):
        a = torch.einsum("bhf,bshf->bhs", q[:, t], k[:, : t + 1])  # phi(q_t).phi(k_s), s <= t
        outs.append(torch.einsum("bhs,bshv->bhv", a, v[:, : t + 1]) / a.sum(-1)[..., None])
    y_ref = torch.stack(outs, 1).flatten(-2) @ ref.o_proj.weight.T
    y = mod(xs[0])
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    tol = rounding_tol(B * T * T * 2 * K * (V + 1))
    assert rel_err(y, y_ref) <= rounding_tol(T * 2 * K * (V + 1))
    assert rel_err(xs[0].grad, xs[1].grad) <= tol
    for name in ("q_fmap", "k_fmap", "q_proj.weight", "k_proj.weight", "v_proj.weight"):
        g, g_ref = mod.get_parameter(name).grad, ref.get_parameter(name).grad
        assert g.abs().max() > 0 and rel_err(g, g_ref) <= tol, name


def test_sum_normaliser_needs_a_positive_map_and_a_hebbian_write():
    with pytest.raises(InvalidConfig, match="feature_map 'identity'") as e:
        MemoryConfig(8, 2, 4, 4, normalizer="sum")
    assert e.value.key == "feature_map"
    with pytest.raises(InvalidConfig, match="bias: dot") as e:
        MemoryConfig(8, 2, 4, 4, bias="l2", key_norm="l2", feature_map="elu1", normalizer="sum")
    assert e.value.key == "normalizer"
    for name in ("elu1", "taylor2", "hedgehog"):
        MemoryConfig(8, 2, 4, 4, feature_map=name, normalizer="sum")


def test_decoding_equals_the_forward_for_the_new_maps():
    for kw in (dict(feature_map="taylor2", normalizer="sum", norm="none"),
               dict(feature_map="hedgehog", normalizer="sum", retention="scalar", output_gate=True, short_conv=3),
               dict(feature_map="taylor2", retention="vector", output_gate=True)):
        mod = MemoryMixer(MemoryConfig(16, 2, 4, 6, chunk_size=4, **kw))
        x = torch.randn(2, 9, 16)
        with torch.no_grad():
            y, final = mod(x, return_state=True)
            state, outs = None, []
            for t in range(9):
                y_t, state = mod.step(x[:, t], state)
                outs.append(y_t)
        assert rel_err(torch.stack(outs, 1), y) <= rounding_tol(9 * mod.cfg.state_key_dim * mod.cfg.state_value_dim), kw
        assert rel_err(state["memory"], final["memory"]) <= rounding_tol(9 * mod.cfg.state_key_dim), kw
