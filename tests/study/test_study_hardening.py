"""Studies under faults (issue 17): unreachable servers are refused up front, a diverging trial is one
line of output (its traceback in the trial's error.log), and the training curve reaches MLflow."""
from __future__ import annotations

import time

import pytest

from archspace.cli import main
from test_study_e2e import mlflow_runs, run_cli, write_space

AXES = """
    axes:
      lr: [0.001, 0.002]
    search: {sampler: grid}
    pruner: {kind: none}
    resources: {cpus_per_trial: 1, max_concurrent: 1}
    """


@pytest.mark.parametrize("option,value,says", [
    ("--ray-address", "127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),
    ("--ray-address", "no-port", "must look like HOST:PORT"),
    ("--tracking-uri", "http://127.0.0.1:1", "cannot reach the MLflow tracking server at http://127.0.0.1:1"),
    ("--tracking-uri", "file:///tmp/mlruns", "does not accept file: stores"),
])
def test_unreachable_servers_are_refused_before_anything_starts(tmp_path, capsys, option, value, says):
    space = write_space(tmp_path, "servers", AXES)
    t0 = time.perf_counter()
    assert main(["study", str(space), "--results-dir", str(tmp_path / "res"), option, value]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and "Traceback" not in err and err.strip().count("\n") == 0
    assert not (tmp_path / "res" / "studies" / "servers" / "mlflow.db").exists()


def test_diverging_trial_is_one_line_and_the_training_curve_is_logged(tmp_path):
    space = write_space(tmp_path, "curves", AXES)
    space.write_text(space.read_text().replace("max_steps: 4", "max_steps: 20").replace("eval_every: 2", "eval_every: 10"))
    res = tmp_path / "res"
    proc = run_cli(["study", str(space), "--results-dir", str(res)],
                   env_extra={"ARCHSPACE_STUDY_FAULT": "train.lr=0.002:nan"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "ERROR" not in output, output
    failed = [ln for ln in output.splitlines() if " failed " in ln and "non-finite loss" in ln]
    assert len(failed) == 1, output
    study = res / "studies" / "curves"
    client, _, children = mlflow_runs(f"sqlite:///{study / 'mlflow.db'}", "curves")
    by_status = {r.data.tags["archspace.status"]: r for r in children}
    assert set(by_status) == {"completed", "failed"}
    log = study / "trials" / by_status["failed"].data.tags["archspace.trial_id"] / "error.log"
    assert "Traceback" in log.read_text() and "NonFiniteLoss" in log.read_text()
    done = by_status["completed"].info.run_id
    assert [m.step for m in client.get_metric_history(done, "train/loss")] == [10, 20]
    assert [m.step for m in client.get_metric_history(done, "val/acc")] == [10, 20]
    assert [m.step for m in client.get_metric_history(done, "test/acc")] == [20]
