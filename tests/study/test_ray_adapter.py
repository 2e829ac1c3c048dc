"""The Ray Tune internals the study runner relies on (archspace/study/ray_adapter.py) still exist: this test
fails when a Ray upgrade changes them. Checked without starting Ray; the end-to-end study tests use them for real."""
from __future__ import annotations

import inspect

import pytest

tune = pytest.importorskip("ray.tune")


def _trainable(config):
    pass


@pytest.fixture
def tuner(tmp_path):
    """A Tuner that is never fitted (no Ray started); its experiment directory under tmp_path."""
    return tune.Tuner(_trainable, run_config=tune.RunConfig(storage_path=str(tmp_path), name="t"))


def test_restored_run_config_takes_live_callbacks(tuner):
    from archspace.study.ray_adapter import swap_callbacks

    live = [object()]
    swap_callbacks(tuner, live)
    assert tuner._local_tuner.get_run_config().callbacks is live


def test_experiment_trials_come_from_the_experiment_analysis(tuner):
    from ray.tune import ExperimentAnalysis
    from ray.tune.impl.tuner_internal import TunerInternal

    from archspace.study.ray_adapter import experiment_trials

    assert experiment_trials(tuner) == []  # before fit()
    # fit() keeps its ExperimentAnalysis on the internal tuner, and that holds the Trial objects
    assert "self._experiment_analysis = ExperimentAnalysis(" in inspect.getsource(TunerInternal)
    assert "self.trials = " in inspect.getsource(ExperimentAnalysis.__init__)

    class Trial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    class Analysis:
        trials = [Trial("b"), Trial("a")]

    tuner._local_tuner._experiment_analysis = Analysis()
    assert [t.trial_id for t in experiment_trials(tuner)] == ["a", "b"]


def test_a_changed_internal_is_named():
    from archspace.study.ray_adapter import experiment_trials, swap_callbacks

    class NotATuner:
        pass

    for fn, args in ((experiment_trials, ()), (swap_callbacks, ([],))):
        with pytest.raises(RuntimeError, match="ray_adapter.py"):
            fn(NotATuner(), *args)
