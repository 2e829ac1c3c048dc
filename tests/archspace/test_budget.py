"""Token and FLOP budgets (archspace.budget): the derived steps, the cap, the error, and what a run logs."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from archspace.blocks.model import SequenceModel
from archspace.compiler import resolve
from archspace.grammar import validate_data
from archspace.yamlio import Marks

TINY = {
    "name": "tiny",
    "model": {"d_model": 16, "n_layers": 2, "hybrid": {"pattern": "MA"}, "mixer": {"preset": "gated_deltanet", "heads": 2}},
    "task": {"vocab_size": 64, "train": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 128}],
             "test": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 32}]},
    "train": {"batch_size": 8, "eval_every": 2, "warmup_steps": 1, "threads": 1, "checkpoint": False},
}


def _resolved(**train):
    data = json.loads(json.dumps(TINY))
    data["train"].update(train)
    return resolve(validate_data(data, Marks("<test>")))


def test_token_budget_sets_the_steps():
    r = _resolved(tokens=1000)
    assert r.train["max_steps"] == math.ceil(1000 / (8 * 16))  # batch 8 x 16 tokens per sequence
    assert r.train["tokens"] == 1000.0


def test_flop_budget_uses_the_designs_accounting():
    plain = _resolved()
    per_token = 3 * SequenceModel.cost_of(plain.model, 16).flops_per_token  # forward + backward
    budget = 40.5 * per_token * 8 * 16
    assert _resolved(flops=budget).train["max_steps"] == 41
    wider = json.loads(json.dumps(TINY))
    wider["model"]["d_model"] = 32
    wider["train"]["flops"] = budget
    assert resolve(validate_data(wider, Marks("<test>"))).train["max_steps"] < 41  # a bigger model gets fewer steps


def test_an_explicit_max_steps_caps_a_budget_and_plain_designs_keep_theirs():
    assert _resolved(tokens=1e6, max_steps=5).train["max_steps"] == 5
    assert _resolved(tokens=1000, max_steps=500).train["max_steps"] == 8
    assert _resolved(max_steps=7).train["max_steps"] == 7
    assert _resolved().train["max_steps"] == 2000  # the grammar's default, no budget


def test_two_budgets_are_an_error_with_file_line_col(tmp_path):
    f = tmp_path / "both.yaml"
    f.write_text("model: {d_model: 16}\ntrain:\n  tokens: 1e6\n  flops: 1e12\n")
    proc = subprocess.run([sys.executable, "-m", "archspace.cli", "validate", str(f)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{f}:4:" in proc.stderr and "train.flops" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_logs_tokens_flops_and_parameters_without_embeddings(tmp_path):
    from archspace.training import train

    r = _resolved(tokens=8 * 16 * 4)
    reports = []
    m = train(r, tmp_path / "run", progress=False, report=lambda step, metrics: reports.append(metrics))
    assert m["steps"] == 4 and m["tokens"] == 4 * 8 * 16
    cost = SequenceModel.cost_of(r.model, 16)
    assert m["train_flops_per_token"] == pytest.approx(3 * cost.flops_per_token)
    assert m["train_flops"] == pytest.approx(3 * cost.flops_per_token * m["tokens"])
    assert m["params_non_embedding"] == m["params"] - 64 * 16  # tied embedding and head: one V x D matrix
    assert [rep["tokens"] for rep in reports] == [2 * 8 * 16, 4 * 8 * 16]
    assert reports[0]["train_flops"] == pytest.approx(m["train_flops"] / 2)
