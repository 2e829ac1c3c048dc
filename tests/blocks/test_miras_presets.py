"""The Miras presets and axis values as memory mixers (blocks/): chunked path against the token loop (fp32, outputs
and the gradients of the input and of every parameter), decoding against the forward, the accounting against the
module and hand arithmetic, the vector memory against its recurrence, chunk_size in the design hash.
The engine itself is checked against its formulas in fp64 in tests/kernels/test_minibatch.py."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from archspace.blocks.config import Cost, MemoryConfig, is_minibatch
from archspace.blocks.dispatch import kernel_family
from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.presets import PRESETS

from blocks_testutil import MINIBATCH_PRESETS, outputs_and_input_grads, rel_err

T = 11
# The chunked path and the token loop are the same function (tests/kernels/test_minibatch.py); here every identity
# (chunk = loop, decoding = forward) is checked in fp64, as identities are: their fp32 differences are rounding
# amplified by the functions' own conditioning (the LayerNorm inside the memory, Newton-Schulz's quintic
# iteration, the smooth sign's slope 1/sqrt(eps)), measured by benchmarks/bench_deep_memory.py --agreement.
DT = torch.float64
TOL = 1e6 * torch.finfo(DT).eps  # the paths differ by <= 1e-11 in fp64 (~10^4 ulps of a second-order graph)


def _perturb(mod: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Move every parameter off its init (zero biases, unit gains) so that each one matters."""
    torch.manual_seed(7)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(std * torch.randn_like(p) * (p.abs().mean() + 0.05))
    return mod


def test_presets_are_the_ones_the_issue_names():
    deep = {n for n, p in PRESETS.items() if p["type"] == "memory" and is_minibatch(p)}
    assert deep == {"titans_lmm", "ttt_linear", "ttt_mlp", "moneta", "yaad", "memora", "atlas"}
    assert not is_minibatch(PRESETS["longhorn"])  # Longhorn's implicit step: an exact kernel
    assert kernel_family(MemoryConfig(32, 1, 16, 32, **{k: v for k, v in PRESETS["longhorn"].items()
                                                          if k not in ("type", "heads", "key_dim")})) == "implicit"


@pytest.mark.parametrize("name", sorted(MINIBATCH_PRESETS))
def test_chunk_equals_reference_outputs_and_gradients(name):
    cfg = MINIBATCH_PRESETS[name]
    chunk = _perturb(MemoryMixer(cfg)).to(DT)
    ref = MemoryMixer(dataclasses.replace(cfg, path="reference")).to(DT)
    ref.load_state_dict(chunk.state_dict())
    x = torch.randn(2, T, cfg.d_model, dtype=DT)
    w = torch.randn(2, T, cfg.d_model, dtype=DT)
    ys, dxs = outputs_and_input_grads((chunk, ref), x, w)
    assert rel_err(ys[0], ys[1]) <= TOL
    assert rel_err(dxs[0], dxs[1]) <= TOL
    grads = dict(ref.named_parameters())
    for pname, p in chunk.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{pname} gets no gradient"
        assert rel_err(p.grad, grads[pname].grad) <= TOL, pname


@pytest.mark.parametrize("name", sorted(MINIBATCH_PRESETS))
def test_decoding_equals_the_forward(name):
    """Steps from init_state (the learned initial weights) keep the mini-batch boundaries of the forward."""
    cfg = MINIBATCH_PRESETS[name]
    mod = _perturb(MemoryMixer(cfg)).to(DT)
    x = torch.randn(2, T, cfg.d_model, dtype=DT)
    with torch.no_grad():
        y, final = mod(x, return_state=True)
        state, steps = mod.init_state(2), []
        for t in range(T):
            y_t, state = mod.step(x[:, t], state)
            steps.append(y_t)
    assert rel_err(torch.stack(steps, 1), y) <= TOL
    assert state["pos"] == final["pos"] == T
    assert rel_err(state["memory"], final["memory"]) <= TOL


def test_chunk_size_one_equals_the_online_recurrence():
    """At chunk size 1 every gradient is taken at the previous token's memory: chunked = token loop."""
    cfg = dataclasses.replace(MINIBATCH_PRESETS["titans_lmm"], chunk_size=1)
    chunk = _perturb(MemoryMixer(cfg))
    ref = MemoryMixer(dataclasses.replace(cfg, path="reference"))
    ref.load_state_dict(chunk.state_dict())
    x = torch.randn(2, T, cfg.d_model)
    # fp32, the issue's bound for deep memories at chunk size 1 (measured: <= 8e-6, 3 seeds)
    assert rel_err(chunk(x), ref(x)) <= 1e-4


