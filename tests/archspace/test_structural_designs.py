"""Issue-4 grammar end to end: per-layer mixers, repeated patterns, MoM / Titans / log-linear / MoE designs
validate, resolve, account, train a few steps and export with a passing self-check."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from archspace.compiler import build_model, resolve
from archspace.errors import ConfigError
from archspace.grammar import load_design, parse_pattern

ZOO = """
schema_version: 1
name: zoo
model:
  d_model: 16
  mixer: {preset: gated_deltanet, heads: 2}
  attention: {preset: attention, heads: 2}
  mixers:
    G: {preset: gla, heads: 2}
    S: {preset: swa, heads: 2, window: 4}
    L: {preset: mamba2, heads: 2, hierarchy: log_linear, levels: 6, chunk_size: 8}
    R: {preset: deltanet, heads: 2, mom: {memories: 3, top_k: 2, aux_loss_weight: 0.1}}
    H: {preset: gated_deltanet, heads: 2, hierarchy: log_linear, levels: 4, chunk_size: 8,
        mom: {memories: 2, top_k: 1, shared_memory: true}}
    C: {preset: gated_deltanet, heads: 2, titans: {variant: mac, segment: 8, persistent_tokens: 2}}
    T: {preset: mamba2, heads: 2, titans: {variant: mag, window: 6, persistent_tokens: 2}}
  hybrid: {pattern: "MG x 2 SLRHCTA"}
  mlp: {kind: moe, experts: 4, top_k: 2, hidden_mult: 1.0}
task:
  vocab_size: 64
  train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 64}]
  test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 32}]
