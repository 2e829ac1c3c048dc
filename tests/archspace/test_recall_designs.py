"""The grammar points of issue 16 through the user's path (YAML -> grammar -> compiler -> blocks): Zoology's
[BaseConv, Based] stack and Based's LM stack as designs, the conv mixer's keys, gate initialisations printed by
`archspace show`, and the decays a run starts from logged in its metrics."""
from __future__ import annotations

import json

import pytest
import torch

from archspace.cli import main
from archspace.compiler import build_model, resolve
from archspace.errors import ConfigError
from archspace.grammar import validate_data
from archspace.yamlio import Marks

TASK = {"vocab_size": 64, "train": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 8}],
        "test": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 8}]}


def _resolve(model: dict):
    return resolve(validate_data({"model": model, "task": TASK}, Marks("<test>")))


def test_zoology_based_stack_is_a_yaml_point():
    r = _resolve({"d_model": 32, "mixer": {"preset": "based"}, "mixers": {"C": {"preset": "base_conv"}},
                  "hybrid": {"pattern": "CM"}, "mlp": {"kind": "none"}})
    conv, based = (layer.mixer for layer in r.model.layers)
    assert (conv.kind, conv.short_conv, conv.conv_bias) == ("conv", 3, True)
    assert (based.feature_map, based.normalizer, based.norm, based.heads, based.key_dim, based.value_dim) == (
        "taylor2", "sum", "none", 1, 16, 32)
    assert r.labels == ("base_conv", "based")
    model = build_model(r)
    model(torch.randint(0, 64, (2, 16))).sum().backward()


def test_based_lm_stack_with_sliding_window():
    r = _resolve({"d_model": 32, "mixer": {"preset": "based"},
                  "mixers": {"C": {"preset": "base_conv"}, "S": {"preset": "swa", "window": 8}},
                  "hybrid": {"pattern": "CMSCC"}})
    assert [layer.mixer.kind for layer in r.model.layers] == ["conv", "memory", "attention", "conv", "conv"]


@pytest.mark.parametrize("mixer,key,message", [
    ({"preset": "base_conv", "window": 8}, "window", "applies to attention mixers only"),
    ({"preset": "base_conv", "retention": "scalar"}, "retention", "applies to memory mixers only"),
    ({"type": "conv"}, "short_conv", "needs short_conv"),
    ({"preset": "attention", "conv_bias": True}, "conv_bias", "applies to memory and conv mixers only"),
    ({"preset": "deltanet", "normalizer": "sum"}, "normalizer", "bias: dot"),
    ({"preset": "gated_deltanet", "A_init_min": 20.0}, "A_init_min", "exceeds A_init_max"),
])
def test_bad_keys_point_at_their_key(mixer, key, message):
    with pytest.raises(ConfigError, match=message) as e:
        _resolve({"d_model": 32, "mixer": mixer})
    assert e.value.path[-1] == key


def test_show_prints_the_gate_initialisation(tmp_path, capsys):
    f = tmp_path / "gdn.yaml"
    f.write_text(json.dumps({"model": {"d_model": 32, "mixer": {"preset": "gated_deltanet", "dt_init_max": 0.01}},
                             "task": TASK}))
    assert main(["show", str(f)]) == 0
    out = capsys.readouterr().out
    assert "retention scalar: A_init_min=0 A_init_max=16 dt_init_min=0.001 dt_init_max=0.01 dt_init_floor=0.0001" in out


def test_a_run_logs_the_decays_its_gates_start_from():
    from archspace.training import initial_decays

    r = _resolve({"d_model": 32, "mixer": {"preset": "gated_deltanet", "A_init_min": 2.0, "A_init_max": 2.0,
                                           "dt_init_min": 0.05, "dt_init_max": 0.05},
                  "mixers": {"G": {"preset": "gla", "gate_bias_init": 2.0}}, "hybrid": {"pattern": "MG"}})
    decays = initial_decays(build_model(r))
    assert set(decays) == {"layers.0.mixer", "layers.1.mixer"}
    assert decays["layers.0.mixer"] == pytest.approx([torch.exp(torch.tensor(-0.1)).item()] * 2, rel=1e-5)
    assert torch.tensor(decays["layers.1.mixer"]).shape == (2, 16)
