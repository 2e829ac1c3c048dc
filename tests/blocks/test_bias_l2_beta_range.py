"""Bias `l2`, option beta_range: the delta rule's step size b = lo + (hi - lo) sigmoid(W_b x). With [0, 2] the
transition I - b k k^T of a unit key has eigenvalue 1 - b in (-1, 1) (Grazzi et al. 2024,
https://arxiv.org/abs/2411.12537): checked against Gated DeltaNet's recurrence written here, and through the grammar
(a field added after grammar v1: designs that leave it at [0, 1] keep their resolved config and design hash)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.memory import MemoryMixer, output
from archspace.blocks.presets import memory_preset

from blocks_testutil import check_against_formula, design_error, perturbed

D, H, K, V = 24, 2, 6, 5


def _formula(mod, x):
    cfg = mod.cfg
    B, T = x.shape[:2]
    q, k, v, _, _ = mod._inputs(x, None, step=False)
    lo, hi = cfg.beta_range
    b = lo + (hi - lo) * torch.sigmoid(mod.b_proj(x))
    a = torch.exp(-torch.exp(mod.A_log) * F.softplus(mod.dt_proj(x) + mod.dt_bias))
    S = x.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        kt, bt = k[:, t], b[:, t, :, None, None]
        H_t = torch.eye(K, dtype=x.dtype) - bt * kt[..., :, None] * kt[..., None, :]  # I - b k k^T, explicit
        S = a[:, t, :, None, None] * (H_t @ S) + bt * kt[..., None] * v[:, t, :, None, :]
        outs.append(K ** -0.5 * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return output(mod, cfg, torch.stack(outs, 1), x)


@pytest.mark.parametrize("path", ["chunk", "reference"])
def test_gated_deltanet_with_negative_eigenvalues(path):
    mod = MemoryMixer(memory_preset("gated_deltanet", D, H, K, V, chunk_size=8, beta_range=(0.0, 2.0), path=path))
    check_against_formula(perturbed(mod), _formula)
    b = mod._inputs(torch.randn(2, 50, D), None, step=False)[3]["beta"]
    assert b.max() > 1.0 and b.max() <= 2.0 and b.min() >= 0.0


def test_grammar_and_design_hash(tmp_path):
    from archspace.compiler import resolve
    from archspace.grammar import load_design

    def resolved(extra: str):
        f = tmp_path / "d.yaml"
        f.write_text("model:\n  d_model: 16\n  mixer: {preset: gated_deltanet" + extra + "}\n")
        return resolve(load_design(f)[0])

    plain, same, neg = resolved(""), resolved(", beta_range: [0, 1]"), resolved(", beta_range: [0, 2]")
    assert "beta_range" not in plain.to_dict()["model"]["layers"][0]["mixer"]
    assert same.design_hash == plain.design_hash
    assert neg.design_hash != plain.design_hash
    assert neg.to_dict()["model"]["layers"][0]["mixer"]["beta_range"] == [0.0, 2.0]
    assert neg.model.layers[0].mixer.beta_range == (0.0, 2.0)
    assert "beta_range: [0, 2]" not in neg.to_yaml() and "- 2.0" in neg.to_yaml()  # a YAML list in resolved.yaml
    for bad in ("[1, 0]", "[0, 2.5]", "[0]"):
        err = design_error(tmp_path, "{preset: gated_deltanet, beta_range: " + bad + "}")
        assert err is not None and "beta_range" in str(err) and str(err).startswith(f"{tmp_path / 'd.yaml'}:3:")
    err = design_error(tmp_path, "{preset: mamba2, beta_range: [0, 2]}")
    assert err is not None and "option of bias: l2" in str(err)
