"""Resume: kill -9 the driver after the first trial finished, run the same command again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from test_study_e2e import mlflow_runs, run_cli, write_space


def _alive(pid: int, start: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == start
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_killed_study_resumes_without_rerunning_or_duplicating(tmp_path):
    space = write_space(tmp_path, "resume", """
        axes:
          hybrid.ratio: ["1:0", "1:1"]
          lr: [0.001, 0.003]
        search: {sampler: grid}
        pruner: {kind: none}
        resources: {cpus_per_trial: 1, max_concurrent: 1}
        """)
    space.write_text(space.read_text().replace("max_steps: 4", "max_steps: 12").replace("eval_every: 2", "eval_every: 4"))
    res = tmp_path / "res"
    study = res / "studies" / "resume"
    env = dict(os.environ)
    env.pop("ARCHSPACE_RESULTS", None)
    driver = subprocess.Popen([sys.executable, "-m", "archspace.cli", "study", str(space), "--results-dir", str(res)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first_done = None
    deadline = time.time() + 150
    try:
        while time.time() < deadline and driver.poll() is None:
            done = sorted((study / "trials").glob("*/metrics.json")) if (study / "trials").exists() else []
            if done:
                first_done = done
                break
            time.sleep(0.2)
        assert first_done, "no trial finished in time"
        os.kill(driver.pid, signal.SIGKILL)  # at once: Tune may not have saved that this trial ended
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    print(driver.stdout.read()[-4000:])
    finished_before = {p.parent.name: (p.stat().st_mtime_ns, p.read_text())
                       for p in (study / "trials").glob("*/metrics.json")}
    assert 1 <= len(finished_before) < 4, finished_before.keys()
    leftovers = json.loads((study / "ray_processes.json").read_text())["pids"]

    proc = run_cli(["study", str(space), "--results-dir", str(res)])
    assert proc.returncode == 0
    assert "resuming study resume" in proc.stdout

    # finished trials were not trained again
    for trial_id, (mtime, text) in finished_before.items():
        p = study / "trials" / trial_id / "metrics.json"
        assert p.stat().st_mtime_ns == mtime and p.read_text() == text, f"trial {trial_id} was re-run"
    # every trial exactly once in MLflow, all finished, and the grid is covered exactly once
    client, parents, children = mlflow_runs(f"sqlite:///{study / 'mlflow.db'}", "resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = Counter(r.data.tags["archspace.trial_id"] for r in children)
    assert set(ids.values()) == {1}, ids
    assert len(ids) == 4
    # a trial the killed driver had started but Tune had not yet saved may leave a directory without results
    assert set(ids) <= {p.name for p in (study / "trials").iterdir()}
    assert set(finished_before) <= set(ids)
    assert {r.info.status for r in children} == {"FINISHED"}
    sampled = sorted((r.data.params["model.hybrid.ratio"], r.data.params["train.lr"]) for r in children)
    assert sampled == sorted((a, b) for a in ("1:0", "1:1") for b in ("0.001", "0.003"))  # = an uninterrupted run
    summary = json.loads((study / "summary.json").read_text())
    assert summary["counts"]["completed"] == 4 and summary["total"] == 4
    # the Ray processes the killed driver left behind were stopped by PID
    time.sleep(1)
    assert not [pid for pid, start in leftovers if _alive(pid, start)]
