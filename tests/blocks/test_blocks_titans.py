"""Titans block (mal / mag / mac): against references written from the definitions, causality,
prefill + steps == forward, accounting."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from archspace.blocks.attention import average_context
from archspace.blocks.config import AttentionConfig, InvalidConfig, MemoryConfig, MoMConfig, TitansConfig
from archspace.blocks.memory import MemoryMixer, output, query
from archspace.blocks.titans import TitansMixer

from blocks_testutil import K, MEMORY_PRESETS, V, rel_err, rounding_tol

D, AH, HD = 32, 2, 8
B, T = 2, 37
# block (chunked fp32 kernels) vs the reference below (token loop): an output entry sums over the tokens'
# K-dim reads, a gradient entry over every (sequence, token, key, value) position of the memory
FWD_TOL = rounding_tol(T * K)
GRAD_TOL = rounding_tol(B * T * K * V)
MEMORIES = {"dot_scalar": MEMORY_PRESETS["mamba2"], "l2_scalar": MEMORY_PRESETS["gated_deltanet"]}
# mag and mal over a Mixture-of-Memories (mac reads one state S and refuses it: test_mac_refuses_a_mixture)
MIXTURE = MoMConfig(MEMORY_PRESETS["gated_deltanet"], memories=3, top_k=2, shared_memory=True)
# (variant, attention window, segment, persistent tokens)
SETUPS = [("mal", None, 8, 3), ("mal", 6, 8, 2), ("mag", None, 8, 4), ("mag", 6, 8, 3),
          ("mac", None, 8, 3), ("mac", None, 16, 2)]
SETUP_IDS = [f"{v}-w{w}-s{s}-p{p}" for v, w, s, p in SETUPS]
MIXTURE_SETUPS = [s for s in SETUPS if s[0] != "mac"]
MIXTURE_IDS = [i for s, i in zip(SETUPS, SETUP_IDS) if s[0] != "mac"]


def _cfg(mem, variant, window, segment, np_, path="chunk") -> TitansConfig:
    if isinstance(mem, MoMConfig):
        mem = dataclasses.replace(mem, memory=dataclasses.replace(mem.memory, path=path, chunk_size=16))
    else:
        mem = dataclasses.replace(mem, path=path, chunk_size=16)
    return TitansConfig(mem, AttentionConfig(D, AH, HD, window=window), variant=variant, segment=segment,
                        persistent_tokens=np_)


def _perturb(mod: torch.nn.Module, std: float = 0.3) -> None:
    """Move weights off their init (unit gains, zero biases, tiny projections) so every parameter matters."""
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue  # keep the Mamba2 decay in its initialised range
            if name.startswith("attn.") or name == "persistent":
                p.normal_(0.0, 0.3)  # attention with visibly non-uniform weights
            else:
                p.add_(std * torch.randn_like(p) * (p.abs().mean() + 0.05))


def _pair(mem, variant, window, segment, np_):
    blk = TitansMixer(_cfg(mem, variant, window, segment, np_))
    _perturb(blk)
    ref = TitansMixer(_cfg(mem, variant, window, segment, np_, path="reference"))
    ref.load_state_dict(blk.state_dict())
    return blk, ref


# ---------------------------------------------------------------------- references from the definitions
def _rot(a: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """RoPE by hand on a [B, H, L, HD] at integer positions pos [L]: pairs (i, i + HD/2) by pos * base^(-2i/HD)."""
    half = HD // 2
    inv = torch.tensor([10000.0 ** (-2 * i / HD) for i in range(half)])
    ang = pos.float()[:, None] * inv[None]
    c, s = ang.cos(), ang.sin()
    a1, a2 = a[..., :half], a[..., half:]
    return torch.cat([a1 * c - a2 * s, a2 * c + a1 * s], dim=-1)


def _softmax_attention(blk, zq, zk, q_pos, k_pos, allowed):
    """W_o softmax(q k^T / sqrt(HD) masked by allowed [Lq, Lk]) v with explicit RoPE."""
    a = blk.attn
    Bq, Lq, _ = zq.shape
    Lk = zk.shape[1]
    q = _rot(a.q_proj(zq).view(Bq, Lq, AH, HD).transpose(1, 2), q_pos)
    k = _rot(a.k_proj(zk).view(Bq, Lk, AH, HD).transpose(1, 2), k_pos)
    v = a.v_proj(zk).view(Bq, Lk, AH, HD).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(HD)).masked_fill(~allowed, float("-inf"))
    o = torch.softmax(scores, dim=-1) @ v
    return a.o_proj(o.transpose(1, 2).reshape(Bq, Lq, AH * HD))


def _gate_ref(blk, y, m, eps=1e-5):
    ny = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + eps) * blk.norm_y.weight
    nm = m / torch.sqrt(m.pow(2).mean(-1, keepdim=True) + eps) * blk.norm_m.weight
    return ny * torch.sigmoid(nm)


def _reference(blk: TitansMixer, x: torch.Tensor) -> torch.Tensor:
    cfg = blk.cfg
    Np, w, s = cfg.persistent_tokens, cfg.attention.window, cfg.segment
    Bx, Tx, _ = x.shape
    P = blk.persistent.unsqueeze(0).expand(Bx, Np, D)
    if cfg.variant in ("mal", "mag"):
        xt = torch.cat([P, x], dim=1)  # x~ = [P ; x]
        m = blk.memory(xt)  # reference (token-loop) memory path
        z = m if cfg.variant == "mal" else xt
        L = Np + Tx
        allowed = torch.zeros(Tx, L, dtype=torch.bool)
        for t in range(Tx):
            allowed[t, :Np] = True  # persistent prefix always visible
            lo = 0 if w is None else max(0, t - w + 1)
            allowed[t, Np + lo:Np + t + 1] = True
        pos = torch.arange(L)
        y = _softmax_attention(blk, z[:, Np:], z, pos[Np:], pos, allowed)
        return y if cfg.variant == "mal" else _gate_ref(blk, y, m[:, Np:])
    # mac
    mem = blk.memory
    mc = cfg.memory
    q_all = mem._inputs(x, None, step=False)[0]  # queries of the whole x stream [B, T, H, K]
    S = torch.zeros(Bx, mc.heads, mc.key_dim, mc.value_dim)
    mstate = mem.init_state(Bx)
    outs = []
    for s0 in range(0, Tx, s):
        xs = x[:, s0:s0 + s]
        L = xs.shape[1]
        h = output(mem, mc, mc.key_dim ** -0.5 * torch.einsum("bhkv,blhk->blhv", S, q_all[:, s0:s0 + L]), xs)
        ctx = torch.cat([P, h, xs], dim=1)
        pos = torch.cat([torch.arange(Np), Np + torch.arange(L), Np + s + torch.arange(L)])
        allowed = torch.zeros(L, Np + 2 * L, dtype=torch.bool)
        for j in range(L):
            for c in range(Np + 2 * L):
                if c < Np:
                    allowed[j, c] = True
                elif c < Np + L:
                    allowed[j, c] = c - Np <= j
                else:
                    allowed[j, c] = c - Np - L <= j
        y = _softmax_attention(blk, xs, ctx, pos[Np + L:], pos, allowed)
        m, mstate = mem(y, mstate, return_state=True)
        S = mstate["memory"]
        outs.append(_gate_ref(blk, y, m))
    return torch.cat(outs, dim=1)


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("mem,setup", [(m, s) for m in sorted(MEMORIES) for s in SETUPS]
                         + [("mixture", s) for s in MIXTURE_SETUPS],
                         ids=[f"{s}-{m}" for m in sorted(MEMORIES) for s in SETUP_IDS]
                         + [f"{s}-mixture" for s in MIXTURE_IDS])
def test_matches_reference_outputs_and_grads(mem, setup):
    blk, ref = _pair(MIXTURE if mem == "mixture" else MEMORIES[mem], *setup)
    x = torch.randn(B, T, D)
    wgt = torch.randn(B, T, D)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = []
    for fn, xi in ((blk, xs[0]), (lambda z: _reference(ref, z), xs[1])):
        y = fn(xi)
        (y * wgt).sum().backward()
        ys.append(y.detach())
    assert ys[0].shape == (B, T, D)
    assert ys[1].abs().max() > 1e-3
    assert rel_err(ys[0], ys[1]) <= FWD_TOL
    assert rel_err(xs[0].grad, xs[1].grad) <= GRAD_TOL
    ref_params = dict(ref.named_parameters())
    for name, p in blk.named_parameters():
        q = ref_params.pop(name)
        assert p.grad is not None and q.grad is not None, name
        assert p.grad.abs().max() > 0, f"{name} gets no gradient"
        assert rel_err(p.grad, q.grad) <= GRAD_TOL, name
    assert not ref_params


@pytest.mark.parametrize("setup", SETUPS, ids=SETUP_IDS)
def test_causal(setup):
    blk, _ = _pair(MEMORIES["l2_scalar"], *setup)
    x = torch.randn(B, T, D)
    with torch.no_grad():
        y = blk(x)
        for t in (3, 8, 12, 30):  # segment starts and middles (s = 8 / 16)
            x2 = x.clone()
            x2[:, t] += torch.randn(B, D)
            y2 = blk(x2)
            assert torch.equal(y2[:, :t], y[:, :t]) or rel_err(y2[:, :t], y[:, :t]) <= 1e-6, t
            assert (y2[:, t] - y[:, t]).abs().max() > 1e-4, t


@pytest.mark.parametrize("mem,setup", [(m, s) for m in sorted(MEMORIES) for s in SETUPS]
                         + [("mixture", s) for s in MIXTURE_SETUPS],
                         ids=[f"{s}-{m}" for m in sorted(MEMORIES) for s in SETUP_IDS]
                         + [f"{s}-mixture" for s in MIXTURE_IDS])
def test_prefill_steps_and_continuation_match_forward(mem, setup):
    blk, _ = _pair(MIXTURE if mem == "mixture" else MEMORIES[mem], *setup)
    x = torch.randn(B, T, D)
    T1, T2 = 11, 26  # prefill ends mid-segment; a continuation chunk crosses segment boundaries
    with torch.no_grad():
        y, final = blk(x, return_state=True)
        y1, st = blk(x[:, :T1], return_state=True)
        outs = [y1]
        for t in range(T1, T2):
            o, st = blk.step(x[:, t], st)
            outs.append(o.unsqueeze(1))
        y3, st = blk(x[:, T2:], st, return_state=True)
        outs.append(y3)
        # decoding from scratch with step only
        st0 = blk.init_state(B)
        steps = []
        for t in range(T):
            o, st0 = blk.step(x[:, t], st0)
            steps.append(o)
    assert rel_err(torch.cat(outs, 1), y) <= 1e-5
    assert rel_err(torch.stack(steps, 1), y) <= 1e-5
    assert set(st) == set(final) == set(st0)
    for key, val in final.items():
        if isinstance(val, dict):
            for k2 in val:
                if isinstance(val[k2], torch.Tensor) and not val[k2].is_floating_point():
                    assert torch.equal(st[key][k2], val[k2]), (key, k2)  # a mixture's per-memory positions
                elif isinstance(val[k2], torch.Tensor):
                    assert rel_err(st[key][k2], val[k2]) <= 1e-5, (key, k2)
        elif isinstance(val, torch.Tensor):
            assert val.shape == st[key].shape and rel_err(st[key], val) <= 1e-5, key
        else:
            assert st[key] == val == T


def test_read_query_is_the_memory_query_path():
    """mac reads with the memory's own query path on the x stream, split across segments (its conv state carried)."""
    for mem in MEMORIES.values():
        blk = TitansMixer(_cfg(mem, "mac", None, 8, 2))
        _perturb(blk)
        x = torch.randn(B, 13, D)
        with torch.no_grad():
            q, conv = query(blk.memory, mem, x[:, :5], None, step=False)
            q2, _ = query(blk.memory, mem, x[:, 5:], conv, step=False)
            ref = blk.memory._inputs(x, None, step=False)[0]
        assert rel_err(torch.cat([q, q2], 1), ref) <= 1e-6


