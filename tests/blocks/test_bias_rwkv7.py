"""Bias `rwkv7` (with retention `rwkv7`, preset rwkv7): RWKV-7 "Goose" (Peng et al. 2025,
https://arxiv.org/abs/2503.14456), written here from the paper in its own convention (state rows = value channels,
as RWKV-LM's x070 time mixing), independent of the mixer's paths:

    x_c   = x_t + (x_{t-1} - x_t) * mu_c                  c in r, w, k, v, a, g   (token shift, x_{-1} = 0)
    r = W_r x_r,  k = W_k x_k,  v = W_v x_v
    w     = exp(-exp(-1/2) sigmoid(w0 + tanh(x_w W_1) W_2))                     per key channel
    a     = sigmoid(a0 + x_a A_1 A_2)                                           in-context learning rate
    kh    = normalize(k * k_k),   k~ = k * (1 + (a - 1) * k_a)
    S_t   = S_{t-1} Diag(w) + (S_{t-1} (-kh)) (kh * a)^T + v k~^T            (S in R^{V x K})
    y_t   = GroupNorm(S_t r) + ((r * rho * k~).sum) v
    out   = W_o (y_t * silu(W_g x_g))

with the value residual (Sec. 4; RWKV-LM x070) across the layers of a model: layer 1 keeps its v as v_1, every
later layer uses v = v + (v_1 - v) * sigmoid(v0 + (x_v V_1) V_2);
plus decoding, accounting, Titans and the grammar's refusals."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.config import AttentionConfig, LayerConfig, MemoryConfig, ModelConfig, TitansConfig
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.model import SequenceModel
from archspace.blocks.norm import GROUPNORM_EPS
from archspace.blocks.presets import memory_preset
from archspace.blocks.titans import TitansMixer

from blocks_testutil import (check_against_formula, check_decoding, check_model_against_formula, check_model_decoding,
                             design_error, perturbed, state_numel)

D, H, K, V = 24, 2, 6, 5


def _cfg(**kw) -> MemoryConfig:
    return memory_preset("rwkv7", D, H, K, V, chunk_size=8, gate_rank=4, iclr_rank=3, **kw)


def _formula(mod, x, carrier=None):
    """One mixer; ``carrier``: the value residual's {"v": v_1} across a model's layers ({} at the first)."""
    cfg = mod.cfg
    B, T = x.shape[:2]
    xs = {c: x for c in "rwkvag"}
    if cfg.token_shift:
        xx = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1) - x
        xs = {c: x + xx * mod.shift_mu[i] for i, c in enumerate("rwkvag")}
    r = mod.q_proj(xs["r"]).view(B, T, H, K)
    k = mod.k_proj(xs["k"]).view(B, T, H, K)
    v = mod.v_proj(xs["v"])
    if carrier is not None and "v" not in carrier:
        carrier["v"] = v
    elif carrier is not None:
        v = v + (carrier["v"] - v) * torch.sigmoid(mod.vres_up.bias + xs["v"] @ mod.vres_down.weight.T
                                                   @ mod.vres_up.weight.T)
    v = v.view(B, T, H, V)
    w = torch.exp(-math.exp(-0.5) * torch.sigmoid(mod.w_up(torch.tanh(mod.w_down(xs["w"]))))).view(B, T, H, K)
    a = torch.sigmoid(mod.a_up(mod.a_down(xs["a"]))).view(B, T, H, K)
    kh = F.normalize(k * mod.k_k.view(H, K), dim=-1)
    kt = k * (1 + (a - 1) * mod.k_a.view(H, K))
    S = x.new_zeros(B, H, V, K)
    ys = []
    for t in range(T):
        sa = torch.einsum("bhvk,bhk->bhv", S, -kh[:, t])
        S = S * w[:, t, :, None, :] + sa[..., None] * (kh[:, t] * a[:, t])[:, :, None, :] \
            + v[:, t, :, :, None] * kt[:, t, :, None, :]
        ys.append(torch.einsum("bhvk,bhk->bhv", S, r[:, t]))
    y = torch.stack(ys, 1)  # [B, T, H, V]
    y = F.layer_norm(y, (V,), eps=GROUPNORM_EPS) * mod.o_norm.weight + mod.o_norm.bias  # GroupNorm(H, H*V)
    if cfg.bonus:
        y = y + (r * mod.r_k * kt).sum(-1, keepdim=True) * v
    return mod.o_proj(y.reshape(B, T, H * V) * F.silu(mod.g_proj(xs["g"])))


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("shift,bonus", [(True, True), (False, False)])
def test_mixer_equals_the_paper(shift, bonus, path):
    mod = MemoryMixer(_cfg(token_shift=shift, bonus=bonus, path=path))
    check_against_formula(perturbed(mod), _formula)


@pytest.mark.parametrize("shift", [True, False])
def test_decoding_equals_the_forward(shift):
    check_decoding(perturbed(MemoryMixer(_cfg(token_shift=shift))))


def test_decay_bound_and_init():
    mod = MemoryMixer(_cfg())
    g = mod._inputs(torch.randn(2, 9, D) * 10, None, step=False)[3]["g"]
    assert (g <= 0).all() and (g >= -math.exp(-0.5)).all()  # w in (exp(-e^{-1/2}), 1) = (0.545, 1)
    assert (mod.w_down.weight == 0).all() and (mod.a_down.weight == 0).all()  # RWKV's LoRA downs start at 0
    assert torch.allclose(mod.k_a, torch.full_like(mod.k_a, 1.02)) and torch.allclose(mod.r_k, torch.full_like(mod.r_k, -0.04))
    assert mod.ops.family == "dplr"


def test_costs():
    cfg = _cfg()
    mod = MemoryMixer(cfg)
    cost = MemoryMixer.cost(cfg, 10)
    assert cost.params == sum(p.numel() for p in mod.parameters())
    HK, HV = H * K, H * V
    # q (r) and k D*HK each; v, g and o D*HV each; w LoRA D->4->HK + w0; a LoRA D->3->HK + a0; k_k, k_a, rho HK each;
    # mu 6*D; GroupNorm 2*HV
    params = 2 * D * HK + 3 * D * HV + (D * 4 + 4 * HK + HK) + (D * 3 + 3 * HK + HK) + 3 * HK + 6 * D + 2 * HV
    assert cost.params == params
    # FLOPs: the linears; per head decay K*V, low-rank read and update 4*K*V, write 2*K*V, read 2*K*V, bonus 2K + 2V
    lin = 2 * D * HK + 3 * D * HV + D * 4 + 4 * HK + D * 3 + 3 * HK
    assert cost.flops_per_token == 2 * lin + H * (9 * K * V + 2 * K + 2 * V)
    with torch.no_grad():
        _, st = mod(torch.randn(1, 6, D), return_state=True)
    assert state_numel(st) == cost.state == H * K * V + D  # the memory and the last token (token shift)


def test_titans_memory_as_gate():
    mem = _cfg(value_residual=False)  # a model-level input Titans does not take (refused with the preset's)
    check_decoding(perturbed(TitansMixer(TitansConfig(mem, AttentionConfig(D, 2, 12), variant="mag",
                                                      persistent_tokens=2))), T=9)


def test_grammar(tmp_path):
    assert design_error(tmp_path, "{preset: rwkv7, token_shift: false, bonus: false}") is None
    for mixer, why in [("{preset: rwkv7, mom: {memories: 2}}", "token shift"),
                       ("{preset: rwkv7, titans: {variant: mac}}", "scale 1"),
                       ("{preset: rwkv7, hierarchy: log_linear}", "not implemented")]:
        err = design_error(tmp_path, mixer)
        assert err is not None and err.kind == "incompatible" and why in str(err), mixer
        assert str(err).startswith(f"{tmp_path / 'd.yaml'}:3:")
    err = design_error(tmp_path, "{preset: gla, token_shift: true}")
    assert err is not None  # an option of bias rwkv7 only


# ---------------------------------------------------------------------------------------- the value residual
N_LAYERS, VOCAB = 3, 13


def _model(**kw) -> SequenceModel:
    return SequenceModel(ModelConfig(vocab_size=VOCAB, d_model=D, layers=(LayerConfig(_cfg(**kw), None),) * N_LAYERS))


def test_value_residual_mixes_on_every_layer_but_the_first():
    model = _model()
    assert not hasattr(model.layers[0].mixer, "vres_up")
    for layer in model.layers[1:]:
        mix = layer.mixer
        assert (mix.vres_down.weight == 0).all() and (mix.vres_up.bias == 1).all()  # v0 = 1, the down at 0
        assert mix.vres_up.weight.shape == (H * V, 32)
    assert not any(hasattr(layer.mixer, "vres_up") for layer in _model(value_residual=False).layers)


def _model_formula(model, ids):
    """The model with the residual carried by the formula: layer 1 keeps its values, layers 2 and 3 mix them in."""
    x, carrier = model.embed(ids), {}
    for layer in model.layers:
        x = x + _formula(layer.mixer, layer.norm1(x), carrier)
    return model.norm(x)


@pytest.mark.parametrize("path", ["chunk", "reference"])
def test_model_with_value_residual_equals_the_paper(path):
    """Outputs and every gradient, the mixes' included, off their initialisation, against the formula
    (``check_model_against_formula``)."""
    check_model_against_formula(perturbed(_model(path=path)), _model_formula, K * V)


def test_model_decoding_with_value_residual_equals_the_forward():
    check_model_decoding(perturbed(_model()))


def test_model_cost_counts_the_mixes():
    model = _model()
    T = 10
    cost = SequenceModel.cost_of(model.cfg, T)
    assert cost.params == sum(p.numel() for p in model.parameters())
    base = SequenceModel.cost_of(_model(value_residual=False).cfg, T)
    mix = D * 32 + 32 * H * V + H * V  # LoRA down, up and v0, on layers 1 and 2
    assert cost.params - base.params == 2 * mix
    assert cost.flops_per_token - base.flops_per_token == 2 * 2 * (D * 32 + 32 * H * V)


def test_grammar_of_value_residual(tmp_path):
    err = design_error(tmp_path, "{preset: rwkv7, titans: {variant: mag, window: 4}}")
    assert err is not None and err.kind == "incompatible" and "value_residual: false" in str(err)
    assert design_error(tmp_path, "{preset: rwkv7, value_residual: false, titans: {variant: mag, window: 4}}") is None
    err = design_error(tmp_path, "{preset: rwkv7, heads: 2}",
                       "  mixers: {B: {preset: rwkv7, heads: 4, value_dim: 2}}\n  n_layers: 2\n  hybrid: {pattern: MB}\n")
    assert err is not None and "one width H*V" in str(err) and "value_residual" in err.path