@pytest.mark.parametrize("name", sorted(MINIBATCH_PRESETS))
def test_costs_match_the_module(name):
    cfg = MINIBATCH_PRESETS[name]
    mod = MemoryMixer(cfg)
    cost = MemoryMixer.cost(cfg, T)
    assert cost.params == sum(p.numel() for p in mod.parameters())
    state = mod.init_state(3)
    assert cost.state == sum(t[0].numel() for t in state.values() if isinstance(t, torch.Tensor))


def test_titans_memory_costs_by_hand():
    """A tiny Titans memory: D = 4, one head, K = V = 2, depth 2, expansion 1.5 (hidden 3), mini-batch 2."""
    cfg = MemoryConfig(4, 1, 2, 2, structure="mlp", depth=2, expansion=1.5, bias="l2", retention="weight_decay",
                       update="momentum", norm="none", chunk_size=2)
    # memory weights W1 2x3 = 6, W2 3x2 = 6: P = 12; LayerNorm affine 2 + 2
    # params: q, k, v 3 * 4*2 = 24; o_proj 2*4 = 8; a_proj 4 + 1, b_proj 4, m_proj 4 + 1 = 14; memory 12 + 4 = 16
    assert MemoryMixer.cost(cfg, 5).params == 24 + 8 + 14 + 16 == sum(p.numel() for p in MemoryMixer(cfg).parameters())
    # state: the weights A, the momentum S and the anchor, 3 * 12 = 36
    assert MemoryMixer.cost(cfg, 5).state == 36
    # FLOPs: linears 2 * (24 + 8 + 4 + 4 + 4) = 88; memory per token: read 2P = 24; the gradient's forward 2P = 24,
    # back-propagation through W2 2 * 6 = 12, outer products 2P = 24; decay P = 12; momentum 2P = 24 -> 120
    assert MemoryMixer.cost(cfg, 5) == Cost(62, 36, 88.0 + 120.0)


def test_atlas_memory_costs_by_hand():
    """Newton-Schulz and the Omega window: D = 4, one head, K = V = 2, depth 1 (a 2x2 matrix), window 3."""
    cfg = MemoryConfig(4, 1, 2, 2, structure="mlp", depth=1, residual=False, memory_norm="none", bias="omega",
                       omega_window=3, omega_gamma="ones", retention="none", update="newton_schulz", ns_steps=5,
                       norm="none", chunk_size=1)
    # params: q, k, v 24, o 8, b_proj 4, m_proj 5, W0 4 -> 45; state: A, S 4 + 4 and the window 2 * (2 + 2 + 1) = 10
    c = MemoryMixer.cost(cfg, 5)
    assert (c.params, c.state) == (45, 18)
    # FLOPs: linears 2 * (24 + 8 + 4 + 4) = 80; read 2P = 8; 3 gradients of (forward 8, no back-propagation,
    # outer products 8) = 48; momentum eta S 4; NS on a 2x2: 5 * (4*4*2 + 2*8) = 240; W - theta NS(S) 8 -> 308
    assert c.flops_per_token == 80.0 + 308.0


def test_vector_memory_is_the_elementwise_recurrence():
    """structure vector, dot bias, GLA's per-channel gate (HGRN-style): m_t = a_t * m_{t-1} + k_t * v_t, o = q * m."""
    cfg = MemoryConfig(16, 2, 8, 8, structure="vector", retention="vector", gate_rank=4, short_conv=3,
                       output_gate=True, chunk_size=4)
    mod = _perturb(MemoryMixer(cfg))
    assert mod.ops.family == "elementwise"
    x = torch.randn(2, T, 16)
    q, k, v, gates, _ = mod._inputs(x, None, step=False)
    m, outs = torch.zeros(2, 2, 8), []
    for t in range(T):
        m = torch.exp(gates["g"][:, t]) * m + k[:, t] * v[:, t]
        outs.append(q[:, t] * m)
    y_ref = output(mod, cfg, torch.stack(outs, 1), x)
    assert rel_err(mod(x), y_ref) <= 1e-5
    c = MemoryMixer.cost(cfg, T)
    assert c.state == 2 * 8 + 2 * (2 * 16 + 16)  # m: H*V; conv state (k-1) * (2 H K + H V)
    assert c.params == sum(p.numel() for p in mod.parameters())


def test_chunk_size_is_in_the_hash_of_a_mini_batch_memory_only():
    from archspace.compiler import design_hash

    def h(mixer):
        return design_hash({"layers": [{"mixer": {**mixer, "kind": "memory"}}]})

    deep = MINIBATCH_PRESETS["ttt_mlp"].to_dict()
    assert h(deep) != h({**deep, "chunk_size": 8})  # the mini-batch size changes the function
    assert h(deep) == h({**deep, "path": "reference"})
    flat = MemoryConfig(16, 2, 8, 8, bias="l2", key_norm="l2").to_dict()
    assert h(flat) == h({**flat, "chunk_size": 8})  # the exact kernels: an execution detail
