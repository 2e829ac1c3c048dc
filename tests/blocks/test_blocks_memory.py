from __future__ import annotations

import dataclasses

import pytest
import torch

from archspace.blocks.config import MemoryConfig
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.retention import retnet_log_decay

from blocks_testutil import MEMORY_PRESETS, rel_err

PRESETS = sorted(MEMORY_PRESETS)
T_ODD, CHUNK = 37, 16


def _pair(cfg: MemoryConfig):
    chunk = MemoryMixer(dataclasses.replace(cfg, path="chunk", chunk_size=CHUNK))
    ref = MemoryMixer(dataclasses.replace(cfg, path="reference", chunk_size=CHUNK))
    ref.load_state_dict(chunk.state_dict())
    return chunk, ref


def _perturb(mod: torch.nn.Module, std: float = 0.3) -> None:
    """Move weights off their init (unit norm gains, zero biases) so every parameter matters."""
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue  # keep the Mamba2 decay in its initialised range
            p.add_(std * torch.randn_like(p) * (p.abs().mean() + 0.05))


@pytest.mark.parametrize("name", PRESETS)
def test_chunk_matches_reference_outputs_and_grads(name):
    chunk, ref = _pair(MEMORY_PRESETS[name])
    _perturb(chunk)
    ref.load_state_dict(chunk.state_dict())
    x = torch.randn(2, T_ODD, MEMORY_PRESETS[name].d_model)
    w = torch.randn(2, T_ODD, MEMORY_PRESETS[name].d_model)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = []
    for mod, xi in zip((chunk, ref), xs):
        y = mod(xi)
        (y * w).sum().backward()
        ys.append(y.detach())
    assert ys[0].shape == x.shape
    assert rel_err(ys[0], ys[1]) <= 1e-5
    assert rel_err(xs[0].grad, xs[1].grad) <= 1e-5
    grads_ref = dict(ref.named_parameters())
    n = 0
    for pname, p in chunk.named_parameters():
        q = grads_ref[pname]
        assert p.grad is not None and q.grad is not None, pname
        assert p.grad.abs().max() > 0, f"{pname} gets no gradient"
        assert rel_err(p.grad, q.grad) <= 1e-5, pname
        n += 1
    assert n == len(grads_ref)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("path", ["chunk", "reference"])
def test_step_matches_forward(name, path):
    cfg = dataclasses.replace(MEMORY_PRESETS[name], path=path, chunk_size=8)
    mod = MemoryMixer(cfg)
    _perturb(mod)
    B, T = 2, 13
    x = torch.randn(B, T, cfg.d_model)
    with torch.no_grad():
        y, final = mod(x, return_state=True)
        state = mod.init_state(B)
        outs = []
        for t in range(T):
            y_t, state = mod.step(x[:, t], state)
            outs.append(y_t)
    assert rel_err(torch.stack(outs, 1), y) <= 1e-5
    assert set(state) == set(final)
    for key in final:
        assert rel_err(state[key], final[key]) <= 1e-5, key
    assert final["memory"].dtype == torch.float32
    assert final["memory"].shape == (B, cfg.heads, cfg.state_key_dim, cfg.state_value_dim)


@pytest.mark.parametrize("name", PRESETS)
def test_forward_continues_from_state(name):
    cfg = dataclasses.replace(MEMORY_PRESETS[name], chunk_size=8)
    mod = MemoryMixer(cfg)
    _perturb(mod)
    x = torch.randn(2, 21, cfg.d_model)
    with torch.no_grad():
        full = mod(x)
        a, s = mod(x[:, :10], return_state=True)
        b = mod(x[:, 10:], state=s)
    assert rel_err(torch.cat([a, b], 1), full) <= 1e-5


def test_retnet_decay_values():
    g = retnet_log_decay(4)
    expected = torch.tensor([1 - 2.0 ** -5, 1 - 2.0 ** -6, 1 - 2.0 ** -7, 1 - 2.0 ** -8])
    torch.testing.assert_close(g.exp(), expected)
    mod = MemoryMixer(MemoryConfig(16, 4, 4, 4, retention="constant"))
    assert "log_gamma" not in dict(mod.named_parameters())


def test_mamba2_gate_init_ranges():
    mod = MemoryMixer(MemoryConfig(16, 64, 4, 4, retention="scalar"))
    A = torch.exp(mod.A_log.detach())
    assert (A >= 1).all() and (A <= 16).all()
    dt = torch.nn.functional.softplus(mod.dt_bias.detach())
    assert (dt >= 1e-3 * 0.999).all() and (dt <= 1e-1 * 1.001).all()


def test_vector_gate_shape_and_sign():
    cfg = MEMORY_PRESETS["gla"]
    mod = MemoryMixer(cfg)
    x = torch.randn(2, 5, cfg.d_model)
    _, _, _, gates, _ = mod._inputs(x, None, step=False)
    g = gates["g"]
    assert g.shape == (2, 5, cfg.heads, cfg.key_dim) and "beta" not in gates
    assert (g < 0).all() and (g >= torch.nn.functional.logsigmoid(torch.tensor(-1e4)) / cfg.gate_temperature).all()


def test_vector_retention_with_delta_rule_builds():
    """The delta rule with a per-key-channel gate (KDA's transition, issue 13) is a point of the grammar; the delta
    rule still needs l2-normalised keys."""
    mod = MemoryMixer(MemoryConfig(16, 2, 4, 4, bias="l2", retention="vector", key_norm="l2"))
    assert mod.ops.family == "delta_rule"
    with pytest.raises(ValueError, match="key_norm"):
        MemoryConfig(16, 2, 4, 4, bias="l2", retention="vector")


@pytest.mark.parametrize("fmap", ["identity", "elu1", "silu", "relu"])
def test_feature_maps_and_norm_off(fmap):
    cfg = MemoryConfig(16, 2, 4, 4, feature_map=fmap, norm="none", path="reference")
    mod = MemoryMixer(cfg)
    x = torch.randn(1, 6, 16)
    y = mod(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    q, k, *_ = mod._inputs(x, None, step=False)
    if fmap in ("elu1", "relu"):
        assert (q >= 0).all() and (k >= 0).all()
