"""Each memory preset against its reference layer, written here straight from the paper and the reference code
named in blocks/presets.py, in the reference's order of activations, norms and gates (issue 16: preset fidelity):

    deltanet         q, k = l2(silu(conv(W x))), v = silu(conv(W_v x)) (the conv's SiLU, once), b = sigmoid(W_b x)
                     S_t = S_{t-1} - b_t k_t (k_t^T S_{t-1}) + b_t k_t v_t^T, o_t = K^-0.5 S_t^T q_t,
                     y = W_o rmsnorm_head(o)
    gated_deltanet   as deltanet with S_{t-1} decayed by a_t = exp(-exp(A_log) softplus(W_a x + dt_bias)),
                     y = W_o (rmsnorm_head(o) * silu(W_g x))
    mamba2           x, B, C = silu(conv(W x) + b_conv) (v, k, q here), dt = softplus(W_dt x + dt_bias),
                     S_t = exp(-exp(A_log) dt_t) S_{t-1} + dt_t B_t x_t^T, y_t = S_t^T C_t (no scale),
                     out = W_o rmsnorm_all_heads(y * silu(W_z x))
    linear_attention o_t = sum_s phi(q_t).phi(k_s) v_s / sum_s phi(q_t).phi(k_s), phi = elu + 1, y = W_o o
    based            the same with phi Based's Taylor map, 1 head, q, k of width d' = 16 (no conv, no norm)

Outputs, final states and the gradients of the input and of every parameter, the module run in fp64 (its kernels
keep an fp32 state), so the tolerances are those of fp32 rounding over the sums involved."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.memory import MemoryMixer
from archspace.blocks.presets import memory_preset

from blocks_testutil import rel_err, rounding_tol

D, H, K, V, B, T = 16, 2, 4, 5, 2, 13


def _conv(x, w, b=None):
    """Causal depthwise conv: x [B, T, C], w [C, 1, k] -> [B, T, C] (zeros before the first token)."""
    k = w.shape[-1]
    y = F.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0)), w, b, groups=x.shape[-1])
    return y.transpose(1, 2)


def _heads(t, width):
    return t.view(*t.shape[:-1], -1, width)


def _rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _l2(x):
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def _delta_reference(m: MemoryMixer, x, gated: bool):
    q = _l2(_heads(F.silu(_conv(x @ m.q_proj.weight.T, m.q_conv.weight)), K))
    k = _l2(_heads(F.silu(_conv(x @ m.k_proj.weight.T, m.k_conv.weight)), K))
    v = _heads(F.silu(_conv(x @ m.v_proj.weight.T, m.v_conv.weight)), V)
    beta = torch.sigmoid(x @ m.b_proj.weight.T)
    if gated:
        a = torch.exp(-torch.exp(m.A_log) * F.softplus(x @ m.dt_proj.weight.T + m.dt_bias))
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        if gated:
            S = a[:, t, :, None, None] * S
        kt, vt, bt = k[:, t], v[:, t], beta[:, t, :, None, None]
        S = S - bt * kt[..., None] * torch.einsum("bhk,bhkv->bhv", kt, S)[:, :, None] + bt * kt[..., None] * vt[:, :, None]
        outs.append(K ** -0.5 * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    o = _rms(torch.stack(outs, 1), m.o_norm.weight).flatten(-2)
    if gated:
        o = o * F.silu(x @ m.g_proj.weight.T)
    return o @ m.o_proj.weight.T, S


def _mamba2_reference(m: MemoryMixer, x):
    xs = _heads(F.silu(_conv(x @ m.v_proj.weight.T, m.v_conv.weight, m.v_conv.bias)), V)  # x
    Bm = _heads(F.silu(_conv(x @ m.k_proj.weight.T, m.k_conv.weight, m.k_conv.bias)), K)  # B
    Cm = _heads(F.silu(_conv(x @ m.q_proj.weight.T, m.q_conv.weight, m.q_conv.bias)), K)  # C
    dt = F.softplus(x @ m.dt_proj.weight.T + m.dt_bias)  # [B, T, H]
    a = torch.exp(-torch.exp(m.A_log) * dt)
    S = x.new_zeros(B, H, K, V)
    ys = []
    for t in range(T):
        S = a[:, t, :, None, None] * S + (dt[:, t, :, None, None] * Bm[:, t, :, :, None]) * xs[:, t, :, None, :]
        ys.append(torch.einsum("bhkv,bhk->bhv", S, Cm[:, t]))  # y = S^T C, no scale
    y = torch.stack(ys, 1).flatten(-2) * F.silu(x @ m.g_proj.weight.T)  # gate first ...
    y = _rms(y, m.o_norm.weight.flatten())  # ... then one RMSNorm over all heads
    return y @ m.o_proj.weight.T, S


def _normalised_reference(m: MemoryMixer, x, phi, heads, key_dim, value_dim):
    q = phi(_heads(x @ m.q_proj.weight.T, key_dim))
    k = phi(_heads(x @ m.k_proj.weight.T, key_dim))
    v = _heads(x @ m.v_proj.weight.T, value_dim)
    scores = torch.einsum("bthf,bshf->bhts", q, k)  # phi(q_t).phi(k_s)
    scores = scores * torch.ones(T, T, dtype=x.dtype).tril()
    o = torch.einsum("bhts,bshv->bthv", scores, v) / scores.sum(-1).transpose(1, 2)[..., None]
    S = torch.einsum("bshf,bshv->bhfv", k, v)  # the numerator's state (the denominator's column beside it)
    z = k.sum(1)  # [B, H, F]
    return o.flatten(-2) @ m.o_proj.weight.T, torch.cat([S, z[..., None]], -1)


def _taylor(x):
    d = x.shape[-1]
    outer = torch.einsum("...i,...j->...ij", x, x).flatten(-2)
    return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, outer / math.sqrt(2 * d)], -1)


def _build(name: str, **kw) -> MemoryMixer:
    heads, key_dim, value_dim = (1, 16, D) if name == "based" else (H, K, V)
    torch.manual_seed(0)
    m = MemoryMixer(memory_preset(name, D, heads, key_dim, value_dim, chunk_size=4, **kw))
    with torch.no_grad():  # away from the init (zero biases, unit gains) so every parameter matters
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.double()


REFERENCES = {
    "deltanet": lambda m, x: _delta_reference(m, x, gated=False),
    "gated_deltanet": lambda m, x: _delta_reference(m, x, gated=True),
    "mamba2": _mamba2_reference,
    "linear_attention": lambda m, x: _normalised_reference(m, x, lambda t: F.elu(t) + 1, H, K, V),
    "based": lambda m, x: _normalised_reference(m, x, _taylor, 1, 16, D),
}


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_preset_matches_its_reference_layer(name, path):
    mod = _build(name, path=path)
    ref = _build(name, path=path)
    x = torch.randn(B, T, D, dtype=torch.float64)
    w = torch.randn(B, T, D, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    y, state = mod(xs[0], return_state=True)
    y_ref, S_ref = REFERENCES[name](ref, xs[1])
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    n_state = mod.cfg.state_key_dim * mod.cfg.state_value_dim
    fwd_tol = rounding_tol(T * n_state)  # a read sums T writes of K x V products (fp32 kernels)
    grad_tol = rounding_tol(B * T * T * n_state)
    assert rel_err(y, y_ref) <= fwd_tol
    assert rel_err(state["memory"].double(), S_ref) <= fwd_tol
    assert rel_err(xs[0].grad, xs[1].grad) <= grad_tol
    ref_params = dict(ref.named_parameters())
    for pname, p in mod.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{pname} gets no gradient"
        assert rel_err(p.grad, ref_params[pname].grad) <= grad_tol, pname


def test_deltanet_applies_silu_once():
    """The conv's SiLU is DeltaNet's q/k activation (FLA qk_activation 'silu'): the preset's feature map is the
    identity, so a second SiLU would make the layer differ from the reference above."""
    cfg = memory_preset("deltanet", D, H, K, V)
    assert cfg.short_conv == 4 and cfg.feature_map == "identity"
    twice = _build("deltanet", feature_map="silu")
    x = torch.randn(B, T, D, dtype=torch.float64)
    y_ref, _ = _delta_reference(twice, x, gated=False)
    assert rel_err(twice(x), y_ref) > 1e-3


def test_based_state_and_cost():
    """Based's memory holds (1 + d' + d'^2) x (V + 1) numbers per head (numerator and denominator), and the
    accounting counts exactly the module's parameters."""
    cfg = memory_preset("based", 64, 1, 16, 64)
    mod = MemoryMixer(cfg)
    assert cfg.state_key_dim == 1 + 16 + 256 and cfg.state_value_dim == 65
    cost = MemoryMixer.cost(cfg, 64)
    assert cost.state == 273 * 65
    assert cost.params == sum(p.numel() for p in mod.parameters())
