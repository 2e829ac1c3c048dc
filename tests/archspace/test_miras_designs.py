"""The Miras values and presets through the public path (YAML -> grammar -> compiler -> blocks): presets overridable
key by key, the accounting of `archspace show` against the built model, bad combinations as one-paragraph errors
with file:line:col and exit 2, and one short training run of a deep-memory preset."""
from __future__ import annotations

import json

import pytest

from archspace.cli import main
from archspace.compiler import build_model, resolve
from archspace.grammar import load_design, validate_data
from archspace.yamlio import Marks

TASK = """\
task:
  vocab_size: 64
  train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 64}]
  test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 16}]
"""

ZOO = """\
schema_version: 1
model:
  d_model: 32
  mixer: {preset: titans_lmm, heads: 2}
  attention: {preset: attention, heads: 2}
  mixers:
    T: {preset: ttt_mlp, heads: 2}
    U: {preset: ttt_linear, heads: 2}
    O: {preset: moneta, heads: 2}
    Y: {preset: yaad, heads: 2, mom: {memories: 2, top_k: 1}}
    R: {preset: memora, heads: 2}
    N: {preset: atlas, heads: 2, omega_window: 3}
    L: {preset: longhorn}
    C: {preset: titans_lmm, heads: 2, titans: {variant: mac, segment: 16}}
    V: {preset: gla, heads: 2, structure: vector}
  hybrid: {pattern: "MTUOYRNLCVA"}
""" + TASK


def _write(tmp_path, text):
    p = tmp_path / "design.yaml"
    p.write_text(text)
    return p


def test_every_preset_builds_and_show_counts_the_model(tmp_path, capsys):
    design, _ = load_design(_write(tmp_path, ZOO))
    r = resolve(design)
    axes = [(m.structure, m.bias, m.retention, m.update) for m in
            (layer.mixer if layer.mixer.kind == "memory" else layer.mixer.memory for layer in r.model.layers[:10])]
    assert axes[0] == ("mlp", "l2", "weight_decay", "momentum")  # titans_lmm
    assert axes[3] == ("mlp", "lp", "lq", "gd") and axes[5] == ("mlp", "l2", "kl", "gd")  # moneta, memora
    assert axes[6] == ("mlp", "omega", "weight_decay", "newton_schulz") and axes[7][3] == "implicit"  # atlas, longhorn
    assert axes[9][0] == "vector"
    assert r.model.layers[6].mixer.omega_window == 3  # a preset's key overridden
    model = build_model(r)
    cost = model.cost(16)
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert main(["show", str(_write(tmp_path, ZOO))]) == 0
    assert f"params {cost.params:,}" in capsys.readouterr().out


def test_a_preset_is_overridable_key_by_key(tmp_path):
    text = ZOO.replace("mixer: {preset: titans_lmm, heads: 2}",
                       "mixer: {preset: titans_lmm, heads: 2, depth: 3, expansion: 2.0, update: gd, chunk_size: 8}")
    m = resolve(load_design(_write(tmp_path, text))[0]).model.layers[0].mixer
    assert (m.depth, m.expansion, m.update, m.chunk_size, m.retention) == (3, 2.0, "gd", 8, "weight_decay")


@pytest.mark.parametrize("mixer, key, message", [
    ("{preset: titans_lmm, update: implicit}", "model.mixer", "closed form for linear memories only"),
    ("{preset: longhorn, bias: huber}", "model.mixer", "closed-form minimiser of the l2 loss"),
    ("{preset: gla, structure: vector, update: newton_schulz}", "model.mixer", "Newton-Schulz orthogonalises"),
    ("{preset: titans_lmm, retention: vector}", "model.mixer", "one number per head"),
    ("{preset: ttt_mlp, retention: scalar}", "model.mixer", "token scale"),
    ("{preset: moneta, hierarchy: log_linear}", "model.mixer", "log-linear memory keeps Fenwick levels"),
    ("{preset: titans_lmm, titans: {variant: mac, segment: 20}}", "model.mixer.titans.segment",
     "multiple of chunk_size"),
])
def test_bad_combinations_are_one_paragraph_with_exit_2(tmp_path, capsys, mixer, key, message):
    f = _write(tmp_path, f"schema_version: 1\nmodel:\n  d_model: 32\n  mixer: {mixer}\n" + TASK)
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.strip().count("\n") == 0, err
    assert f"{f}:4:" in err and key in err and message in err, err


def test_a_deep_memory_preset_trains(tmp_path):
    """One short in-process run: finite losses, the mini-batch kernel logged, the costs logged = the model's."""
    from archspace.training import train

    data = {"name": "lmm", "model": {"d_model": 16, "n_layers": 2, "hybrid": {"pattern": "MA"},
                                     "mixer": {"preset": "titans_lmm", "heads": 2, "chunk_size": 8}},
            "task": {"vocab_size": 64, "train": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 64}],
                     "test": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 16}]},
            "train": {"max_steps": 4, "batch_size": 8, "eval_every": 4, "warmup_steps": 1, "threads": 1}}
    r = resolve(validate_data(data, Marks("<test>")))
    m = train(r, tmp_path / "run", progress=False)
    assert m["steps"] == 4 and m["kernel_paths"][0].startswith("minibatch:chunk")
    assert m["params"] == sum(p.numel() for p in build_model(r).parameters())
    for key in ("train/loss", "val/loss", "test/loss"):
        assert m[key] == m[key] and m[key] < 1e3, key  # finite
    logged = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert logged["design_hash"] == r.design_hash
