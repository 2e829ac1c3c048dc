from __future__ import annotations

import math

import pytest
import torch

from archspace.blocks.attention import Attention, apply_rope, average_context, rope_cos_sin
from archspace.blocks.config import AttentionConfig

from blocks_testutil import rel_err

D, H, HD = 32, 4, 8


def _reference(mod: Attention, x: torch.Tensor, window, qkv=None):
    """Hand-written causal (optionally windowed) softmax attention, explicit loops over the mask.
    `qkv`: the three [B, T, H*HD] streams when they are not the plain projections."""
    cfg = mod.cfg
    B, T, _ = x.shape
    q, k, v = qkv if qkv is not None else (mod.q_proj(x), mod.k_proj(x), mod.v_proj(x))
    q, k, v = (a.view(B, T, H, HD).transpose(1, 2) for a in (q, k, v))
    # RoPE by hand: pairs (i, i + HD/2) rotated by angle pos * base^(-2i/HD)
    half = HD // 2
    inv = torch.tensor([cfg.rope_base ** (-2 * i / HD) for i in range(half)])
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]  # [T, half]
    c, s = ang.cos(), ang.sin()

    def rot(a):
        a1, a2 = a[..., :half], a[..., half:]
        return torch.cat([a1 * c - a2 * s, a2 * c + a1 * s], dim=-1)

    q, k = rot(q), rot(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(HD)  # [B, H, T, T]
    allowed = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        lo = 0 if window is None else max(0, t - window + 1)
        allowed[t, lo : t + 1] = True
    scores = scores.masked_fill(~allowed, float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v
    return mod.o_proj(o.transpose(1, 2).reshape(B, T, H * HD))


@pytest.mark.parametrize("window", [None, 1, 5, 64])
def test_matches_hand_written_reference(window):
    mod = Attention(AttentionConfig(D, H, HD, window=window))
    x = torch.randn(2, 23, D)
    with torch.no_grad():
        assert rel_err(mod(x), _reference(mod, x, window)) <= 1e-5


def test_window_changes_output_and_window_one_is_value_only():
    x = torch.randn(1, 12, D)
    glob = Attention(AttentionConfig(D, H, HD))
    win = Attention(AttentionConfig(D, H, HD, window=3))
    win.load_state_dict(glob.state_dict())
    with torch.no_grad():
        yg, yw = glob(x), win(x)
        # the first 3 positions see the same keys; later ones do not
        assert rel_err(yw[:, :3], yg[:, :3]) <= 1e-6
        assert (yw[:, 3:] - yg[:, 3:]).abs().max() > 1e-4
        one = Attention(AttentionConfig(D, H, HD, window=1))
        one.load_state_dict(glob.state_dict())
        torch.testing.assert_close(one(x), one.o_proj(one.v_proj(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [None, 4])
def test_step_matches_forward(window):
    mod = Attention(AttentionConfig(D, H, HD, window=window))
    B, T = 2, 11
    x = torch.randn(B, T, D)
    with torch.no_grad():
        y, cache = mod(x, return_state=True)
        state = mod.init_state(B)
        outs = []
        for t in range(T):
            o, state = mod.step(x[:, t], state)
            outs.append(o)
            kept = min(t + 1, window or T)
            assert state["k"].shape == (B, H, kept, HD) and state["pos"] == t + 1
    assert rel_err(torch.stack(outs, 1), y) <= 1e-5
    torch.testing.assert_close(state["k"], cache["k"])


@pytest.mark.parametrize("window", [None, 4])
def test_prefill_then_continue(window):
    mod = Attention(AttentionConfig(D, H, HD, window=window))
    x = torch.randn(2, 15, D)
    with torch.no_grad():
        full = mod(x)
        a, s = mod(x[:, :6], return_state=True)
        b = mod(x[:, 6:], state=s)
    assert rel_err(torch.cat([a, b], 1), full) <= 1e-5


def test_rope_is_relative():
    q, k = torch.randn(HD), torch.randn(HD)
    pos = torch.arange(20)
    cos, sin = rope_cos_sin(pos, HD, 10000.0)
    qr, kr = apply_rope(q.expand(20, HD), cos, sin), apply_rope(k.expand(20, HD), cos, sin)
    # <R_m q, R_n k> depends only on m - n
    assert abs((qr[7] @ kr[3]) - (qr[14] @ kr[10])) < 1e-4
    assert abs((qr[0] @ kr[0]) - (q @ k)) < 1e-5


def test_average_context():
    assert average_context(5, None) == 3.0  # (1+2+3+4+5)/5
    assert average_context(5, 3) == pytest.approx(12 / 5)  # (1+2+3+3+3)/5
    assert average_context(5, 10) == 3.0
    assert average_context(1, 1) == 1.0


def _conv_reference(mod: Attention, x: torch.Tensor, window):
    """Short conv written out per position: y_t = silu(sum_j w[:, j] * x_{t-(k-1)+j}), then attention."""
    kk = mod.cfg.short_conv

    def conv(proj, weight):
        a = proj(x)  # [B, T, C]
        out = torch.zeros_like(a)
        for t in range(a.shape[1]):
            for j in range(kk):
                s = t - (kk - 1) + j
                if s >= 0:
                    out[:, t] += weight[:, 0, j] * a[:, s]
        return torch.nn.functional.silu(out)

    qkv = (conv(mod.q_proj, mod.q_conv.weight), conv(mod.k_proj, mod.k_conv.weight), conv(mod.v_proj, mod.v_conv.weight))
    return _reference(mod, x, window, qkv)


@pytest.mark.parametrize("window", [None, 5])
def test_short_conv_matches_reference_and_decodes(window):
    mod = Attention(AttentionConfig(D, H, HD, window=window, short_conv=4))
    x = torch.randn(2, 13, D)
    with torch.no_grad():
        y = mod(x)
        assert rel_err(y, _conv_reference(mod, x, window)) <= 1e-5
        a, s = mod(x[:, :6], return_state=True)
        assert s["conv_q"].shape == (2, H * HD, 3)
        outs = [a]
        for t in range(6, 13):
            o, s = mod.step(x[:, t], s)
            outs.append(o.unsqueeze(1))
    assert rel_err(torch.cat(outs, 1), y) <= 1e-5
    cost = Attention.cost(mod.cfg, 13)
    assert cost.params == sum(p.numel() for p in mod.parameters())
    kept = s["k"].numel() + s["v"].numel() + sum(s[f"conv_{n}"].numel() for n in "qkv")
    assert cost.state == kept // 2  # per sequence (batch of 2)
