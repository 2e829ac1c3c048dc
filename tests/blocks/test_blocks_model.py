from __future__ import annotations

import dataclasses

import pytest
import torch

from archspace.blocks.config import AttentionConfig, LayerConfig, MemoryConfig, ModelConfig, SwiGLUConfig
from archspace.blocks.model import Layer, SequenceModel

from blocks_testutil import MEMORY_PRESETS, rel_err

VOCAB = 37


def _hybrid(tie: bool = True, path: str = "chunk") -> ModelConfig:
    mems = [dataclasses.replace(MEMORY_PRESETS[n], path=path, chunk_size=8)
            for n in ("gated_deltanet", "gla", "mamba2", "retnet")]
    mlp = SwiGLUConfig(32, 64)
    layers = (
        LayerConfig(mems[0], mlp),
        LayerConfig(AttentionConfig(32, 4, 8, window=5), mlp),
        LayerConfig(mems[1], None),
        LayerConfig(AttentionConfig(32, 2, 16), mlp),
        LayerConfig(mems[2], mlp),
        LayerConfig(mems[3], mlp),
    )
    return ModelConfig(vocab_size=VOCAB, d_model=32, layers=layers, tie_embeddings=tie)


def _perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                continue
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("tie", [True, False])
def test_step_logits_match_forward(tie):
    model = SequenceModel(_hybrid(tie))
    _perturb(model)
    B, T = 2, 19
    ids = torch.randint(0, VOCAB, (B, T))
    with torch.no_grad():
        hidden = model(ids)
        assert hidden.shape == (B, T, 32)
        ref = model.logits(hidden)
        state = model.init_state(B)
        for t in range(T):
            logits, state = model.step(ids[:, t], state)
            assert logits.shape == (B, VOCAB)
            assert rel_err(logits, ref[:, t]) <= 1e-5, t


def test_prefill_then_step():
    model = SequenceModel(_hybrid())
    _perturb(model)
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        ref = model.logits(model(ids))
        _, state = model(ids[:, :10], return_state=True)
        for t in range(10, 16):
            logits, state = model.step(ids[:, t], state)
            assert rel_err(logits, ref[:, t]) <= 1e-5


def test_chunk_and_reference_models_agree():
    a, b = SequenceModel(_hybrid(path="chunk")), SequenceModel(_hybrid(path="reference"))
    _perturb(a)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, VOCAB, (2, 21))
    assert rel_err(a(ids), b(ids)) <= 1e-5


def test_tied_and_untied_heads():
    tied = SequenceModel(_hybrid(True))
    assert tied.lm_head is None
    h = torch.randn(3, 32)
    torch.testing.assert_close(tied.logits(h), h @ tied.embed.weight.t())
    untied = SequenceModel(_hybrid(False))
    assert untied.lm_head is not None and untied.lm_head.weight.data_ptr() != untied.embed.weight.data_ptr()
    torch.testing.assert_close(untied.logits(h), h @ untied.lm_head.weight.t())


def test_layer_is_pre_norm_residual():
    cfg = LayerConfig(MemoryConfig(16, 2, 4, 4), SwiGLUConfig(16, 32))
    layer = Layer(cfg)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        h = x + layer.mixer(layer.norm1(x))
        expect = h + layer.mlp(layer.norm2(h))
        torch.testing.assert_close(layer(x), expect)
        no_mlp = Layer(LayerConfig(cfg.mixer, None))
        assert no_mlp.mlp is None
        torch.testing.assert_close(no_mlp(x), x + no_mlp.mixer(no_mlp.norm1(x)))


def test_config_roundtrip_builds_identical_model():
    cfg = _hybrid()
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    a = SequenceModel(cfg)
    b = SequenceModel(again)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, VOCAB, (1, 9))
    torch.testing.assert_close(a(ids), b(ids))


def test_backward_reaches_all_parameters():
    model = SequenceModel(_hybrid(False))
    _perturb(model)
    ids = torch.randint(0, VOCAB, (2, 12))
    loss = torch.nn.functional.cross_entropy(model.logits(model(ids)).flatten(0, 1), ids.flatten())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, missing
