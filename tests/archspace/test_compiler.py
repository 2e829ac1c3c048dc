"""Compiler: layouts, derived fields, canonical hashing, registry, and a model that trains."""
import json

import pytest
import torch

from archspace.compiler import expand_layout, resolve
from archspace.grammar import PRESETS, HybridSpec, validate_data
from archspace.yamlio import Marks, loads

BASE = {
    "model": {"d_model": 32, "n_layers": 4, "mixer": {"preset": "gated_deltanet", "heads": 2}},
    "task": {"vocab_size": 128, "train": [{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 64}],
             "test": [{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 32}]},
}


def _resolve(data):
    return resolve(validate_data(data, Marks("<test>")))


@pytest.mark.parametrize("ratio,placement,n,expected", [
    ("1:0", "interleave", 4, "MMMM"),
    ("0:1", "interleave", 4, "AAAA"),
    ("3:1", "interleave", 8, "MMMAMMMA"),
    ("1:1", "interleave", 4, "MAMA"),
    ("3:1", "top", 8, "MMMMMMAA"),
    ("3:1", "bottom", 8, "AAMMMMMM"),
    ("3:1", "middle", 8, "MMMAAMMM"),
    ("24:1", "interleave", 4, "MMMA"),  # at least one attention layer when the ratio asks for any
    ("1:24", "interleave", 4, None),  # at least one memory layer when the ratio asks for any
])
def test_ratio_layouts(ratio, placement, n, expected):
    got = expand_layout(HybridSpec(ratio=ratio, placement=placement), n)
    if expected is None:
        assert got.count("M") == 1 and len(got) == 4
    else:
        assert got == expected


def test_pattern_layout_and_resolved_layers():
    data = json.loads(json.dumps(BASE))
    data["model"].pop("n_layers")
    data["model"]["hybrid"] = {"pattern": "MAMM"}
    r = _resolve(data)
    assert r.layout == "MAMM" and len(r.model.layers) == 4
    assert [layer.mixer.kind for layer in r.model.layers] == ["memory", "attention", "memory", "memory"]
    m = r.model.layers[0].mixer
    assert (m.key_dim, m.value_dim, m.bias, m.retention, m.short_conv) == (16, 16, "l2", "scalar", 4)
    assert r.model.vocab_size == 128 and r.model.layers[0].mlp.hidden == 64


def test_hash_ignores_key_order_preset_spelling_and_kernel_path():
    a = json.loads(json.dumps(BASE))
    b = {"task": a["task"], "model": {"mixer": {"heads": 2, **{k: v for k, v in PRESETS["gated_deltanet"].items()}},
                                      "n_layers": 4, "d_model": 32}}
    c = json.loads(json.dumps(BASE))
    c["model"]["mixer"]["path"] = "reference"
    c["model"]["mixer"]["chunk_size"] = 16
    ha, hb, hc = (_resolve(x).design_hash for x in (a, b, c))
    assert ha == hb == hc
    d = json.loads(json.dumps(BASE))
    d["model"]["mixer"]["heads"] = 4
    assert _resolve(d).design_hash != ha


def test_preset_override_key_by_key():
    data = json.loads(json.dumps(BASE))
    data["model"]["mixer"] = {"preset": "gla", "output_gate": False, "heads": 4}
    m = _resolve(data).model.layers[0].mixer
    assert (m.retention, m.output_gate, m.heads) == ("vector", False, 4)


def test_resolved_yaml_round_trips():
    from archspace.blocks.config import ModelConfig

    r = _resolve(BASE)
    data, _ = loads(r.to_yaml())
    assert data["design_hash"] == r.design_hash
    assert ModelConfig.from_dict(data["model"]) == r.model


@pytest.mark.parametrize("preset", [p for p in PRESETS])
def test_every_preset_builds_and_trains_a_step(preset):
    from archspace.compiler import build_model

    data = json.loads(json.dumps(BASE))
    data["model"]["mixer"] = {"preset": preset, "heads": 2}
    data["model"]["n_layers"] = 2
    model = build_model(_resolve(data))
    x = torch.randint(0, 128, (2, 21))
    hidden = model(x)
    loss = model.logits(hidden).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
