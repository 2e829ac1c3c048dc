"""Training: reproducible metrics, files written beside the run, non-finite loss detection."""
import json

import pytest
import torch

from archspace.compiler import build_model, resolve
from archspace.grammar import validate_data
from archspace.yamlio import Marks

TINY = {
    "name": "tiny",
    "model": {"d_model": 16, "n_layers": 2, "hybrid": {"pattern": "MA"}, "mixer": {"preset": "gated_deltanet", "heads": 2}},
    "task": {"vocab_size": 64, "train": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 128}],
             "test": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 32},
                      {"seq_len": 32, "num_kv_pairs": 4, "num_examples": 32}]},
    "train": {"max_steps": 6, "batch_size": 16, "eval_every": 3, "warmup_steps": 2, "threads": 1},
}


def _resolved(**train):
    data = json.loads(json.dumps(TINY))
    data["train"].update(train)
    return resolve(validate_data(data, Marks("<test>")))


def test_same_file_and_seed_give_the_same_metrics(tmp_path):
    from archspace.training import train

    a = train(_resolved(), tmp_path / "a", progress=False)
    b = train(_resolved(), tmp_path / "b", progress=False)
    for key in ("test/acc", "test/loss", "test/acc/seq16_kv2", "test/acc/seq32_kv4", "val/loss", "train/loss"):
        assert a[key] == b[key], key
    c = train(_resolved(seed=1), tmp_path / "c", progress=False)
    assert c["test/loss"] != a["test/loss"]


def test_run_directory_contents_and_reports(tmp_path):
    from archspace.training import train

    reports = []
    m = train(_resolved(), tmp_path / "run", progress=False, report=lambda step, metrics: reports.append((step, metrics)))
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"resolved.yaml", "history.csv", "metrics.json", "checkpoints"} <= files
    assert [s for s, _ in reports] == [3, 6]
    assert {"val/acc", "val/loss", "params", "state_size", "flops_per_token"} <= set(reports[-1][1])
    assert m["steps"] == 6 and m["kernel_paths"] == ["delta_rule:chunk", "sdpa"]
    assert m["params"] == sum(p.numel() for p in build_model(_resolved()).parameters())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["design_hash"] == _resolved().design_hash


def test_non_finite_loss_is_detected():
    from archspace.training import NonFiniteLoss, RecallModule

    r = _resolved()
    module = RecallModule(r.to_dict(), ["s"])
    with torch.no_grad():
        module.model.embed.weight.fill_(float("nan"))
    batch = {"input_ids": torch.randint(0, 64, (2, 16)), "labels": torch.randint(0, 64, (2, 16)),
             "slice": torch.zeros(2, dtype=torch.long)}
    with pytest.raises(NonFiniteLoss):
        module.training_step(batch, 0)
