"""One study folder, two drivers, and kill -9 at three moments (issue 17): a second `archspace study` on a
folder in use is refused and names the running driver; a driver killed the instant a trial finished (Tune
may not have saved that it ended), then in the middle of a trial that keeps no checkpoint, then of one that
does, is replaced by the same command each time. At the end no finished trial was trained again, every
trial is in MLflow exactly once, finished, with each curve logged once per step in increasing order, and
the killed drivers' Ray processes were stopped.

Every wait is on an observable event (a trial folder, rows in the MLflow store, a finished metrics.json),
never on a fixed delay. Half the trials keep checkpoints (a killed one resumes from its last validation)
and half do not (a killed one starts over in a clean MLflow run).
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from test_study_e2e import mlflow_runs, run_cli, write_space

MAX_STEPS, EVAL_EVERY = 160, 8
VAL_STEPS, TRAIN_STEPS = list(range(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY)), list(range(10, MAX_STEPS + 1, 10))


def _driver(space: Path, res: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("ARCHSPACE_RESULTS", None)
    return subprocess.Popen([sys.executable, "-m", "archspace.cli", "study", str(space), "--results-dir", str(res)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finished(study: Path) -> dict:
    """{trial id: (mtime, text)} of the trials whose metrics.json says finished."""
    out = {}
    for p in sorted(study.glob("trials/*/metrics.json")):
        try:
            text, mtime = p.read_text(), p.stat().st_mtime_ns
            if json.loads(text).get("status") == "finished":
                out[p.parent.name] = (mtime, text)
        except (OSError, ValueError):  # being written: looked at again
            continue
    return out


def _wait(what: str, ready, driver: subprocess.Popen, timeout: float = 240, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if driver.poll() is not None:
            pytest.fail(f"the driver ended (rc {driver.returncode}) before {what}:\n{driver.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(poll)


def _kill(driver: subprocess.Popen) -> None:
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(30)
    print(driver.stdout.read()[-3000:])


def _running_trial_validated(study: Path, checkpoint: bool, times: int = 2):
    """The id of a running trial of this checkpoint mode that has logged `times` validations to MLflow and
    that Tune's saved experiment state holds (so the next driver restarts that trial, not a new one).
    The store is read read-only (the driver owns it); a busy or half-created one is looked at again."""
    db = study / "mlflow.db"
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(
                "SELECT t.value, count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid JOIN params p "
                "ON p.run_uuid = m.run_uuid AND p.key = 'train.checkpoint' JOIN tags t ON t.run_uuid = m.run_uuid "
                "AND t.key = 'archspace.trial_id' WHERE m.key = 'val/acc' AND r.lifecycle_stage = 'active' "
                "AND r.status = 'RUNNING' AND p.value = ? GROUP BY m.run_uuid", (str(checkpoint),)).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    states = sorted((study / "tune").glob("experiment_state-*.json"))  # the newest is what a restart restores
    saved = states[-1].read_text(errors="replace") if states else ""
    return next((trial_id for trial_id, n in rows if n >= times and trial_id in saved), None)


@pytest.mark.slow
def test_two_drivers_and_kill_9_leave_each_trial_once_with_monotone_curves(tmp_path):
    space = write_space(tmp_path, "contended", """
        axes:
          lr: [0.001, 0.003]
          train.checkpoint: [true, false]
        search: {sampler: grid}
        pruner: {kind: none}
        resources: {cpus_per_trial: 1, max_concurrent: 1}
        """)
    space.write_text(space.read_text().replace("max_steps: 4", f"max_steps: {MAX_STEPS}")
                     .replace("eval_every: 2", f"eval_every: {EVAL_EVERY}").replace("checkpoint: false", "checkpoint: true"))
    res = tmp_path / "res"
    study = res / "studies" / "contended"
    db = study / "mlflow.db"

    first = _driver(space, res)
    _wait("trial folder", lambda: (study / "trials").is_dir() and any((study / "trials").iterdir()), first)
    second = run_cli(["study", str(space), "--results-dir", str(res)], timeout=120)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"is in use by process {first.pid} " in second.stderr and "Traceback" not in second.stderr
    # kill -9 the moment the first trial has finished (Tune may not have saved that it ended): never trained again
    _wait("a finished trial", lambda: _finished(study), first, poll=0.02)
    _kill(first)
    finished_before = _finished(study)
    again = _driver(space, res)
    # ... then in the middle of a trial that keeps no checkpoint, so that the next driver starts it over...
    _wait("two validations of a trial without checkpoints", lambda: _running_trial_validated(study, False), again)
    _kill(again)
    third = _driver(space, res)
    # ... then in the middle of one that keeps them, which the next driver resumes from its last validation
    found = []
    _wait("two validations of a trial with checkpoints",
          lambda: found.append(_running_trial_validated(study, True)) or found[-1], third)
    _kill(third)
    done = study / "trials" / found[-1] / "metrics.json"
    mid_trial = not done.exists() or json.loads(done.read_text()).get("status") != "finished"
    leftovers = json.loads((study / "ray_processes.json").read_text())["pids"]

    last = run_cli(["study", str(space), "--results-dir", str(res)])
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert "resuming study contended" in last.stdout

    client, parents, children = mlflow_runs(f"sqlite:///{db}", "contended")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = Counter(r.data.tags["archspace.trial_id"] for r in children)
    assert len(ids) == 4 and set(ids.values()) == {1}, ids  # every trial exactly once
    assert {r.info.status for r in children} == {"FINISHED"}
    sampled = sorted((r.data.params["train.lr"], r.data.params["train.checkpoint"]) for r in children)
    assert sampled == sorted((lr, ck) for lr in ("0.001", "0.003") for ck in ("True", "False"))
    for run in children:
        for key, steps in (("val/acc", VAL_STEPS), ("val/loss", VAL_STEPS), ("train/loss", TRAIN_STEPS),
                           ("test/acc", [MAX_STEPS])):
            logged = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert logged == steps, (run.data.tags["archspace.trial_id"], key, logged)  # once each, increasing
    if mid_trial:  # (unless it finished in the instant between the check and the kill)
        assert json.loads(done.read_text())["resumed_from_step"] > 0  # it continued from its checkpoint
    assert set(ids) <= {p.name for p in (study / "trials").iterdir()}
    summary = json.loads((study / "summary.json").read_text())
    assert summary["counts"]["completed"] == 4 and summary["total"] == 4
    # the trials finished before the first kill were not trained again (same file, same modification time)
    assert 1 <= len(finished_before) < 4 and set(finished_before) <= set(ids)
    for trial_id, stamp in finished_before.items():
        assert _finished(study).get(trial_id) == stamp, f"trial {trial_id} was re-run"
    alive = [pid for pid, start in leftovers if _start_time(pid) == start]
    assert not alive, alive  # the Ray processes of the killed drivers were stopped by PID


def _start_time(pid: int):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
