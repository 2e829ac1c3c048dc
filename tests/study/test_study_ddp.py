"""Several devices per run train with Lightning's DDP (spawned workers, gloo on CPU), here inside a Ray Tune trial
(the same train() that `archspace train` runs), with validation reports relayed from rank 0 to the trial's
session and the run directory written by the launching process."""
from __future__ import annotations

import json

import pytest

from test_study_e2e import mlflow_runs, run_cli

DESIGN = """
model: {d_model: 16, n_layers: 2, hybrid: {pattern: MA}, mixer: {preset: gated_deltanet, heads: 2}, attention: {heads: 2}}
task:
  vocab_size: 64
  train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 256}]
  test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 64}]
train: {max_steps: 8, batch_size: 16, eval_every: 4, warmup_steps: 1, checkpoint: false, devices: 2, threads: 2}
"""


@pytest.mark.slow
def test_ddp_trial_inside_ray_tune(tmp_path):
    space = tmp_path / "ddpstudy.yaml"
    body = "\n".join("  " + line for line in DESIGN.strip().splitlines())
    space.write_text(f"""schema_version: 1
name: ddpstudy
base:
{body}
axes:
  lr: [0.003]
search: {{sampler: grid}}
pruner: {{kind: asha, metric: val/acc, mode: max, grace_period: 1, reduction_factor: 2}}
resources: {{cpus_per_trial: 2}}
""")
    res = tmp_path / "res"
    proc = run_cli(["study", str(space), "--results-dir", str(res)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, _, children = mlflow_runs(f"sqlite:///{res / 'studies' / 'ddpstudy' / 'mlflow.db'}", "ddpstudy")
    assert len(children) == 1
    run = children[0]
    assert run.info.status == "FINISHED", run.data.tags
    hist = client.get_metric_history(run.info.run_id, "val/acc")
    assert sorted({m.step for m in hist}) == [4, 8]  # intermediate reports from the DDP workers
    assert "test/acc" in run.data.metrics
    # the run directory of the two-process training, as `archspace train` leaves one (the same train() launches the
    # spawned workers there and here): rank 0's validation rows reached the launching process, the weights are saved
    trial = res / "studies" / "ddpstudy" / "trials" / run.data.tags["archspace.trial_id"]
    metrics = json.loads((trial / "metrics.json").read_text())
    assert metrics["steps"] == 8 and 0.0 <= metrics["test/acc"] <= 1.0
    history = (trial / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    assert [int(r.split(",")[0]) for r in history[1:] if r.split(",")[header.index("val/acc")]] == [4, 8]
    assert (trial / "model.safetensors").stat().st_size > 0
