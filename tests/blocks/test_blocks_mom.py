"""Mixture-of-Memories mixer: chunk vs reference, reduction to MemoryMixer, decoding, aux loss, capacity, cost."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from archspace.blocks.config import MemoryConfig, MoMConfig
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.mom import MoMMixer
from archspace.blocks.registry import block_cost, build_block
from archspace.kernels.log_linear import levels_in_use

from blocks_testutil import K, MEMORY_PRESETS, V, rel_err, rounding_tol

# log-linear memories (Fenwick levels) for every retention the hierarchy admits; few levels, so that
# the clamped top level is reached within a memory's ~10-40 tokens
LOG_LINEAR = {
    "ll_mamba2": dataclasses.replace(MEMORY_PRESETS["mamba2"], hierarchy="log_linear", levels=4),
    "ll_gated_deltanet": dataclasses.replace(MEMORY_PRESETS["gated_deltanet"], hierarchy="log_linear", levels=4),
    "ll_retnet": dataclasses.replace(MEMORY_PRESETS["retnet"], hierarchy="log_linear", levels=3),
    "ll_deltanet": dataclasses.replace(MEMORY_PRESETS["deltanet"], hierarchy="log_linear", levels=5),
}
# the grammar-v1 presets; the transitions of issue 13 are checked inside a Mixture-of-Memories by their own test
# files (test_retention_kda.py, test_update_householder.py, test_retention_hgrn2.py); rwkv7 and mlstm are refused
V1 = ("linear_attention", "retnet", "mamba2", "gla", "deltanet", "gated_deltanet")
ALL_MEMORIES = {**{n: MEMORY_PRESETS[n] for n in V1}, **LOG_LINEAR}
PRESETS = sorted(ALL_MEMORIES)
B, T_ODD, CHUNK = 2, 37, 8
# chunked vs token-loop (fp32 kernels): an output or state entry sums over the tokens' K-dim reads and
# writes, a gradient entry over every (sequence, token, key, value) position
FWD_TOL = rounding_tol(T_ODD * K)
GRAD_TOL = rounding_tol(B * T_ODD * K * V)


def _mom_cfg(name: str, path: str = "chunk", **kw) -> MoMConfig:
    mem = dataclasses.replace(ALL_MEMORIES[name], path=path, chunk_size=CHUNK)
    return MoMConfig(mem, **kw)


def _with_path(cfg: MoMConfig, path: str) -> MoMConfig:
    return dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, path=path))


def _perturb(mod: torch.nn.Module, std: float = 0.3) -> None:
    """Move weights off their init (unit gains, zero biases) so every parameter matters."""
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue  # keep the Mamba2 decay in its initialised range
            p.add_(std * torch.randn_like(p) * (p.abs().mean() + 0.05))


def _random_state(mod: MoMMixer, batch: int) -> dict:
    """A state from which a sequence can continue. Log-linear memories get a different position per
    (sequence, memory), with random values in the level slots in use there and zeros above."""
    state = {k: 0.3 * torch.randn_like(v) for k, v in mod.init_state(batch).items()
             if torch.is_tensor(v) and v.is_floating_point()}
    if mod.cfg.memory.hierarchy == "log_linear":
        mem = mod.cfg.memory
        pos = torch.randint(0, 20, (batch, mod.cfg.memories))
        pos[0, 0] = 0  # a memory that has seen nothing yet
        used = torch.tensor([[levels_in_use(int(p), mem.levels) for p in row] for row in pos])
        in_use = (torch.arange(mem.levels) < used[..., None]).float()  # [B, M, levels]
        state["levels"] = state["levels"] * in_use[:, :, None, :, None, None]
        state["pos"] = pos
        if mod.shared is not None:
            state["shared_pos"] = 13
            state["shared_levels"] = 0.3 * torch.randn(batch, mem.heads, levels_in_use(13, mem.levels),
                                                       mem.key_dim, mem.value_dim)
    return state


def _close(a, b, tol: float, key: str) -> None:
    """States: ints and integer tensors (positions) exactly, floats to ``tol``."""
    if not torch.is_tensor(b) or not b.is_floating_point():
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), key
    else:
        assert a.shape == b.shape, key
        assert rel_err(a, b) <= tol, key


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


# Half fraction of the 2^4 design over (shared_memory, share_kv, top_k, capacity): every pair of
# these axes meets in all four combinations, for every preset.
COMBOS = [
    dict(shared_memory=s, share_kv=kv, top_k=k, capacity=c)
    for s, kv, k in itertools.product((False, True), (False, True), (1, 2))
    for c in [(None, 0.5)[(s + kv + (k == 2)) % 2]]
]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("name", PRESETS)
def test_chunk_matches_reference(name, combo):
    cfg = _mom_cfg(name, memories=4, aux_loss_weight=0.1, **combo)
    chunk = MoMMixer(cfg)
    _perturb(chunk)
    ref = MoMMixer(_with_path(cfg, "reference"))
    ref.load_state_dict(chunk.state_dict())
    x = torch.randn(B, T_ODD, cfg.d_model)
    w = torch.randn(B, T_ODD, cfg.d_model)
    state0 = _random_state(chunk, B)  # continue a sequence: exercises every initial state
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = []
    for mod, xi in zip((chunk, ref), xs):
        y, state = mod(xi, state=state0, return_state=True)
        # the aux loss gives the router a gradient also at top_k = 1 (where renormalised w == 1)
        ((y * w).sum() + mod.aux_loss).backward()
        outs.append((y.detach(), state))
    (yc, sc), (yr, sr) = outs
    assert yc.shape == x.shape
    assert rel_err(yc, yr) <= FWD_TOL
    assert chunk.aux_loss_raw == ref.aux_loss_raw
    assert set(sc) == set(sr) == set(state0)
    for key in sr:
        if key != "shared_levels":  # a log-linear shared memory grows its level slots
            assert torch.as_tensor(sc[key]).shape == torch.as_tensor(state0[key]).shape, key
        _close(sc[key], sr[key], FWD_TOL, key)
    assert rel_err(xs[0].grad, xs[1].grad) <= GRAD_TOL
    ref_params = dict(ref.named_parameters())
    assert set(ref_params) == {n for n, _ in chunk.named_parameters()}
    for pname, p in chunk.named_parameters():
        assert _grad(p).abs().max() > 0, f"{pname} gets no gradient"
        assert rel_err(_grad(p), _grad(ref_params[pname])) <= GRAD_TOL, pname


@pytest.mark.parametrize("name", PRESETS)
def test_single_memory_equals_memory_mixer(name):
    mem_cfg = dataclasses.replace(ALL_MEMORIES[name], chunk_size=CHUNK)
    plain = MemoryMixer(mem_cfg)
    _perturb(plain)
    mom = MoMMixer(MoMConfig(mem_cfg, memories=1, top_k=1, shared_memory=False))
    sd = {k.replace("writers.0.", ""): v for k, v in mom.state_dict().items()}
    assert set(sd) - {"router.weight"} == set(plain.state_dict())
    mom.load_state_dict({k: plain.state_dict().get(k.replace("writers.0.", ""), v)
                         for k, v in mom.state_dict().items()})
    # An identity, checked in fp64: the kernels run both in fp32 on bit-identical inputs, and what
    # remains (projections and their weight gradients over a gathered vs a strided token list) differs
    # only by fp64 rounding, whatever order the CPU's SIMD width or thread count picks.
    plain.double()
    mom.double()
    x = torch.randn(B, T_ODD, mem_cfg.d_model, dtype=torch.float64)
    w = torch.randn(B, T_ODD, mem_cfg.d_model, dtype=torch.float64)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    (y0, s0), (y1, s1) = plain(xs[0], return_state=True), mom(xs[1], return_state=True)
    (y0 * w).sum().backward()
    (y1 * w).sum().backward()
    assert torch.equal(y1, y0)  # same kernels on the same token list: bit for bit
    if mem_cfg.hierarchy == "log_linear":  # MoM stores every level slot, MemoryMixer those in use
        n = s0["levels"].shape[2]
        assert n == levels_in_use(T_ODD, mem_cfg.levels) and s0["pos"] == T_ODD and (s1["pos"] == T_ODD).all()
        assert torch.equal(s1["levels"][:, 0, :, :n], s0["levels"])
        assert not s1["levels"][:, 0, :, n:].any()
    else:
        assert torch.equal(s1["memory"][:, 0], s0["memory"])
    tol = rounding_tol(B * T_ODD, torch.float64)  # a weight gradient sums over the B * T tokens
    assert rel_err(xs[1].grad, xs[0].grad) <= tol, "x"
    plain_params = dict(plain.named_parameters())
    for pname, p in mom.named_parameters():
        if pname != "router.weight":
            assert rel_err(p.grad, plain_params[pname.replace("writers.0.", "")].grad) <= tol, pname


@pytest.mark.parametrize("share_kv", [False, True])
@pytest.mark.parametrize("name", PRESETS)
def test_prefill_then_step_matches_forward(name, share_kv):
    cfg = _mom_cfg(name, memories=3, top_k=2 if share_kv else 1, shared_memory=not share_kv, share_kv=share_kv)
    mod = MoMMixer(cfg)
    _perturb(mod)
    T, a, b = 21, 8, 15
    x = torch.randn(B, T, cfg.d_model)
    with torch.no_grad():
        full, final = mod(x, return_state=True)
        y1, state = mod(x[:, :a], return_state=True)  # chunked prefill in two calls
        y2, state = mod(x[:, a:b], state=state, return_state=True)
        outs = [y1, y2]
        for t in range(b, T):
            _, _, routed = mod._route(x[:, t:t + 1])
            routed = routed[:, 0]  # [B, M]
            y_t, new = mod.step(x[:, t], state)
            for key in ("memory", "levels", "pos", "conv_k", "conv_v"):
                if key not in state:
                    continue
                for bi, m in itertools.product(range(B), range(cfg.memories)):
                    same = torch.equal(new[key][bi, m], state[key][bi, m])
                    # not routed: unchanged, bit for bit; routed: written
                    assert same != bool(routed[bi, m]), (key, t, bi, m)
            state = new
            outs.append(y_t[:, None])
    assert rel_err(torch.cat(outs, 1), full) <= 1e-5
    assert set(state) == set(final)
    for key in final:
        _close(state[key], final[key], 1e-5, key)


def test_reference_forward_with_state_continues():
    cfg = _mom_cfg("gated_deltanet", path="reference", memories=3, top_k=2)
    mod = MoMMixer(cfg)
    _perturb(mod)
    x = torch.randn(B, 9, cfg.d_model)
    with torch.no_grad():
        full = mod(x)
        a, s = mod(x[:, :4], return_state=True)
        b = mod(x[:, 4:], state=s)
    assert rel_err(torch.cat([a, b], 1), full) <= 1e-6


def _hand_aux(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """M * sum_m f_m P_m with the routings counted token by token."""
    Bn, Tn, M = probs.shape
    counts = [0] * M
    for bi in range(Bn):
        for t in range(Tn):
            order = sorted(range(M), key=lambda m: -float(probs[bi, t, m].detach()))
            for m in order[:top_k]:
                counts[m] += 1
    f = torch.tensor(counts, dtype=torch.float32) / (Bn * Tn * top_k)
    return M * (f * probs.mean(dim=(0, 1))).sum()


@pytest.mark.parametrize("top_k", [1, 2])
def test_aux_loss_matches_formula_and_reaches_router(top_k):
    cfg = _mom_cfg("retnet", memories=4, top_k=top_k, aux_loss_weight=0.25)
    mod = MoMMixer(cfg)
    W = torch.randn(4, cfg.d_model) * 0.5
    with torch.no_grad():
        mod.router.weight.copy_(W)
    x = torch.randn(B, 11, cfg.d_model)
    mod(x)
    Wh = W.clone().requires_grad_(True)
    raw = _hand_aux(torch.softmax(x @ Wh.t(), dim=-1), top_k)
    raw.backward()
    assert abs(mod.aux_loss_raw - raw.item()) <= 1e-6
    assert mod.aux_loss.dim() == 0
    torch.testing.assert_close(mod.aux_loss, 0.25 * raw.detach())
    mod.aux_loss.backward()
    torch.testing.assert_close(mod.router.weight.grad, 0.25 * Wh.grad)
    assert mod.router.weight.grad.abs().max() > 0
    others = [p.grad for n, p in mod.named_parameters() if n != "router.weight"]
    assert all(g is None or not g.any() for g in others)


def test_aux_loss_uniform_router_is_one_and_weight_zero_gives_none():
    cfg = _mom_cfg("linear_attention", memories=4, top_k=2, aux_loss_weight=0.0)
    mod = MoMMixer(cfg)
    with torch.no_grad():
        mod.router.weight.zero_()  # p = 1/M everywhere -> f . P = 1/M whatever the routing
    mod(torch.randn(B, 7, cfg.d_model))
    assert mod.aux_loss is None
    assert abs(mod.aux_loss_raw - 1.0) <= 1e-6


@pytest.mark.parametrize("path", ["chunk", "reference"])
def test_capacity_caps_tokens_per_memory(path):
    cfg = _mom_cfg("deltanet", path=path, memories=4, top_k=2, shared_memory=False, capacity=0.1)
    cap = math.ceil(0.1 * T_ODD * 2 / 4)
    assert cap == 2
    mod = MoMMixer(cfg)
    _perturb(mod)
    x = torch.randn(B, T_ODD, cfg.d_model)
    seen = []
    ops = mod.ops

    class Spy:  # the dispatched kernel ops, recording the key lists each whole-sequence call gets
        def __getattr__(self, name):
            return getattr(ops, name)

        def forward(self, path, q, k, *args, **kw):
            seen.append(k.shape)
            return ops.forward(path, q, k, *args, **kw)

    mod.ops = Spy()
    with torch.no_grad():
        y = mod(x)
        _, _, routed = mod._route(x)
    # kept by hand: first `cap` routed tokens of every (sequence, memory) in time order
    kept = routed.clone()
    for bi, m in itertools.product(range(B), range(4)):
        ts = routed[bi, :, m].nonzero().flatten()
        kept[bi, ts[cap:], m] = False
    assert kept.sum(1).max() == cap and routed.sum() > kept.sum()
    # a token dropped by every memory it chose reads nothing: o = 0 -> y = W_o RMSNorm(0) = 0 exactly
    dropped = ~kept.any(-1)  # [B, T]
    assert dropped.any() and (~dropped).any()
    assert (y[dropped] == 0).all()
    assert (y[~dropped].abs().amax(-1) > 0).all()
    if path == "chunk":  # one batched kernel call over B*M padded token lists no longer than the cap
        assert seen == [torch.Size([B * 4, cap, cfg.memory.heads, cfg.memory.key_dim])]


def _numel(mod) -> int:
    return sum(p.numel() for p in mod.parameters())


@pytest.mark.parametrize("shared,share_kv", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("name", PRESETS)
def test_cost_params_and_state_match_module(name, shared, share_kv):
    cfg = _mom_cfg(name, memories=3, top_k=2, shared_memory=shared, share_kv=share_kv)
    mod = MoMMixer(cfg)
    cost = MoMMixer.cost(cfg, 37)
    assert cost.params == _numel(mod)
    assert block_cost(cfg, 37) == cost
    if cfg.memory.hierarchy == "log_linear":
        # level slots in use after balanced routing (each memory sees ceil(37 * top_k / M) tokens,
        # the shared one all 37), plus the conv states as allocated
        mem = cfg.memory
        per_level = mem.heads * mem.key_dim * mem.value_dim
        routed = math.ceil(37 * cfg.top_k / cfg.memories)
        levels = cfg.memories * levels_in_use(routed, mem.levels) + (levels_in_use(37, mem.levels) if shared else 0)
        conv = sum(v.numel() for k, v in mod.init_state(1).items() if k.startswith(("conv", "shared_conv")))
        assert cost.state == per_level * levels + conv
        assert MoMMixer.cost(cfg, 1).state < cost.state  # grows with the length (as log2)
    else:
        assert cost.state == sum(v.numel() for v in mod.init_state(1).values())
        with torch.no_grad():
            _, state = mod(torch.randn(1, 5, cfg.d_model), return_state=True)
        assert cost.state == sum(v.numel() for v in state.values())
    if share_kv:
        assert cost.active_params == cost.params  # one shared write path: every token uses all weights
    else:
        assert cost.active_params < cost.params
        assert cost.params - cost.active_params == (cfg.memories - cfg.top_k) * _numel(mod.writers[0])


def test_cost_by_hand_and_reduction_to_memory_mixer():
    mem = MemoryConfig(4, 1, 2, 3, norm="none")  # linear attention, D=4, H=1, K=2, V=3
    cfg = MoMConfig(mem, memories=2, top_k=1, shared_memory=False)
    # params: router 4*2 = 8, q 4*2 = 8, o_proj 3*4 = 12, per memory k 8 + v 12 = 20 (x2) -> 68
    # active: 8 + 8 + 12 + 20 = 48; state 2 * 1*2*3 = 12
    # flops: 2*(8 + 8 + 12) = 56, k/v linears once (top_k = 1) 40, recurrence write 2*6 + read 2*6 = 24,
    #        mixing 2*V = 6 -> 126
    c = MoMMixer.cost(cfg, 50)
    assert (c.params, c.active_params, c.state, c.flops_per_token) == (68, 48, 12, 126.0)
    one = MoMMixer.cost(dataclasses.replace(cfg, memories=1), 50)
    plain = MemoryMixer.cost(mem, 50)
    assert one.params == plain.params + 4  # + router D*1
    assert one.state == plain.state
    assert one.flops_per_token == plain.flops_per_token + 2 * 4 + 2 * 3  # router + mixing


@pytest.mark.parametrize("name", sorted(LOG_LINEAR))
def test_log_linear_cost_reduces_to_memory_mixer(name):
    """M = 1, top-1, no shared memory costs what the plain log-linear mixer costs, plus the router
    (D params, 2*D FLOPs) and the mixing of the read (2*V per head)."""
    mem = ALL_MEMORIES[name]
    for T in (1, 37, 1000):
        one = MoMMixer.cost(MoMConfig(mem, memories=1, top_k=1, shared_memory=False), T)
        plain = MemoryMixer.cost(mem, T)
        assert one.params == plain.params + mem.d_model
        assert one.state == plain.state
        assert one.flops_per_token == pytest.approx(plain.flops_per_token + 2 * mem.d_model
                                                    + 2 * mem.heads * mem.value_dim)


def test_registry_and_validation():
    cfg = _mom_cfg("mamba2", memories=2, top_k=1)
    assert isinstance(build_block(cfg), MoMMixer)
    assert isinstance(build_block(_mom_cfg("ll_gated_deltanet", memories=2)), MoMMixer)
    with pytest.raises(ValueError, match="log_linear"):  # not a log-linear form: the config cannot exist
        dataclasses.replace(MEMORY_PRESETS["gla"], hierarchy="log_linear")
    with pytest.raises(ValueError, match="top_k"):
        _mom_cfg("gla", memories=2, top_k=3)
    with pytest.raises(ValueError, match="capacity"):
        _mom_cfg("gla", capacity=0.0)