def _numel(mod) -> int:
    return sum(p.numel() for p in mod.parameters() if p.requires_grad)


def _state_numel(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(_state_numel(v) for v in state.values())
    return 0


@pytest.mark.parametrize("mem,setup", [(m, s) for m in sorted(MEMORIES)
                                         for s in SETUPS + [("mal", 4, 8, 0), ("mac", None, 5, 0)]]
                         + [("mixture", s) for s in MIXTURE_SETUPS + [("mal", 4, 8, 0)]])
def test_cost_params_and_state_match_module(mem, setup):
    cfg = _cfg(MIXTURE if mem == "mixture" else MEMORIES[mem], *setup)
    blk = TitansMixer(cfg)
    assert TitansMixer.cost(cfg, 100).params == _numel(blk)
    with torch.no_grad():
        for t in (1, 5, 8, 16, 19):
            _, st = blk(torch.randn(1, t, D), return_state=True)
            assert TitansMixer.cost(cfg, t).state == _state_numel(st), t


def test_flops_by_hand():
    mem = MemoryConfig(D, 2, 8, 12, bias="dot", retention="none")  # no conv, no gate, rmsnorm
    mem_flops = MemoryMixer.cost(mem, 10).flops_per_token  # 2*32*(2*16+24) + 2*24*32 + 2*(2+2)*96
    assert mem_flops == 2 * 32 * 56 + 2 * 24 * 32 + 2 * 4 * 96
    proj = 2 * D * AH * HD  # 1024
    Tn, Np = 10, 3
    for w in (None, 4):
        cfg = TitansConfig(mem, AttentionConfig(D, AH, HD, window=w), variant="mag", persistent_tokens=Np)
        expect = mem_flops + 4 * proj + 4 * AH * HD * (Np + average_context(Tn, w)) + Np * (mem_flops + 2 * proj) / Tn
        assert TitansMixer.cost(cfg, Tn).flops_per_token == pytest.approx(expect)
    cfg = TitansConfig(mem, AttentionConfig(D, AH, HD), variant="mac", segment=4, persistent_tokens=Np)
    read = 2 * D * 16 + 2 * 2 * 8 * 12 + 2 * 24 * D  # q projection, read, W_o
    # in-segment indices over T=10, s=4: 1,2,3,4,1,2,3,4,1,2 -> sum 23
    expect = mem_flops + read + 6 * proj + 4 * AH * HD * (Np + 2 * 23 / Tn) + Np * 2 * proj / Tn
    assert TitansMixer.cost(cfg, Tn).flops_per_token == pytest.approx(expect)


def test_validation():
    mem = MEMORIES["dot_scalar"]
    with pytest.raises(ValueError):
        TitansMixer(TitansConfig(mem, AttentionConfig(D + 2, AH, HD), variant="mag"))
    with pytest.raises(ValueError):
        TitansMixer(TitansConfig(mem, AttentionConfig(D, AH, HD), variant="mix"))
    with pytest.raises(ValueError):
        TitansMixer(TitansConfig(mem, AttentionConfig(D, AH, HD), segment=0))


def test_mac_refuses_a_mixture_and_says_why():
    """Memory as context reads one state S of the segment start; a Mixture-of-Memories has none to read."""
    with pytest.raises(InvalidConfig, match="no single state to read: use titans.variant mag or mal") as err:
        _cfg(MIXTURE, "mac", None, 8, 2)
    assert err.value.incompatible
