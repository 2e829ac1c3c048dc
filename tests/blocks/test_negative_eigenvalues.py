"""Negative eigenvalues of the Hebbian and gated-delta transitions (issue 13 item 5): ``decay_range: [-1, 1]`` turns
a gate's decay a in (0, 1) into a' = 2a - 1 (Grazzi et al. 2024, https://arxiv.org/abs/2411.12537, Mamba's
diagonal transition extended to [-1, 1]). Checked against the recurrences written with a' itself, token by token:

    Hebbian          S_t = Diag(a'_t) S_{t-1} + k_t v_t^T                   (a' per head or per key channel)
    gated delta      S_t = a'_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T  (a' per head)
    read             o_t = scale S_t^T q_t

the module's output, final state and the gradients of the input and of every parameter, on the chunk and
reference paths, with a' of both signs in the run; decoding against the forward; what is refused.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from archspace.blocks.axis import InvalidConfig
from archspace.blocks.config import MemoryConfig
from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.retention import signed_log_decay
from archspace.compiler import resolve
from archspace.grammar import validate_data
from archspace.yamlio import Marks

from blocks_testutil import check_decoding, rel_err

DT = torch.float64
CASES = {
    "mamba-style (scalar, dot)": dict(retention="scalar"),
    "gla (vector, dot)": dict(retention="vector", gate_temperature=1.0),
    "forget gate (dot)": dict(retention="forget"),
    "gated delta rule (scalar, l2)": dict(retention="scalar", bias="l2", key_norm="l2"),
}


def _mixer(kw: dict, path: str = "chunk") -> MemoryMixer:
    cfg = MemoryConfig(16, 2, 4, 6, short_conv=3, output_gate=True, chunk_size=4, decay_range=[-1, 1], path=path,
                       **kw)
    torch.manual_seed(3)
    mod = MemoryMixer(cfg)
    with torch.no_grad():  # move every parameter off its init
        for name, p in mod.named_parameters():
            p.add_(0.3 * torch.randn_like(p) * (p.abs().mean() + 0.05))
        # ... and the gates to a near 0.85 or 0.15 (a' near +-0.7), alternating over heads or channels: decays of
        # both signs, away from a' = 0, where d log|a'| / da = 2 / a' would amplify the fp32 kernels' rounding
        if hasattr(mod, "dt_bias"):  # Mamba2: a = exp(-A softplus(dt)), A = 1
            mod.A_log.zero_()
            mod.dt_bias.copy_(torch.tensor([-1.73, 1.74]).repeat(cfg.heads // 2))
        if hasattr(mod, "gk_up"):  # GLA at temperature 1: a = sigmoid(z)
            mod.gk_up.bias.copy_(torch.tensor([1.7, -1.7]).repeat(mod.gk_up.bias.numel() // 2))
        if hasattr(mod, "f_proj"):  # FoX: a = sigmoid(z)
            mod.f_proj.bias.copy_(torch.tensor([1.7, -1.7]).repeat(cfg.heads // 2))
    return mod.to(DT)


def _formula(mod: MemoryMixer, x: torch.Tensor, S0=None):
    """The module's output and final state with the memory computed token by token from a' = 2 exp(g) - 1."""
    cfg = mod.cfg
    q, k, v, gates, _, x_g = mod._paths(x, None, step=False)
    g_raw = mod.axes.retention.log_decay(mod, cfg, x)  # a = exp(g) of the [0, 1] gate
    a = 2.0 * torch.exp(g_raw) - 1.0  # [B, T, H] or [B, T, H, K]
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=DT) if S0 is None else S0.clone()
    outs = []
    scale = K ** -0.5
    for t in range(T):
        at = a[:, t]
        decay = at[..., None, None] if at.dim() == 2 else at[..., None]
        kt, vt = k[:, t], v[:, t]
        if cfg.bias == "l2":
            b = gates["beta"][:, t][..., None, None]
            S = decay * (S - b * kt[..., None] * (kt[..., None, :] @ S))
            S = S + b * kt[..., None] * vt[..., None, :]
        else:
            S = decay * S + kt[..., None] * vt[..., None, :]
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return output(mod, cfg, torch.stack(outs, 1), x_g), S, a


def test_signed_log_decay_is_2a_minus_1():
    g = torch.log(torch.tensor([1.0, 0.999, 0.75, 0.5 + 1e-9, 0.5, 0.25, 1e-6], dtype=DT))
    log_abs, sign = signed_log_decay(g)
    want = 2.0 * torch.exp(g) - 1.0
    got = sign * torch.exp(log_abs)
    assert torch.allclose(got[want != 0], want[want != 0], rtol=1e-12, atol=0)
    assert sign[4] == 1.0 and log_abs[4] == torch.log(torch.tensor(1e-30, dtype=DT))  # a = 1/2: a' held at 1e-30
    gg = g.clone().requires_grad_(True)
    signed_log_decay(gg)[0].sum().backward()
    assert torch.isfinite(gg.grad).all()


@pytest.mark.parametrize("path", ["chunk", "reference"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_signed_decays_match_the_recurrence_with_every_gradient(name, path):
    mod = _mixer(CASES[name], path)
    ref = _mixer(CASES[name], path)
    x = torch.randn(2, 13, 16, dtype=DT)
    w = torch.randn(2, 13, 16, dtype=DT)
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    y, final = mod(xs[0], return_state=True)
    y_ref, S_ref, a = _formula(ref, xs[1])
    negative = (a < 0).double().mean().item()
    assert 0.1 < negative < 0.9, negative  # both signs occur
    ws = torch.randn_like(S_ref)
    ((y * w).sum() + (final["memory"] * ws).sum()).backward()
    ((y_ref * w).sum() + (S_ref * ws).sum()).backward()
    tol = 1e-5  # the exact kernels compute in fp32 whatever the input dtype
    assert rel_err(y, y_ref) <= tol and rel_err(final["memory"], S_ref) <= tol
    assert rel_err(xs[0].grad, xs[1].grad) <= tol
    grads = dict(ref.named_parameters())
    for pname, p in mod.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, pname
        assert rel_err(p.grad, grads[pname].grad) <= tol, pname


@pytest.mark.parametrize("name", sorted(CASES))
def test_decoding_and_prefill_in_two_calls_equal_the_forward(name):
    check_decoding(_mixer(CASES[name]), T=11, tol=1e-5)


def _hash(mixer: dict) -> str:
    data = {"model": {"d_model": 32, "n_layers": 2, "mixer": mixer},
            "task": {"name": "mqar", "vocab_size": 64, "train": [{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 16}],
                     "test": [{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 16}]}}
    return resolve(validate_data(data, Marks("<test>"))).design_hash


def test_default_range_is_unsigned_and_the_range_is_in_the_hash():
    plain = MemoryConfig(16, 2, 4, 6, retention="scalar")
    assert "g_sign" not in MemoryMixer(plain)._paths(torch.randn(1, 3, 16), None, False)[3]
    signed = dataclasses.replace(plain, decay_range=[-1.0, 1.0])
    assert "g_sign" in MemoryMixer(signed)._paths(torch.randn(1, 3, 16), None, False)[3]
    for retention in ("scalar", "vector", "forget"):
        base = {"bias": "dot", "retention": retention, "heads": 2}
        assert _hash({**base, "decay_range": [0, 1]}) == _hash(base)  # the default, spelt out: the same design
        assert _hash({**base, "decay_range": [-1, 1]}) != _hash(base)


@pytest.mark.parametrize("kw, why", [
    (dict(retention="scalar", decay_range=[-0.5, 1.0]), "must be \\[0, 1\\] or \\[-1, 1\\]"),
    (dict(retention="vector", bias="l2", key_norm="l2"), "does not commute"),
    (dict(retention="scalar", normalizer="sum", feature_map="elu1"), "normaliser"),
    (dict(retention="scalar", hierarchy="log_linear"), "log-linear"),
    (dict(retention="scalar", bias="huber", structure="mlp"), "exact gla and delta-rule kernels"),
    (dict(retention="scalar", bias="l2", key_norm="l2", update="householder"), "update gd"),
])
def test_what_signed_decays_are_refused_with(kw, why):
    kw = {"decay_range": [-1, 1], **kw}
    with pytest.raises(InvalidConfig, match=why):
        MemoryConfig(16, 2, 4, 4, chunk_size=4, **kw)


def test_mixtures_and_titans_over_signed_decays_are_refused(tmp_path):
    from blocks_testutil import design_error

    for extra, why in (("mom: {memories: 2}", "Mixture-of-Memories"), ("titans: {variant: mag}", "Titans")):
        err = design_error(tmp_path, f"{{heads: 2, retention: scalar, decay_range: [-1, 1], {extra}}}")
        assert err is not None and err.kind == "incompatible" and why in str(err), str(err)
