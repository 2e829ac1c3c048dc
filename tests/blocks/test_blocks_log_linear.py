"""MemoryMixer with hierarchy log_linear (log-linear Mamba2 / Gated DeltaNet, Guo et al. 2025)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from archspace.blocks.config import MemoryConfig
from archspace.blocks.hierarchy import mean_levels_in_use
from archspace.blocks.memory import MemoryMixer
from archspace.kernels.log_linear import levels_in_use

from blocks_testutil import MEMORY_PRESETS, rel_err

T_ODD, CHUNK = 37, 16
PRESETS = ["mamba2", "gated_deltanet"]


def _cfg(name: str, levels: int = 16, **kw) -> MemoryConfig:
    return dataclasses.replace(MEMORY_PRESETS[name], hierarchy="log_linear", levels=levels, **kw)


def _perturb(mod: torch.nn.Module, std: float = 0.3) -> None:
    """Move weights off their init so every parameter (the level projection included) matters."""
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue  # keep the Mamba2 decay in its initialised range
            p.add_(std * torch.randn_like(p) * (p.abs().mean() + 0.05))
        mod.level_proj.weight.add_(torch.randn_like(mod.level_proj.weight))  # lambda far from 1


@pytest.mark.parametrize("levels", [16, 4])
@pytest.mark.parametrize("name", PRESETS)
def test_chunk_matches_reference_outputs_states_grads(name, levels):
    chunk = MemoryMixer(_cfg(name, levels, path="chunk", chunk_size=CHUNK))
    _perturb(chunk)
    ref = MemoryMixer(_cfg(name, levels, path="reference", chunk_size=CHUNK))
    ref.load_state_dict(chunk.state_dict())
    D = chunk.cfg.d_model
    x = torch.randn(2, T_ODD, D)
    w = torch.randn(2, T_ODD, D)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = []
    for mod, xi in zip((chunk, ref), xs):
        y, st = mod(xi, return_state=True)
        ((y * w).sum() + st["levels"].square().sum()).backward()
        outs.append((y.detach(), st))
    (y_c, st_c), (y_r, st_r) = outs
    assert y_c.shape == x.shape
    assert rel_err(y_c, y_r) <= 1e-5
    assert st_c["pos"] == st_r["pos"] == T_ODD
    assert st_c["levels"].shape == (2, chunk.cfg.heads, levels_in_use(T_ODD, levels), chunk.cfg.key_dim,
                                    chunk.cfg.value_dim)
    assert rel_err(st_c["levels"], st_r["levels"]) <= 1e-5
    assert rel_err(xs[0].grad, xs[1].grad) <= 1e-5
    grads_ref = dict(ref.named_parameters())
    assert "level_proj.weight" in grads_ref and "level_proj.bias" in grads_ref
    for pname, p in chunk.named_parameters():
        q = grads_ref[pname]
        assert p.grad is not None and p.grad.abs().max() > 0, f"{pname} gets no gradient"
        assert rel_err(p.grad, q.grad) <= 1e-5, pname


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("name", PRESETS + ["retnet"])
def test_prefill_then_step_equals_forward(name, path):
    cfg = _cfg(name, levels=5, path=path, chunk_size=8)
    mod = MemoryMixer(cfg)
    _perturb(mod)
    B, T, P = 2, 27, 11  # prefill 11 tokens (off the chunk grid), then decode
    x = torch.randn(B, T, cfg.d_model)
    with torch.no_grad():
        y, final = mod(x, return_state=True)
        y_pre, state = mod(x[:, :P], return_state=True)
        outs = [y_pre]
        for t in range(P, T):
            y_t, state = mod.step(x[:, t], state)
            outs.append(y_t[:, None])
            assert state["levels"].shape[2] == levels_in_use(t + 1, cfg.levels)
        # a fresh decode from init_state as well
        s2, outs2 = mod.init_state(B), []
        for t in range(T):
            y_t, s2 = mod.step(x[:, t], s2)
            outs2.append(y_t)
        y_half, s3 = mod(x[:, :P], return_state=True)
        y_rest = mod(x[:, P:], state=s3)
    assert rel_err(torch.cat(outs, 1), y) <= 1e-5
    assert rel_err(torch.stack(outs2, 1), y) <= 1e-5
    assert rel_err(torch.cat([y_half, y_rest], 1), y) <= 1e-5
    assert set(state) == set(final) and state["pos"] == final["pos"] == T
    for key in final:
        if key != "pos":
            assert rel_err(state[key], final[key]) <= 1e-5, key
    assert final["levels"].dtype == torch.float32


@pytest.mark.parametrize("name", PRESETS)
def test_lambda_starts_near_one_and_then_equals_plain_mixer(name):
    cfg = _cfg(name, path="chunk", chunk_size=CHUNK)
    mod = MemoryMixer(cfg)
    lam = torch.nn.functional.softplus(mod.level_proj.bias.detach())
    torch.testing.assert_close(lam, torch.ones_like(lam))
    plain = MemoryMixer(dataclasses.replace(cfg, hierarchy="none"))
    missing = plain.load_state_dict(mod.state_dict(), strict=False)
    assert set(missing.unexpected_keys) == {"level_proj.weight", "level_proj.bias"} and not missing.missing_keys
    x = torch.randn(2, T_ODD, cfg.d_model)
    with torch.no_grad():
        # at init (weights std 0.02, pre-activation std ~0.02 sqrt(D) ~ 0.11) lambda stays near 1
        lam_x = mod._inputs(x, None, step=False)[3]["lam"]
        assert lam_x.shape == (2, T_ODD, cfg.heads, cfg.levels)
        assert (lam_x - 1).abs().mean() < 0.1 and (lam_x > 0).all()
        mod.level_proj.weight.zero_()  # lambda == 1 exactly: the plain mixer
        y, st = mod(x, return_state=True)
        y_p, st_p = plain(x, return_state=True)
    assert rel_err(y, y_p) <= 1e-5
    assert rel_err(st["levels"].sum(2), st_p["memory"]) <= 1e-5


@pytest.mark.parametrize("levels", [16, 3])
@pytest.mark.parametrize("name", PRESETS)
def test_cost_matches_module(name, levels):
    cfg = _cfg(name, levels)
    mod = MemoryMixer(cfg)
    plain = MemoryMixer.cost(dataclasses.replace(cfg, hierarchy="none"), T_ODD)
    for T in (1, 2, T_ODD, 64):
        cost = MemoryMixer.cost(cfg, T)
        assert cost.params == sum(p.numel() for p in mod.parameters())
        assert cost.params == plain.params + cfg.d_model * cfg.heads * levels + cfg.heads * levels
        with torch.no_grad():
            _, st = mod(torch.randn(1, T, cfg.d_model), return_state=True)
        numel = sum(v.numel() for k, v in st.items() if k != "pos")
        assert cost.state == numel, T
        H, K, V = cfg.heads, cfg.key_dim, cfg.value_dim
        assert st["levels"].numel() == H * K * V * min(levels, (T - 1).bit_length() + 1)
    assert MemoryMixer.cost(cfg, 1 << 20).state - MemoryMixer.cost(cfg, 1 << 19).state == (
        H * K * V if levels >= 21 else 0)
    # flops: the plain count plus the projection and the per-level work, averaged over positions
    T = 1000
    n = sum(levels_in_use(t, levels) for t in range(1, T + 1)) / T
    assert mean_levels_in_use(T, levels) == pytest.approx(n, rel=1e-12)
    trans = 4 * K * V if cfg.bias == "l2" else 0
    decay = K * V if cfg.retention != "none" else 0
    plain = MemoryMixer.cost(dataclasses.replace(cfg, hierarchy="none"), T)
    plain_mem = H * ((2 * K * V if cfg.bias == "dot" else 4 * K * V) + decay + 2 * K * V)
    expected = plain.flops_per_token - plain_mem + 2 * cfg.d_model * H * levels + H * (
        2 * K * V + n * (trans + decay + 2 * K * V))
    assert MemoryMixer.cost(cfg, T).flops_per_token == pytest.approx(expected, rel=1e-12)


def test_rejected_combinations():
    with pytest.raises(ValueError, match="log_linear"):
        MemoryMixer(_cfg("gla"))  # vector retention
    with pytest.raises(ValueError, match="log_linear"):
        MemoryMixer.cost(_cfg("gla"), 8)
    with pytest.raises(ValueError, match="power-of-two"):
        MemoryMixer(_cfg("mamba2", chunk_size=12))
    with pytest.raises(ValueError, match="levels"):
        MemoryMixer(_cfg("mamba2", levels=0))
    with pytest.raises(ValueError, match="hierarchy"):
        MemoryMixer(dataclasses.replace(MEMORY_PRESETS["mamba2"], hierarchy="tree"))
