"""`archspace study` end to end on tiny designs: MLflow records, failures, exit codes, bad input.

Each study runs in a subprocess (its own Ray, its own signal handlers), as a user would run it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

TINY_BASE = """
base:
  model:
    d_model: 16
    n_layers: 2
    hybrid: {ratio: "1:1"}
    mixer: {preset: gated_deltanet, heads: 2}
    attention: {preset: attention, heads: 2}
  task:
    vocab_size: 64
    train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 64}]
    test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 32}]
  train:
    max_steps: 4
    batch_size: 16
    eval_every: 2
    warmup_steps: 1
    checkpoint: false
"""


def write_space(tmp: Path, name: str, axes: str, extra: str = "") -> Path:
    text = f"schema_version: 1\nname: {name}\n" + TINY_BASE + textwrap.dedent(axes) + textwrap.dedent(extra)
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def run_cli(args: list[str], env_extra: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    env.pop("ARCHSPACE_RESULTS", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "archspace.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    print(f"$ archspace {' '.join(args)}  -> rc {proc.returncode} in {time.time() - t0:.1f} s")
    print(proc.stdout[-6000:])
    print(proc.stderr[-3000:], file=sys.stderr)
    return proc


def mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("archspace.role") == "study"]
    children = [r for r in runs if r.data.tags.get("archspace.role") == "trial"]
    return client, parents, children


def test_malformed_space_exits_2_before_ray(tmp_path):
    space = write_space(tmp_path, "bad", """
        axes:
          hybrid.ratio: ["1:0", "1:1"]
          lrr: [0.001, 0.002]
        """)
    probe = textwrap.dedent(f"""
        import sys
        from archspace.cli import main
        rc = main(["study", {str(space)!r}, "--results-dir", {str(tmp_path / 'res')!r}])
        print("RAY_IMPORTED", "ray" in sys.modules)
        sys.exit(rc)
        """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 2
    assert "lrr" in proc.stderr and "bad.yaml" in proc.stderr  # file and key named
    assert "RAY_IMPORTED False" in proc.stdout
    assert not (tmp_path / "res").exists()  # nothing created, no study directory


@pytest.mark.slow
def test_study_end_to_end_with_a_failing_trial(tmp_path):
    space = write_space(tmp_path, "e2e", """
        axes:
          lr: [0.001, 0.002, 0.003]
        objectives: [{metric: val/acc, mode: max}]
        search: {sampler: grid}
        pruner: {kind: asha, metric: val/acc, mode: max, grace_period: 1, reduction_factor: 2}
        """)
    space.write_text(space.read_text().replace("max_steps: 4", "max_steps: 20").replace("eval_every: 2", "eval_every: 10"))
    res = tmp_path / "res"
    proc = run_cli(["study", str(space), "--results-dir", str(res)],
                   env_extra={"ARCHSPACE_STUDY_FAULT": "train.lr=0.002:nan"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the diverging trial is one line of the study's output (issue 17), its traceback in the trial's error.log
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output and "ERROR" not in output, output
    assert len([ln for ln in output.splitlines() if " failed " in ln and "non-finite loss" in ln]) == 1, output
    study = res / "studies" / "e2e"
    uri = f"sqlite:///{study / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}" in proc.stdout
    assert "top designs" in proc.stdout

    client, parents, children = mlflow_runs(uri, "e2e")
    assert len(parents) == 1
    parent = parents[0]
    trial_dirs = sorted(p.name for p in (study / "trials").iterdir())
    assert len(trial_dirs) == 3
    ids = Counter(r.data.tags["archspace.trial_id"] for r in children)
    assert sorted(ids) == trial_dirs and set(ids.values()) == {1}, ids  # every trial exactly once
    by_lr = {r.data.params["train.lr"]: r for r in children}
    assert set(by_lr) == {"0.001", "0.002", "0.003"}

    failed = by_lr["0.002"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["archspace.status"] == "failed"
    assert "non-finite loss" in failed.data.tags["archspace.error"]
    for lr in ("0.001", "0.003"):
        run = by_lr[lr]
        assert run.info.status in ("FINISHED", "KILLED")  # KILLED only if ASHA stopped it early
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["design_hash"] == run.data.tags["archspace.design_hash"]
        assert int(run.data.params["params"]) > 0 and int(run.data.params["state_size"]) > 0
        assert "val/acc" in run.data.metrics
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "resolved.yaml" in arts
        if run.info.status == "FINISHED":
            assert "test/acc" in run.data.metrics and "test/acc/seq16_kv2" in run.data.metrics
            assert run.data.params["kernel_paths"] == "delta_rule:chunk,sdpa"
            assert len(run.data.params["data_hash"]) == 16
            # every curve reaches MLflow once per step, the training loss too (issue 17)
            for key, steps in (("val/acc", [10, 20]), ("train/loss", [10, 20]), ("test/acc", [20])):
                assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == steps, key
        else:
            assert run.data.tags["archspace.status"] == "pruned"
    assert parent.info.status == "FINISHED"
    parent_arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "summary.json", "space.yaml"} <= parent_arts
    report = (study / "report.md").read_text()
    assert "failed 1" in report and "non-finite loss" in report
    summary = json.loads((study / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1 and summary["total"] == 3
    # the failing trial's reason is also in its run directory
    reasons = [json.loads(p.read_text())["reason"] for p in (study / "trials").glob("*/error.json")]
    assert len(reasons) == 1 and reasons[0].startswith("non-finite loss")
    log = (study / "trials" / failed.data.tags["archspace.trial_id"] / "error.log").read_text()
    assert "Traceback" in log and "NonFiniteLoss" in log


def test_all_trials_failing_exits_1_with_reasons(tmp_path, monkeypatch):
    """Every trial failing, in process: each trial as Ray Tune runs it fails with a one-line reason (error.json,
    error.log), the driver's rows read those reasons back, and the study's verdict is exit 1 with one line per
    reason. (How a failed trial reaches MLflow and the study's output through a real Ray study is
    test_study_end_to_end_with_a_failing_trial.)"""
    from types import SimpleNamespace

    from ray import tune

    from archspace.study.progress import summarize, trial_row
    from archspace.study.runner import EXIT_ALL_FAILED, EXIT_OK, TrialFailed, failure_verdict, run_trial
    from archspace.study.space import GRID_INDEX, load_space

    space = load_space(write_space(tmp_path, "allfail", """
        axes:
          lr: [0.001, 0.002]
        search: {sampler: grid}
        pruner: {kind: none}
        """))
    study_dir = tmp_path / "study"
    trials = []
    for i in range(2):
        trial = SimpleNamespace(trial_id=f"t{i}", status="ERROR", config={GRID_INDEX: i}, last_result={},
                                get_error=lambda: None)
        monkeypatch.setattr(tune, "get_context", lambda t=trial: SimpleNamespace(get_trial_id=lambda: t.trial_id))
        with pytest.raises(TrialFailed, match=r"^out of memory \(MemoryError\): injected"):
            run_trial(dict(trial.config), space=space, study_dir=str(study_dir),
                      execution={"_fault": "train.lr=*:oom"})
        assert "MemoryError" in (study_dir / "trials" / trial.trial_id / "error.log").read_text()
        trials.append(trial)
    rows = [trial_row(t, space, str(study_dir)) for t in trials]
    assert [r["status"] for r in rows] == ["failed", "failed"]
    code, lines = failure_verdict(summarize(rows, space))
    assert code == EXIT_ALL_FAILED == 1
    assert "all 2 trials failed" in lines[0]
    assert lines[1:] == ["  2 x out of memory (MemoryError): injected by ARCHSPACE_STUDY_FAULT"]
    # one trial that completed (or was pruned) makes it a study with failures, exit 0
    rows[0] = {**rows[0], "status": "completed", "reason": None}
    assert failure_verdict(summarize(rows, space)) == (EXIT_OK, [])


def test_existing_study_of_another_space_needs_fresh(tmp_path):
    """A changed space never silently reuses (or deletes) an old study directory."""
    res = tmp_path / "res"
    old = res / "studies" / "clash"
    old.mkdir(parents=True)
    (old / "study.json").write_text(json.dumps({"space_hash": "0000", "space_file": "/elsewhere.yaml"}))
    space = write_space(tmp_path, "clash", """
        axes:
          lr: [0.001, 0.002]
        """)
    from archspace.study.runner import choose_study_dir
    from archspace.study.space import load_space
    from archspace.errors import ConfigError

    s = load_space(space)
    with pytest.raises(ConfigError, match="different space"):
        choose_study_dir(s, res, fresh=False)
    assert choose_study_dir(s, res, fresh=True) == res / "studies" / "clash-2"
    assert (old / "study.json").exists()
