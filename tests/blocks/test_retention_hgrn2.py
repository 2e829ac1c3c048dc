"""Retention `hgrn2`: HGRN2 (Qin et al. 2024, https://arxiv.org/abs/2404.07904), GLA with the key tied to the forget
gate, against the recurrence written here from the paper (in probability space, no logs):

    f_t = l + (1 - l) sigmoid(W_f x_t)           [H, K], l the lower bound (0: none)
    S_t = Diag(f_t) S_{t-1} + (1 - f_t) v_t^T,     o_t = K**-0.5 S_t^T q_t,  q_t = silu(W_q x_t)

with l fixed per mixer, or learned and shared across layers (the preset, HGRN2 Sec. 3 / fla's use_lower_bound):
l_i = cumsum(softmax(G, 0))_i - softmax(G, 0)_0 for layer i of a model holding G [n_layers, H*K];
plus decoding, accounting, a Mixture-of-Memories, Titans and the grammar."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.config import AttentionConfig, LayerConfig, MemoryConfig, ModelConfig, TitansConfig
from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.model import SequenceModel
from archspace.blocks.presets import memory_preset
from archspace.blocks.titans import TitansMixer

from blocks_testutil import (check_against_formula, check_decoding, check_model_against_formula, check_model_decoding,
                             check_mom, design_error, perturbed, state_numel)

D, H, K, V = 24, 2, 6, 5


def _cfg(**kw) -> MemoryConfig:
    """The preset; a fixed lower_bound replaces its learned, shared ones."""
    if "lower_bound" in kw:
        kw.setdefault("learned_lower_bounds", False)
    return memory_preset("hgrn2", D, H, K, V, chunk_size=8, **kw)


def _formula(mod, x, lb=None):
    """One mixer; ``lb``: a tensor [H*K] (a layer's learned bound) instead of cfg.lower_bound."""
    cfg = mod.cfg
    B, T = x.shape[:2]
    q = F.silu(mod.q_proj(x)).view(B, T, H, K)
    v = mod.v_proj(x).view(B, T, H, V)
    lb = cfg.lower_bound if lb is None else lb.view(H, K)
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
    assert design_error(tmp_path, "{preset: hgrn2, lower_bound: 0.5, learned_lower_bounds: false}") is None
    err = design_error(tmp_path, "{preset: hgrn2, lower_bound: 1.0, learned_lower_bounds: false}")
    assert err is not None and "lower_bound" in str(err)
    err = design_error(tmp_path, "{preset: hgrn2, bias: l2, key_norm: l2}")
    assert err is not None and err.kind == "incompatible" and "tied" in str(err)


# ---------------------------------------------------------------------------------------- learned, shared bounds
N_LAYERS, VOCAB = 3, 13


def _model(**kw) -> SequenceModel:
    mixer = _cfg(**kw)
    return SequenceModel(ModelConfig(vocab_size=VOCAB, d_model=D, layers=(LayerConfig(mixer, None),) * N_LAYERS))


def _model_formula(model, ids):
    """The model with each layer's bound from G by the formula: l_i = cumsum(softmax(G, 0))_i - softmax(G, 0)_0."""
    p = torch.softmax(model.lower_bounds, dim=0)
    bounds = p.cumsum(0) - p[0]
    bounds.retain_grad()
    model.formula_bounds = bounds
    x = model.embed(ids)
    for i, layer in enumerate(model.layers):
        x = x + _formula(layer.mixer, layer.norm1(x), bounds[i])
    return model.norm(x)


def test_shared_bounds_start_evenly_spaced_and_layer_zero_has_none():
    model = _model()
    assert model.lower_bounds.shape == (N_LAYERS, H * K) and not model.lower_bounds.any()
    inputs = model.layer_inputs()
    assert inputs[0] == {}
    for i in range(1, N_LAYERS):
        assert torch.allclose(inputs[i]["lower_bound"], torch.full((H * K,), i / N_LAYERS))


@pytest.mark.parametrize("path", ["chunk", "reference"])
def test_model_with_shared_bounds_equals_the_formula(path):
    """Outputs and every gradient, G's included, against the formula (``check_model_against_formula``; errors seen:
    <= 3.7e-6), with bounds off their initialisation (perturbed G: they differ per channel) and rising with depth.
    Through the softmax over layers G's gradient sums to 0 per channel, its terms cancel: its error is measured
    against their size, the gradient of the bounds."""
    model = perturbed(_model(path=path))
    bounds = torch.softmax(model.lower_bounds, 0).cumsum(0) - torch.softmax(model.lower_bounds, 0)[0]
    assert (bounds[1:] > bounds[:-1]).all() and bounds[1].std() > 0.01

    def scale(name, ref):
        return ref.formula_bounds.grad.abs().max().item() if name == "lower_bounds" else None

    check_model_against_formula(model, _model_formula, K * V, T=29, grad_scale=scale)


def test_model_decoding_with_shared_bounds_equals_the_forward():
    check_model_decoding(perturbed(_model(short_conv=3)))


def test_model_cost_counts_the_shared_bounds():
    model = _model()
    cost = SequenceModel.cost_of(model.cfg, 16)
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.params - SequenceModel.cost_of(_model(lower_bound=0.0).cfg, 16).params == N_LAYERS * H * K


def test_grammar_of_shared_bounds(tmp_path):
    # the preset learns them; a fixed bound replaces them, said at the key
    err = design_error(tmp_path, "{preset: hgrn2, lower_bound: 0.5}")
    assert err is not None and "learned_lower_bounds" in str(err) and "lower_bound" in err.path
    assert design_error(tmp_path, "{preset: hgrn2, lower_bound: 0.5, learned_lower_bounds: false}") is None
    for wrap in ("mom: {memories: 2, top_k: 1}", "titans: {variant: mag, window: 4}"):
        err = design_error(tmp_path, f"{{preset: hgrn2, {wrap}}}")
        assert err is not None and err.kind == "incompatible" and "model-level input" in str(err)
    # the mixers that share G need one width H*K
    err = design_error(tmp_path, "{preset: hgrn2, heads: 2}",
                       "  mixers: {B: {preset: hgrn2, heads: 4, key_dim: 2}}\n  n_layers: 2\n  hybrid: {pattern: MB}\n")
    assert err is not None and "one width" in str(err) and "learned_lower_bounds" in err.path
    assert design_error(tmp_path, "{preset: hgrn2, heads: 2}",
                        "  mixers: {B: {preset: hgrn2, heads: 4}}\n  n_layers: 2\n  hybrid: {pattern: MB}\n") is None
