"""The Ray Tune internals archspace relies on, in one place (tests/study/test_ray_adapter.py fails when Ray
changes them; checked with ray 2.60).

    swap_callbacks(tuner, callbacks)   Tuner.restore takes no RunConfig: a resumed study's callbacks are the
                                       ones pickled with its first run (a dead driver's MLflow client, view);
                                       the restored tuner's RunConfig gets the live ones instead
    experiment_trials(tuner)           every Trial of the experiment after fit(), with its status and last
                                       result: ResultGrid has no Trial objects (no pending/unfinished trials,
                                       no trial ids of errored ones)
"""
from __future__ import annotations


def _internal(tuner):
    try:
        return tuner._local_tuner
    except AttributeError:
        raise RuntimeError(_changed("Tuner._local_tuner")) from None


def _changed(what: str) -> str:
    import ray

    return (f"Ray {ray.__version__} no longer has {what}, which archspace's study runner uses "
            "(archspace/study/ray_adapter.py)")


def swap_callbacks(tuner, callbacks: list) -> None:
    """Make a restored tuner report to ``callbacks`` (see the module docstring)."""
    internal = _internal(tuner)
    if not hasattr(internal, "get_run_config"):
        raise RuntimeError(_changed("TunerInternal.get_run_config"))
    internal.get_run_config().callbacks = callbacks


def experiment_trials(tuner) -> list:
    """Every trial of the experiment, in creation order (empty before fit())."""
    internal = _internal(tuner)
    if not hasattr(internal, "_experiment_analysis"):
        raise RuntimeError(_changed("TunerInternal._experiment_analysis"))
    analysis = internal._experiment_analysis
    if analysis is None:
        return []
    return sorted(analysis.trials, key=lambda t: t.trial_id)