train: {max_steps: 10, batch_size: 8, eval_every: 10, warmup_steps: 1, checkpoint: false}
"""


def _write(tmp_path, text, name="design.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("pattern, letters", [
    ("MMAM", "MMAM"), ("MMMA x 4", "MMMA" * 4), ("MA x 2 MM", "MAMAMM"), ("MA*3", "MAMAMA"),
    (["M", "A"], "MA"), (["MMA x 2", "A"], "MMAMMAA"),
])
def test_pattern_syntax(pattern, letters):
    assert "".join(parse_pattern(pattern)) == letters


@pytest.mark.parametrize("pattern", ["", "mma", "MA x", "MA x 0", "M-A", [], [1]])
def test_pattern_syntax_rejects(pattern):
    assert parse_pattern(pattern) is None


def test_zoo_resolves_per_layer_and_accounts(tmp_path):
    design, _ = load_design(_write(tmp_path, ZOO))
    r = resolve(design)
    assert r.layout == "MGMGSLRHCTA"
    kinds = [layer.mixer.kind for layer in r.model.layers]
    assert kinds == ["memory", "memory", "memory", "memory", "attention", "memory", "mom", "mom", "titans", "titans",
                     "attention"]
    assert r.model.layers[4].mixer.window == 4 and r.model.layers[10].mixer.window is None  # SWA vs global per layer
    assert r.model.layers[1].mixer.retention == "vector" and r.model.layers[0].mixer.bias == "l2"  # two memories
    assert r.model.layers[5].mixer.hierarchy == "log_linear"
    assert r.model.layers[7].mixer.memory.hierarchy == "log_linear"  # a MoM of log-linear memories
    assert r.model.layers[8].mixer.variant == "mac" and r.model.layers[8].mixer.attention.window is None
    assert r.model.layers[9].mixer.attention.window == 6
    assert r.attention_layers == 2
    assert r.labels[6] == "mom3xdeltanet" and r.labels[8] == "titans_mac(gated_deltanet)"
    assert "MGMGSLRHCTA" in r.to_yaml()  # the resolved file shows the explicit per-layer list
    model = build_model(r)
    cost = model.cost(16)
    n = sum(p.numel() for p in model.parameters())
    assert cost.params == n
    assert cost.active < cost.params  # MoE top-2 of 4 and MoM top-2 of 3
    ids = torch.randint(0, 64, (2, 16))
    h = model(ids)
    aux = model.aux_loss()
    assert aux is not None and aux.item() > 0  # MoE and MoM load-balancing losses
    (model.logits(h).square().mean() + aux).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("mixer, message", [
    ("{preset: gla, hierarchy: log_linear}", "log-linear memory is implemented for scalar"),
    ("{preset: mamba2, mom: {memories: 2, top_k: 1}, titans: {variant: mac}}", "there is no single state to read"),
])
def test_incompatible_structures_exit_2(tmp_path, mixer, message):
    p = _write(tmp_path, f"model:\n  d_model: 16\n  mixer: {mixer}\n")
    with pytest.raises(ConfigError) as e:
        load_design(p)
    assert e.value.kind == "incompatible" and message in str(e.value) and "design.yaml:3" in str(e.value)


@pytest.mark.parametrize("variant", ["mag", "mal"])
def test_titans_over_a_mixture_of_memories(tmp_path, variant):
    """mag and mal take a Mixture-of-Memories as their memory branch: it compiles, is accounted, logs its
    kernels, and trains with its load-balancing loss."""
    from archspace.blocks.dispatch import kernel_paths
    from archspace.blocks.model import SequenceModel

    p = _write(tmp_path, "model:\n  d_model: 16\n  hybrid: {pattern: MA}\n  mixer: {preset: gated_deltanet, heads: 2, "
               f"mom: {{memories: 3, top_k: 2}}, titans: {{variant: {variant}, window: 8}}}}\n"
               "  attention: {preset: attention, heads: 2}\n")
    r = resolve(load_design(p)[0])
    mixer = r.model.layers[0].mixer
    assert (mixer.kind, mixer.memory.kind, mixer.memory.memories) == ("titans", "mom", 3)
    assert r.labels[0] == f"titans_{variant}(mom3xgated_deltanet)"
    assert kernel_paths(r.model)[0] == f"titans-{variant}(mom3(delta_rule:chunk)+sdpa:window8)"
    model = SequenceModel(r.model)
    assert sum(p.numel() for p in model.parameters()) == model.cost(16).params
    h = model(torch.randint(0, 64, (2, 16)))
    aux = model.aux_loss()
    assert aux is not None and aux.item() > 0  # the mixture's load-balancing loss reaches the model
    (model.logits(h).square().mean() + aux).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_bad_pattern_letter_names_file_line_and_key(tmp_path):
    p = _write(tmp_path, """
        model:
          mixers: {G: {preset: gla}}
          hybrid: {pattern: "MGQ x 2"}
        """)
    with pytest.raises(ConfigError) as e:
        load_design(p)
    text = str(e.value)
    assert "design.yaml:4" in text and "model.hybrid.pattern" in text and "'Q'" in text and "G (from model.mixers)" in text
    p = _write(tmp_path, "model:\n  mixers: {Gx: {preset: gla}}\n")
    with pytest.raises(ConfigError, match="one upper-case letter"):
        load_design(p)
    p = _write(tmp_path, "model:\n  mixer: {preset: mamba2, mom: {memories: 2, top_k: 3}}\n")
    with pytest.raises(ConfigError, match="top_k 3 exceeds memories 2"):
        load_design(p)


@pytest.mark.slow
def test_zoo_trains_and_exports(tmp_path):
    """A few steps of training (aux loss logged), then an export whose self-check compares logits."""
    design = _write(tmp_path, ZOO)
    res = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-m", "archspace.cli", "train", str(design), "--results-dir", str(res)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((res / "runs").iterdir())
    history = (run / "history.csv").read_text()
    assert "train/aux_loss" in history.splitlines()[0]
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["active_params"] < metrics["params"]
    assert "log_linear:chunk" in metrics["kernel_paths"] and "mom3(delta_rule:chunk)" in metrics["kernel_paths"]
    assert "mom2(log_linear:chunk)" in metrics["kernel_paths"]
    assert "titans-mac(delta_rule:chunk+sdpa)" in metrics["kernel_paths"]
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "archspace.cli", "export", str(run), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for file, cls in (("mom.py", "class MoMMixer"), ("titans.py", "class TitansMixer"), ("moe.py", "class MoEMLP"),
                      ("log_linear.py", "def chunk_log_linear")):
        assert cls in (out / file).read_text()
