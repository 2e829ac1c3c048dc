"""The driver's MLflow tracker across driver restarts (issue 17, item 2), without Ray: a trial's attempts
report to fresh trackers as a restarted study would, and each curve keeps each step once, in order."""
from __future__ import annotations

import json

import pytest

from archspace.study.space import load_space
from archspace.study.tracking import ATTEMPT_KEY, FINAL_KEY, START_KEY, TRAIN_ROWS_KEY, StudyTracker
from test_study_e2e import write_space


class FakeTrial:
    def __init__(self, trial_id, config, status="RUNNING"):
        self.trial_id, self.config, self.status, self.last_result = trial_id, config, status, {}


def _report(attempt, start, step, train_rows=()):
    return {"val/acc": step / 100, "val/loss": 1 - step / 100, "step": step, ATTEMPT_KEY: attempt,
            START_KEY: start, TRAIN_ROWS_KEY: json.dumps([{"step": s, "train/loss": 2 - s / 100} for s in train_rows])}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating one costs seconds); each test is its own study in it."""
    root = tmp_path_factory.mktemp("store")
    space = load_space(write_space(root, "track", "axes:\n  lr: [0.001, 0.003]\nsearch: {sampler: grid}\n"))
    return f"sqlite:///{root / 'mlflow.db'}", space


@pytest.fixture
def setup(store, tmp_path, request):
    uri, space = store
    trial = FakeTrial("t0001", {"grid_index": 0})
    return lambda: StudyTracker(uri, request.node.name[:40], str(tmp_path), space), trial


def _steps(tracker, key):
    runs = [r for r in tracker.children() if r.data.tags.get("archspace.trial_id") == "t0001"]
    assert len(runs) == 1, runs  # the trial is in MLflow exactly once
    return [m.step for m in tracker.client.get_metric_history(runs[0].info.run_id, key)], runs[0]


def test_resumed_attempt_replays_its_history_and_each_step_is_logged_once(setup):
    make, trial = setup
    first = make()
    first.trial_result(trial, _report("a1", 0, 4))
    first.trial_result(trial, _report("a1", 0, 8, train_rows=[5]))  # the driver is killed after this
    second = make()  # the next driver; the trial resumes from its checkpoint at step 4
    for step, rows in ((4, ()), (8, [5]), (12, [10])):
        second.trial_result(trial, _report("a2", 4, step, rows))
    trial.last_result = {FINAL_KEY: 1, "test/acc": 0.5, "steps": 12, "step": 12}
    second.trial_finished(trial, "completed")
    assert _steps(second, "val/acc")[0] == [4, 8, 12]
    assert _steps(second, "train/loss")[0] == [5, 10]
    assert _steps(second, "test/acc")[0] == [12]


def test_attempt_that_starts_over_gets_a_clean_run(setup):
    make, trial = setup
    first = make()
    first.trial_result(trial, _report("a1", 0, 4))
    first.trial_result(trial, _report("a1", 0, 8))
    old = _steps(first, "val/acc")[1].info.run_id
    second = make()  # no checkpoint: the trial starts over
    for step in (4, 8, 12):
        second.trial_result(trial, _report("a2", 0, step))
    steps, run = _steps(second, "val/acc")
    assert steps == [4, 8, 12] and run.info.run_id != old
    gone = second.client.get_run(old)
    assert gone.info.lifecycle_stage == "deleted" and gone.data.tags["archspace.status"] == "restarted"


def test_curve_sent_while_no_driver_listened_comes_from_history_csv(setup, tmp_path):
    make, trial = setup
    first = make()
    first.trial_result(trial, _report("a1", 0, 4))  # then the driver dies; the trial finishes unheard
    run_dir = tmp_path / "trials" / trial.trial_id
    run_dir.mkdir(parents=True)
    (run_dir / "history.csv").write_text("step,train/loss,val/acc,val/loss\n4,,0.04,0.96\n10,1.9,,\n"
                                         "12,,0.12,0.88\n")
    trial.status, trial.last_result = "TERMINATED", {FINAL_KEY: 1, "test/acc": 0.5, "steps": 12, "step": 12}
    make().reconcile([trial])  # the next driver finds it finished
    second = make()
    assert _steps(second, "val/acc")[0] == [4, 12]
    assert _steps(second, "train/loss")[0] == [10]
    assert _steps(second, "test/acc")[0] == [12]
