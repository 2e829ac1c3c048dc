"""Feature maps `taylor2` (Based, Arora et al. 2024, https://arxiv.org/abs/2402.18668), `poly` (ATLAS, Behrouz et
al. 2025, https://arxiv.org/abs/2505.23735) and `hedgehog` (Zhang et al. 2024, https://arxiv.org/abs/2402.04347),
checked against their papers' formulas:

    taylor2   phi(q).phi(k) = 1 + u + u^2 / 2,  u = q.k / sqrt(d)   (the 2nd-order Taylor expansion of exp(u))
    poly      phi(x) = [c_0, c_1 x, c_2 x (x) x, ...]: every monomial of degree <= p, phi(q).phi(k) =
              sum_i c_i^q c_i^k (q.k)^i, exp's Taylor series at init; over it, deep and matrix memories on the
              mini-batch engine (whose keys it widens) equal their token loops with every gradient
    hedgehog  phi(x) = [softmax(x W_h), softmax(-x W_h)] per head, one W_h for queries and one for keys, W_h = I
              at init; a linear attention with the sum normaliser over it, token by token, with the gradients of
              the input and of both maps' weights.
"""
from __future__ import annotations

import pytest
import torch

import dataclasses
import math

from archspace.blocks.config import InvalidConfig, MemoryConfig
from archspace.blocks.feature_map import FEATURE_MAP
from archspace.blocks.memory import MemoryMixer

from blocks_testutil import check_decoding, rel_err, rounding_tol


def test_taylor2_kernel_is_the_second_order_expansion_of_exp():
    d = 8
    q, k = torch.randn(5, 3, d, dtype=torch.float64), torch.randn(5, 3, d, dtype=torch.float64)
    phi = FEATURE_MAP["taylor2"]
    u = (q * k).sum(-1) / d ** 0.5
    assert torch.allclose((phi(q) * phi(k)).sum(-1), 1 + u + u ** 2 / 2, rtol=1e-12, atol=0)
    assert phi(q).shape[-1] == 1 + d + d * d
    assert ((phi(q) * phi(k)).sum(-1) >= 0.5 - 1e-12).all()  # ((1 + u)^2 + 1) / 2: never near 0


