"""Retention `forget`: the Forgetting Transformer's data-dependent forget gate per head (Lin et al. 2025,
https://arxiv.org/abs/2503.02130), a_t = sigmoid(w_f^T x_t + b_f), as the decay of a memory mixer:

    dot:  S_t = a_t S_{t-1} + k_t v_t^T                          o_t = K**-0.5 S_t^T q_t
    l2:   S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T

checked against that recurrence written here (run in fp64), through the grammar, in a Mixture-of-Memories and
as a log-linear memory."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.config import MemoryConfig, MoMConfig
from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.mom import MoMMixer

from blocks_testutil import rel_err

D, H, K, V, T = 24, 2, 6, 5, 29
# The kernels compute in fp32 (an fp32 state whatever the input dtype): max |diff| / max |reference| within 1e-5,
# about 100 fp32 ulps (1.2e-7) accumulated over the T steps, as the other kernel and block tests allow.
TOL = 1e-5


def _cfg(bias: str, **kw) -> MemoryConfig:
    return MemoryConfig(D, H, K, V, bias=bias, retention="forget", key_norm="l2" if bias == "l2" else "none",
                        short_conv=3, output_gate=True, chunk_size=8, **kw)


def _perturbed(mod: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mod


def _formula(mod: MemoryMixer, x: torch.Tensor) -> torch.Tensor:
    """The recurrence above, token by token, with a_t computed from f_proj's weights here."""
    cfg = mod.cfg
    q, k, v, gates, _ = mod._inputs(x, None, step=False)  # the shared query / write paths
    a = torch.sigmoid(x @ mod.f_proj.weight.T + mod.f_proj.bias)  # [B, T, H]
    S = x.new_zeros(x.shape[0], H, K, V)
    outs = []
    for t in range(x.shape[1]):
        a_t = a[:, t, :, None, None]
        kt, vt = k[:, t], v[:, t]
        if cfg.bias == "l2":
            b = gates["beta"][:, t, :, None, None]
            S = a_t * (S - b * kt[..., None] * torch.einsum("bhk,bhkv->bhv", kt, S)[:, :, None]) \
                + b * kt[..., None] * vt[:, :, None]
        else:
            S = a_t * S + kt[..., None] * vt[:, :, None]
        outs.append(K ** -0.5 * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return output(mod, cfg, torch.stack(outs, 1), x)


def test_gate_is_the_fox_forget_gate_and_starts_at_one_half():
    mod = MemoryMixer(_cfg("dot"))
    assert torch.equal(mod.f_proj.bias.detach(), torch.zeros(H))  # FoX: bias 0, weights N(0, 0.02^2)
    assert 0.01 < mod.f_proj.weight.std().item() < 0.03
    x = torch.randn(2, T, D)
    g = mod._inputs(x, None, step=False)[3]["g"]
    assert g.shape == (2, T, H)
    torch.testing.assert_close(g, F.logsigmoid(x @ mod.f_proj.weight.T + mod.f_proj.bias))
    assert (g < 0).all()


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("bias", ["dot", "l2"])
def test_mixer_equals_the_recurrence_outputs_and_gradients(bias, path):
    mod = _perturbed(MemoryMixer(_cfg(bias, path=path)))
    mod64 = copy.deepcopy(mod).double()
    x = torch.randn(2, T, D, requires_grad=True)
    x64 = x.detach().double().requires_grad_(True)
    w = torch.randn(2, T, D)
    y, y_ref = mod(x), _formula(mod64, x64)
    assert rel_err(y.detach(), y_ref.detach()) <= TOL
    (y * w).sum().backward()
    (y_ref * w.double()).sum().backward()
    assert rel_err(x.grad, x64.grad) <= TOL
    ref = dict(mod64.named_parameters())
    for name, p in mod.named_parameters():
        assert p.grad.abs().max() > 0, name
        assert rel_err(p.grad, ref[name].grad) <= TOL, name


@pytest.mark.parametrize("bias", ["dot", "l2"])
def test_decoding_equals_the_forward(bias):
    mod = _perturbed(MemoryMixer(_cfg(bias)))
    x = torch.randn(2, T, D)
    with torch.no_grad():
        y, final = mod(x, return_state=True)
        state, steps = None, []
        for t in range(T):
            y_t, state = mod.step(x[:, t], state)
            steps.append(y_t)
    assert rel_err(torch.stack(steps, 1), y) <= TOL
    assert rel_err(state["memory"], final["memory"]) <= TOL


def test_costs():
    cfg = _cfg("dot")
    plain = MemoryMixer.cost(dataclasses.replace(cfg, retention="none"), T)
    cost = MemoryMixer.cost(cfg, T)
    assert cost.params == sum(p.numel() for p in MemoryMixer(cfg).parameters())
    assert cost.params == plain.params + D * H + H  # f_proj and its bias
    assert cost.state == plain.state
    assert cost.flops_per_token == plain.flops_per_token + 2 * D * H + H * K * V  # the projection, the decay


@pytest.mark.parametrize("hierarchy", ["none", "log_linear"])
def test_mixture_of_memories_and_log_linear(hierarchy):
    """Inside a Mixture-of-Memories (chunked lists vs the token loop) and as a log-linear memory (chunk vs loop)."""
    mem = _cfg("l2", hierarchy=hierarchy, levels=4)
    if hierarchy == "log_linear":
        a, b = MemoryMixer(mem), MemoryMixer(dataclasses.replace(mem, path="reference"))
    else:
        cfg = MoMConfig(mem, memories=3, top_k=2)
        a, b = MoMMixer(cfg), MoMMixer(dataclasses.replace(cfg, memory=dataclasses.replace(mem, path="reference")))
    b.load_state_dict(_perturbed(a).state_dict())
    x = torch.randn(2, T, D)
    with torch.no_grad():
        assert rel_err(a(x), b(x)) <= TOL


def test_the_grammar_takes_it(tmp_path):
    from archspace.compiler import build_model, resolve
    from archspace.grammar import json_schema, load_design

    f = tmp_path / "d.yaml"
    f.write_text("model:\n  d_model: 16\n  mixer: {preset: gated_deltanet, retention: forget}\n"
                 "task: {vocab_size: 64, train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 8}],"
                 " test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 8}]}\n")
    design, _ = load_design(f)
    resolved = resolve(design)
    assert resolved.model.layers[0].mixer.retention == "forget"
    model = build_model(resolved)
    model.logits(model(torch.randint(0, 64, (1, 16)))).sum().backward()
    assert "forget" in json_schema()["$defs"]["MixerSpec"]["properties"]["retention"]["enum"]
