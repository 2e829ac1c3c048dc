"""A study whose objective is the MAD score: every trial runs the MAD sweep instead of one training."""
from __future__ import annotations

import json

import pytest

from test_study_e2e import mlflow_runs, run_cli


@pytest.mark.slow
def test_mad_score_is_a_study_objective(tmp_path):
    space = tmp_path / "madstudy.yaml"
    space.write_text("""
schema_version: 1
name: madstudy
base:
  model: {d_model: 16, n_layers: 2, mixer: {heads: 2}, attention: {preset: attention, heads: 2}}
  train: {checkpoint: false}
axes:
  hybrid.ratio: ["1:0", "0:1"]
objectives: [{metric: val/mad_score, mode: max}, {metric: state_size, mode: min}]
search: {sampler: grid}
pruner: {kind: none}
mad:
  tasks: [in_context_recall, memorization]
  steps: 3
  batch_size: 8
  test_examples: 16
  lrs: [0.001]
  weight_decays: [0.0]
""")
    res = tmp_path / "res"
    proc = run_cli(["study", str(space), "--results-dir", str(res)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = res / "studies" / "madstudy"
    _, parents, children = mlflow_runs(f"sqlite:///{study / 'mlflow.db'}", "madstudy")
    assert len(parents) == 1 and len(children) == 2
    for run in children:
        m = run.data.metrics
        tasks = (m["mad/in_context_recall"], m["mad/memorization"])
        assert all(0.0 <= v <= 1.0 for v in tasks)
        assert abs(m["mad_score"] - sum(tasks) / 2) < 1e-9  # the mean over tasks
        val_tasks = (m["val/mad/in_context_recall"], m["val/mad/memorization"])
        assert abs(m["val/mad_score"] - sum(val_tasks) / 2) < 1e-9  # what the study selected on
        trial_dir = study / "trials" / run.data.tags["archspace.trial_id"]
        scores = json.loads((trial_dir / "mad" / "mad_scores.json").read_text())
        assert len(scores["runs"]) == 2  # one setting per task (baseline) x one lr x one weight decay
        assert abs(scores["mad_score"] - m["mad_score"]) < 1e-9
        assert abs(scores["val_mad_score"] - m["val/mad_score"]) < 1e-9
    summary = json.loads((study / "summary.json").read_text())
    assert summary["counts"]["completed"] == 2