@pytest.mark.parametrize("p", [1, 2, 3])
def test_poly_map_is_every_monomial_up_to_degree_p_with_its_coefficient(p):
    H, d = 2, 3
    cfg = MemoryConfig(8, H, d, 4, feature_map="poly", poly_degree=p)
    mod = MemoryMixer(cfg).double()
    assert cfg.state_key_dim == sum(d ** i for i in range(p + 1))
    init = torch.tensor([1 / math.factorial(i) for i in range(p + 1)], dtype=torch.float64)
    # a_i = 1/i! at init (c_i = 1/sqrt(i!) stored in fp32)
    assert torch.allclose(mod.q_poly[0] * mod.k_poly[1], init, rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    q, k = torch.randn(5, H, d, dtype=torch.float64), torch.randn(5, H, d, dtype=torch.float64)
    fmap = FEATURE_MAP["poly"]
    u = (q * k).sum(-1)  # [5, H]
    at_init = (fmap.apply(mod, cfg, q, "q") * fmap.apply(mod, cfg, k, "k")).sum(-1)
    a0 = (mod.q_poly * mod.k_poly).detach()  # [H, p + 1], 1/i! to fp32 rounding
    assert torch.allclose(at_init, sum(a0[:, i] * u ** i for i in range(p + 1)), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        mod.q_poly.copy_(torch.randn(H, p + 1))
        mod.k_poly.copy_(torch.randn(H, p + 1))
    # the map entry by entry: degree i is c_i times every product x_a x_b ... (i factors), in lexicographic order
    x = torch.randn(5, H, d, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    c = mod.q_poly.detach().clone().requires_grad_(True)
    ref = []
    for i in range(p + 1):
        for idx in torch.cartesian_prod(*[torch.arange(d)] * i).reshape(-1, i) if i else [()]:
            mono = torch.ones(5, H, dtype=torch.float64)
            for a in idx:
                mono = mono * x_ref[..., int(a)]
            ref.append(c[:, i] * mono)
    ref = torch.stack(ref, -1)
    phi = fmap.apply(mod, cfg, x, "q")
    assert phi.shape == (5, H, cfg.state_key_dim) and torch.allclose(phi, ref, rtol=1e-14, atol=0)
    w = torch.randn_like(ref)
    (phi * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-12, atol=0)
    assert torch.allclose(mod.q_poly.grad, c.grad, rtol=1e-12, atol=0)
    # and the kernel with learned coefficients: sum_i c_i^q c_i^k (q.k)^i
    kern = (fmap.apply(mod, cfg, q, "q") * fmap.apply(mod, cfg, k, "k")).sum(-1)
    a = (mod.q_poly * mod.k_poly).detach()  # [H, p + 1]
    assert torch.allclose(kern, sum(a[:, i] * u ** i for i in range(p + 1)), rtol=1e-12, atol=1e-12)


WIDENED_ON_THE_ENGINE = {  # mini-batch memories whose keys a feature map widens
    "mlp-omega-muon-poly": dict(structure="mlp", residual=False, bias="omega", omega_window=3,
                                retention="weight_decay", update="newton_schulz", feature_map="poly"),
    "mlp-momentum-taylor2": dict(structure="mlp", residual=False, bias="l2", retention="weight_decay",
                                 update="momentum", feature_map="taylor2"),
    "mlp-hedgehog-kl": dict(structure="mlp", residual=False, depth=1, bias="l2", retention="kl", update="gd",
                            feature_map="hedgehog", feature_dim=3),
    "matrix-lp-poly3": dict(structure="matrix", bias="lp", p=3.0, retention="scalar", update="gd", feature_map="poly",
                            poly_degree=3),
}


@pytest.mark.parametrize("name", sorted(WIDENED_ON_THE_ENGINE))
def test_widened_keys_on_the_minibatch_engine(name):
    """The memory reads phi(k) (cfg.state_key_dim wide): chunked = token loop (fp64, outputs and every gradient),
    decoding = the forward, the accounting = the module."""
    cfg = MemoryConfig(16, 2, 3, 4, key_norm="l2", short_conv=3, output_gate=True, chunk_size=4,
                       **WIDENED_ON_THE_ENGINE[name])
    assert cfg.minibatch and cfg.state_key_dim > cfg.key_dim
    torch.manual_seed(5)
    chunk = MemoryMixer(cfg)
    with torch.no_grad():
        for p in chunk.parameters():
            p.add_(0.2 * torch.randn_like(p) * (p.abs().mean() + 0.05))
    chunk = chunk.double()
    ref = MemoryMixer(dataclasses.replace(cfg, path="reference")).double()
    ref.load_state_dict(chunk.state_dict())
    T, tol = 11, 1e6 * torch.finfo(torch.float64).eps
    x, w = torch.randn(2, T, 16, dtype=torch.float64), torch.randn(2, T, 16, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = [m(xi) for m, xi in zip((chunk, ref), xs)]
    for y in ys:
        (y * w).sum().backward()
    assert rel_err(ys[0], ys[1]) <= tol and rel_err(xs[0].grad, xs[1].grad) <= tol
    grads = dict(ref.named_parameters())
    for pname, p in chunk.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{pname} gets no gradient"
        assert rel_err(p.grad, grads[pname].grad) <= tol, pname
    check_decoding(chunk, T, tol)
    cost = MemoryMixer.cost(cfg, T)
    assert cost.params == sum(p.numel() for p in chunk.parameters())
    assert cost.state == sum(t[0].numel() for t in chunk.init_state(3).values() if isinstance(t, torch.Tensor))


def test_poly_deep_memory_costs_by_hand():
    """D = 4, one head, K = 2, poly degree 2 (keys 1 + 2 + 4 = 7 wide), V = 2, depth 1 (a 7x2 matrix), gd."""
    cfg = MemoryConfig(4, 1, 2, 2, structure="mlp", depth=1, residual=False, memory_norm="none", bias="l2",
                       retention="none", update="gd", feature_map="poly", norm="none", chunk_size=1)
    assert cfg.state_key_dim == 7
    # params: q, k, v 3 * 4*2 = 24, o 2*4 = 8, b_proj 4, W0 7*2 = 14, q_poly and k_poly 3 + 3 -> 56
    c = MemoryMixer.cost(cfg, 5)
    assert c.params == 24 + 8 + 4 + 14 + 6 == sum(p.numel() for p in MemoryMixer(cfg).parameters())
    assert c.state == 14  # the weights A (no momentum; mini-batch 1: no anchor)
    # FLOPs: linears 2 * (24 + 8 + 4) = 72; memory per token over P = 14 weights reading 7-wide keys: the read 2P,
    # the gradient's forward 2P and outer products 2P (one layer: no back-propagation), no decay -> 84; the map's
    # products are elementwise, not counted (as for every map)
    assert c.flops_per_token == 72.0 + 84.0


def test_widening_maps_are_refused_where_undefined():
    with pytest.raises(InvalidConfig, match="residual memory adds its input: the keys' width after feature_map "
                                            "'poly' \\(7\\)") as e:
        MemoryConfig(4, 1, 2, 2, structure="mlp", bias="l2", update="momentum", feature_map="poly")
    assert e.value.key == "residual"
    for kw in (dict(structure="vector", bias="l2", key_norm="l2", retention="scalar"),
               dict(bias="l2", update="implicit"), dict(bias="rwkv7", retention="rwkv7", key_norm="l2")):
        with pytest.raises(InvalidConfig, match="poly"):
            MemoryConfig(8, 2, 4, 4, feature_map="poly", **kw)


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
