"""Gate initialisations are grammar fields (issue 16): the options of the retention values draw what they say,
presets keep their papers' values, a changed initialisation changes the design hash, and a design that does not
touch them keeps the hash it had before they existed."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archspace.blocks.config import InvalidConfig, MemoryConfig
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.presets import PRESETS, memory_preset
from archspace.compiler import resolve
from archspace.grammar import validate_data
from archspace.yamlio import Marks

HEADS = 4096  # one draw per head: enough draws to check the distributions' ends and quantiles


def _scalar(**kw) -> MemoryMixer:
    return MemoryMixer(MemoryConfig(8, HEADS, 1, 1, retention="scalar", **kw))


def test_scalar_gate_draws_from_its_ranges():
    m = _scalar(A_init_min=2.0, A_init_max=4.0, dt_init_min=1e-3, dt_init_max=1e-2, dt_init_floor=2e-3)
    A = m.A_log.detach().exp()
    dt = F.softplus(m.dt_bias.detach().double())
    assert A.min() >= 2.0 and A.max() <= 4.0 and abs(A.mean().item() - 3.0) < 0.05
    assert dt.min() >= 2e-3 * (1 - 1e-6) and dt.max() <= 1e-2 * (1 + 1e-6)
    # log dt is uniform on [log 1e-3, log 1e-2] before the floor: the floor holds the lower ~30% of the draws
    assert abs((dt <= 2e-3 * (1 + 1e-6)).float().mean().item() - math.log(2) / math.log(10)) < 0.03
    decay = m.cfg.axes.retention.initial_decay(m, m.cfg)
    assert torch.allclose(decay, torch.exp(-A * dt.float()), rtol=1e-6)


def test_gate_bias_options_set_the_initial_decay():
    v = MemoryMixer(MemoryConfig(8, 2, 4, 4, retention="vector", gate_bias_init=3.0, gate_temperature=8.0))
    assert torch.equal(v.gk_up.bias.detach(), torch.full((8,), 3.0))
    assert torch.allclose(v.cfg.axes.retention.initial_decay(v, v.cfg), torch.sigmoid(torch.tensor(3.0)) ** (1 / 8))
    f = MemoryMixer(MemoryConfig(8, 2, 4, 4, retention="forget", forget_bias_init=2.0))
    assert torch.allclose(f.cfg.axes.retention.initial_decay(f, f.cfg), torch.sigmoid(torch.tensor([2.0, 2.0])))


def test_presets_keep_their_papers_initialisation():
    assert (memory_preset("mamba2", 8, 2, 4, 4).A_init_min, memory_preset("mamba2", 8, 2, 4, 4).A_init_max) == (1.0, 16.0)
    gdn = memory_preset("gated_deltanet", 8, 2, 4, 4)
    assert (gdn.A_init_min, gdn.A_init_max, gdn.dt_init_min, gdn.dt_init_max, gdn.dt_init_floor) == (
        0.0, 16.0, 1e-3, 1e-1, 1e-4)
    gla = memory_preset("gla", 8, 2, 4, 4)
    assert (gla.gate_bias_init, gla.gate_rank, gla.gate_temperature) == (0.0, 16, 16.0)
    assert "forget_bias_init" not in PRESETS["gated_deltanet"]


def test_bad_ranges_name_their_key():
    with pytest.raises(InvalidConfig) as e:
        MemoryConfig(8, 2, 4, 4, retention="scalar", A_init_min=5.0, A_init_max=2.0)
    assert e.value.key == "A_init_min"
    with pytest.raises(InvalidConfig) as e:
        MemoryConfig(8, 2, 4, 4, bias="l2", key_norm="l2", retention="scalar", write_scale="dt")
    assert e.value.key == "write_scale"


def _hash(mixer: dict) -> str:
    # the model and task of tools/fingerprint.py's cases, so that hashes recorded by its baselines apply
    data = {"model": {"d_model": 32, "n_layers": 2, "mlp": {"kind": "swiglu"}, "mixer": mixer},
            "task": {"name": "mqar", "vocab_size": 64, "train": [{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 16}],
                     "test": [{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 16}]}}
    return resolve(validate_data(data, Marks("<test>"))).design_hash


def test_a_gate_initialisation_changes_the_design_hash():
    base = {"bias": "dot", "retention": "scalar", "heads": 2}
    h = _hash(base)
    assert _hash({**base, "A_init_min": 1.0, "dt_init_max": 0.1}) == h  # the defaults, spelt out
    assert len({h, _hash({**base, "A_init_min": 0.0}), _hash({**base, "dt_init_max": 0.01}),
                _hash({**base, "dt_init_floor": 1e-3})}) == 4
    vec = {"bias": "dot", "retention": "vector", "heads": 2}
    assert _hash({**vec, "gate_bias_init": 1.0}) != _hash(vec)
    fox = {"bias": "dot", "retention": "forget", "heads": 2}
    assert _hash({**fox, "forget_bias_init": 1.0}) != _hash(fox)


def _axes(bias: str, retention: str, feature_map: str) -> dict:
    """tools/fingerprint.py's case axes/<bias>-<retention>-<feature_map>."""
    return {"type": "memory", "heads": 2, "bias": bias, "retention": retention, "feature_map": feature_map,
            "key_norm": "l2" if bias == "l2" else "none", "short_conv": 3, "output_gate": True, "chunk_size": 8}


def test_designs_without_the_new_fields_keep_their_hashes():
    """Hashes recorded at commit ecb9677, before the gate-initialisation and output-path fields existed
    (/work/fingerprints/ecb9677.pt, the baseline of tools/fingerprint.py): those fields at their defaults stay out
    of the hash, spelt out or not."""
    scalar = _axes("dot", "scalar", "identity")
    assert _hash(scalar) == "48959a97dcb89077"
    assert _hash({**scalar, "normalizer": "none", "scale": None, "norm_group": "head", "gate_position": "after_norm",
                  "conv_bias": False, "write_scale": "none", "A_init_min": 1.0, "dt_init_floor": 1e-4}) == \
        "48959a97dcb89077"
    assert _hash(_axes("dot", "vector", "identity")) == "8053a955c1a8d621"
    assert _hash(_axes("dot", "forget", "elu1")) == "4ac76a1b8ed39f01"
    assert _hash({"preset": "gla", "heads": 2}) == "a88cb4833bd1bbfc"
    assert _hash({"preset": "retnet", "heads": 2}) == "e1728e2f309f6c48"
