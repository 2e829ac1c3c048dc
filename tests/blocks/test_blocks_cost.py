"""Accounting: analytic costs match the built modules and hand-done arithmetic."""
from __future__ import annotations

import dataclasses
import itertools

import pytest

from archspace.blocks.attention import Attention
from archspace.blocks.bias import BIAS
from archspace.blocks.compat import violations
from archspace.blocks.config import AttentionConfig, Cost, LayerConfig, MemoryConfig, ModelConfig, SwiGLUConfig
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.model import Layer, SequenceModel
from archspace.blocks.registry import block_cost
from archspace.blocks.retention import RETENTION
from archspace.blocks.swiglu import SwiGLU

from blocks_testutil import MEMORY_PRESETS


def numel(mod) -> int:
    return sum(p.numel() for p in mod.parameters() if p.requires_grad)


def _all_memory_variants():
    """Every bias x retention of the axis tables (the incompatibility table's pairs left out) with the options."""
    for bias, ret, conv, gate, norm, kn in itertools.product(
        BIAS, RETENTION, (0, 3), (False, True), ("rmsnorm", "none"), ("none", "l2")
    ):
        keys = dict(bias=bias, retention=ret, short_conv=conv, output_gate=gate, norm=norm, key_norm=kn)
        if violations({"type": "memory", **keys}):
            continue
        yield MemoryConfig(24, 3, 4, 6, gate_rank=5, **keys)


@pytest.mark.parametrize("cfg", list(_all_memory_variants()), ids=str)
def test_memory_params_match_module(cfg):
    assert MemoryMixer.cost(cfg, 100).params == numel(MemoryMixer(cfg))


@pytest.mark.parametrize("name", sorted(MEMORY_PRESETS))
def test_memory_preset_params_match_module(name):
    cfg = MEMORY_PRESETS[name]
    assert MemoryMixer.cost(cfg, 37).params == numel(MemoryMixer(cfg))


@pytest.mark.parametrize("window", [None, 1, 7])
def test_attention_and_mlp_params_match_module(window):
    a = AttentionConfig(24, 3, 6, window=window)
    assert Attention.cost(a, 50).params == numel(Attention(a))
    m = SwiGLUConfig(24, 40)
    assert SwiGLU.cost(m, 50).params == numel(SwiGLU(m))


def test_tiny_gated_deltanet_by_hand():
    cfg = MemoryConfig(4, 2, 3, 2, bias="l2", retention="scalar", short_conv=2, output_gate=True, norm="rmsnorm",
                       key_norm="l2")
    # D=4, H=2, K=3, V=2 -> H*K = 6, H*V = 4, convolved channels 6 + 6 + 4 = 16
    # params: q 4*6=24, k 24, v 4*4=16 (=64); conv 2*16=32; dt_proj 4*2=8 + A_log 2 + dt_bias 2 (=12);
    #         beta 4*2=8; per-head norm 2*2=4; output gate 4*4=16; o_proj 4*4=16
    params = 64 + 32 + 12 + 8 + 4 + 16 + 16  # 152
    # state: memory H*K*V = 12; conv (k-1)*channels = 1*16 = 16
    state = 12 + 16  # 28
    # flops: linears 2*(64 + 8 + 8 + 16 + 16) = 224; conv 2*k*channels = 2*2*16 = 64;
    #        recurrence per head: delta write 4*K*V = 24, decay K*V = 6, read 2*K*V = 12 -> 42 * 2 heads = 84
    flops = 224 + 64 + 84  # 372
    assert params == 152 and state == 28 and flops == 372
    for T in (1, 5, 1000):  # independent of T
        assert MemoryMixer.cost(cfg, T) == Cost(params, state, float(flops))
    assert numel(MemoryMixer(cfg)) == params


def test_tiny_linear_attention_and_retnet_by_hand():
    la = MemoryConfig(4, 1, 2, 3, norm="none")
    # params q 8 + k 8 + v 12 + o 12 = 40; state 1*2*3 = 6; flops 2*40 + (write 2*6 + read 2*6) = 80 + 24
    assert MemoryMixer.cost(la, 9) == Cost(40, 6, 104.0)
    rn = dataclasses.replace(la, retention="constant")  # decay buffer is free, decay costs K*V = 6 FLOPs
    assert MemoryMixer.cost(rn, 9) == Cost(40, 6, 110.0)


def test_tiny_gla_by_hand():
    cfg = MemoryConfig(4, 2, 2, 2, retention="vector", gate_rank=3, norm="none")
    # q,k,v 3 * 4*4 = 48; o 16; gate down 4*3 = 12, up 3*4 = 12, bias 4 -> 92 params
    # flops 2*(48 + 16 + 12 + 12) = 176; per head (2 + 1 + 2) * K*V = 5*4 = 20, two heads 40 -> 216
    assert MemoryMixer.cost(cfg, 3) == Cost(92, 8, 216.0)
    assert numel(MemoryMixer(cfg)) == 92


