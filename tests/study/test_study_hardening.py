"""Studies under faults (issue 17): unreachable servers are refused up front. (That a diverging trial is one
line of output, its traceback in the trial's error.log, and that the training curve reaches MLflow is checked
in the one end-to-end study with a failing trial, tests/study/test_study_e2e.py.)"""
from __future__ import annotations

import time

import pytest

from archspace.cli import main
from test_study_e2e import write_space

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
