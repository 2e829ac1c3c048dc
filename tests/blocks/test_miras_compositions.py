"""Mixture-of-Memories and Titans over the new memory structures (deep mini-batch memories, vector memories):
the chunked path against the token loop with every gradient, decoding against the forward, the accounting against
the modules. Identities in fp64 (see tests/blocks/test_miras_presets.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from archspace.blocks.axis import InvalidConfig
from archspace.blocks.config import AttentionConfig, MemoryConfig, MoMConfig, TitansConfig
from archspace.blocks.mom import MoMMixer
from archspace.blocks.titans import TitansMixer

from blocks_testutil import MINIBATCH_PRESETS, outputs_and_input_grads, rel_err

DT = torch.float64
TOL = 1e6 * torch.finfo(DT).eps
FP32_KERNEL_TOL = 1e-5  # the exact kernels (the vector memory's) compute in fp32 whatever the input dtype
T = 13
VECTOR = MemoryConfig(32, 2, 8, 8, structure="vector", bias="l2", retention="scalar", key_norm="l2", short_conv=3,
                      chunk_size=4)
MEMORIES = {"titans_lmm": MINIBATCH_PRESETS["titans_lmm"], "atlas": MINIBATCH_PRESETS["atlas"],
            "ttt_linear": MINIBATCH_PRESETS["ttt_linear"], "vector": VECTOR}


def _perturb(mod: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(11)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue  # keep the Mamba2 decay in its initialised range
            p.add_(0.2 * torch.randn_like(p) * (p.abs().mean() + 0.05))
    return mod


def _pair(make, cfg, memory_of):
    """The chunked module and its token-loop twin with the same weights, in fp64."""
    a = _perturb(make(cfg)).to(DT)
    b = make(dataclasses.replace(cfg, memory=dataclasses.replace(memory_of(cfg), path="reference"))).to(DT)
    b.load_state_dict(a.state_dict())
    return a, b


def _same_outputs_and_grads(a, b, x, tol=TOL):
    w = torch.randn_like(x)
    ys, dxs = outputs_and_input_grads((a, b), x, w)
    assert rel_err(ys[0], ys[1]) <= tol
    assert rel_err(dxs[0], dxs[1]) <= tol
    ref = dict(b.named_parameters())
    for name, p in a.named_parameters():
        if p.grad is None:  # top-1 routing: the router learns through the load-balancing loss only
            assert name == "router.weight", name
            continue
        assert rel_err(p.grad, ref[name].grad) <= tol, name


def _decodes_like_the_forward(mod, x, tol=TOL):
    with torch.no_grad():
        y, final = mod(x, return_state=True)
        state, steps = None, []
        for t in range(x.shape[1]):
            y_t, state = mod.step(x[:, t], state)
            steps.append(y_t)
    assert rel_err(torch.stack(steps, 1), y) <= tol
    return state, final


@pytest.mark.parametrize("kw", [dict(memories=3, top_k=2), dict(memories=2, top_k=1, shared_memory=False,
                                                                  share_kv=True)], ids=["top2-shared", "top1-share_kv"])
@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_mixture_of_memories(name, kw):
    """Each memory lives in its own time: its mini-batches are of the tokens routed to it (memory-local clock)."""
    cfg = MoMConfig(MEMORIES[name], **kw)
    tol = TOL if cfg.memory.minibatch else FP32_KERNEL_TOL
    a, b = _pair(MoMMixer, cfg, lambda c: c.memory)
    x = torch.randn(2, T, 32, dtype=DT)
    _same_outputs_and_grads(a, b, x, tol)
    state, final = _decodes_like_the_forward(a, x, tol)
    for key, t in final.items():
        if key.endswith("pos"):  # tokens each memory received ([B, M]), or the shared memory's (an int)
            assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(t)), key
        else:
            assert rel_err(state[key], t) <= tol, key
    cost = MoMMixer.cost(cfg, T)
    assert cost.params == sum(p.numel() for p in a.parameters())
    fresh = a.init_state(1)  # positions are bookkeeping, not memory (as log-linear's)
    assert cost.state == sum(t.numel() for k, t in fresh.items() if isinstance(t, torch.Tensor) and
                             not k.endswith("pos"))


@pytest.mark.parametrize("variant", ["mac", "mag", "mal"])
def test_titans_over_the_deep_memory(variant):
    mem = MINIBATCH_PRESETS["titans_lmm"]
    cfg = TitansConfig(mem, AttentionConfig(32, 2, 8, window=None if variant == "mac" else 6), variant=variant,
                       segment=8, persistent_tokens=2)
    a, b = _pair(TitansMixer, cfg, lambda c: c.memory)
    x = torch.randn(2, T, 32, dtype=DT)
    _same_outputs_and_grads(a, b, x)
    _decodes_like_the_forward(a, x)
    cost = TitansMixer.cost(cfg, T)
    assert cost.params == sum(p.numel() for p in a.parameters())
    if variant == "mac":  # the memory (packed state and conv), S of the segment start, the read conv, the KV cache
        state = a.init_state(1)
        kv = 2 * 2 * 8 * (2 + 2 * (T % 8))
        held = state["memory"]["memory"].numel() + sum(state["memory"][c].numel() for c in ("conv_q", "conv_k", "conv_v"))
        assert cost.state == held + state["segment_memory"].numel() + state["read_conv"].numel() + kv


def test_memory_as_context_needs_whole_mini_batches_per_segment():
    mem = MINIBATCH_PRESETS["titans_lmm"]  # chunk_size 4
    with pytest.raises(InvalidConfig, match="multiple of chunk_size") as e:
        TitansConfig(mem, AttentionConfig(32, 2, 8), variant="mac", segment=6)
    assert e.value.key == "segment"