def test_tiny_attention_by_hand():
    win = AttentionConfig(4, 2, 2, window=3)
    # params 4 linears * 4*4 = 64; cache 2*H*hd*min(T, w) = 2*2*2*3 = 24 at T=5
    # avg context (1+2+3+3+3)/5 = 2.4; flops 4*2*4*4 = 128 + 2*2*H*hd*2.4 = 16*2.4 = 38.4
    c = Attention.cost(win, 5)
    assert (c.params, c.state) == (64, 24) and c.flops_per_token == pytest.approx(166.4)
    glob = AttentionConfig(4, 2, 2)
    # global at T=5: cache 2*2*2*5 = 40; avg context 3 -> 128 + 16*3 = 176
    assert Attention.cost(glob, 5) == Cost(64, 40, 176.0)
    # window larger than T behaves like global
    assert Attention.cost(AttentionConfig(4, 2, 2, window=50), 5) == Cost(64, 40, 176.0)


def test_tiny_swiglu_by_hand():
    # 3 * 4 * 6 = 72 params, 2 * 72 = 144 flops
    assert SwiGLU.cost(SwiGLUConfig(4, 6), 10) == Cost(72, 0, 144.0)


def _tiny_model(tie: bool) -> ModelConfig:
    mem = MemoryConfig(4, 2, 3, 2, bias="l2", retention="scalar", short_conv=2, output_gate=True, key_norm="l2")
    return ModelConfig(
        vocab_size=10,
        d_model=4,
        layers=(LayerConfig(mem, SwiGLUConfig(4, 6)), LayerConfig(AttentionConfig(4, 2, 2, window=3), None)),
        tie_embeddings=tie,
    )


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_model_by_hand(tie):
    cfg = _tiny_model(tie)
    model = SequenceModel(cfg)
    # layer 1: memory 152 + norm1 4 + swiglu 72 + norm2 4 = 232; layer 2: attention 64 + norm1 4 = 68
    # embedding 10*4 = 40 (+ 40 untied head) + final norm 4
    params = 232 + 68 + 40 + 4 + (0 if tie else 40)
    assert params == (344 if tie else 384)
    # flops at T=5: memory 372 + swiglu 144 + attention 166.4 + head 2*4*10 = 80
    # state: memory 28 + KV cache 24
    c = model.cost(5)
    assert c.params == params == numel(model)
    assert c.state == 52
    assert c.flops_per_token == pytest.approx(372 + 144 + 166.4 + 80)
    layers = model.layer_costs(5)
    assert [lc.params for lc in layers] == [232, 68]
    total = layers[0] + layers[1] + Cost(40 * (1 if tie else 2) + 4, 0, 80.0)
    assert c.params == total.params and c.state == total.state
    assert c.flops_per_token == pytest.approx(total.flops_per_token)


def test_model_cost_is_sum_of_layers_for_presets():
    layers = tuple(LayerConfig(m, SwiGLUConfig(m.d_model, 48)) for m in MEMORY_PRESETS.values())
    layers += (LayerConfig(AttentionConfig(32, 4, 8, window=16), None), LayerConfig(AttentionConfig(32, 2, 16), None))
    for tie in (True, False):
        cfg = ModelConfig(vocab_size=50, d_model=32, layers=layers, tie_embeddings=tie)
        model = SequenceModel(cfg)
        T = 40
        lcs = model.layer_costs(T)
        assert [lc.params for lc in lcs] == [numel(layer) for layer in model.layers]
        assert lcs == [Layer.cost(lc, T) for lc in layers]
        assert lcs[0] == block_cost(layers[0].mixer, T) + block_cost(layers[0].mlp, T) + Cost(2 * 32, 0, 0.0)
        hgrn2 = MEMORY_PRESETS["hgrn2"]  # its learned lower bounds: one parameter [n_layers, H*K] of the model
        assert hgrn2.learned_lower_bounds
        emb = 50 * 32 * (1 if tie else 2) + 32 + len(layers) * hgrn2.heads * hgrn2.state_key_dim
        expect = sum(lcs, Cost(0, 0, 0.0)) + Cost(emb, 0, 2.0 * 32 * 50)
        c = model.cost(T)
        assert c.params == expect.params == numel(model)
        assert c.state == expect.state
        assert c.flops_per_token == pytest.approx(expect.flops_per_token)
        assert SequenceModel.cost_of(cfg, T) == c


def test_attention_state_matches_cache_size():
    import torch

    for window in (None, 4):
        cfg = AttentionConfig(16, 2, 4, window=window)
        mod = Attention(cfg)
        with torch.no_grad():
            _, cache = mod(torch.randn(1, 9, 16), return_state=True)
        assert cache["k"].numel() + cache["v"].numel() == Attention.cost(cfg, 9).state


@pytest.mark.parametrize("name", sorted(MEMORY_PRESETS))
def test_memory_state_matches_state_size(name):
    import torch

    cfg = MEMORY_PRESETS[name]
    mod = MemoryMixer(cfg)
    with torch.no_grad():
        _, st = mod(torch.randn(1, 5, cfg.d_model), return_state=True)
    assert sum(v.numel() for v in st.values()) == MemoryMixer.cost(cfg, 5).state
    assert sum(v.numel() for v in mod.init_state(1).values()) == MemoryMixer.cost(cfg, 5).state
