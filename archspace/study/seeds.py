"""`seeds: N` on a space: every sampled design is trained N times, as N Tune trials with seeds
train.seed = base seed + 0 .. N-1 (initialisation and data order; the task's data stay the same).

The searcher sees each design once. `Replicates` wraps it: it hands one sampled config to N trials (marked
config["replicate"] = 0 .. N-1) and, when the last of them ends, reports to the searcher the mean of each objective
over the replicates that produced it. Ray's `Repeater` does the same for a single metric, but cannot average
several objectives and does not save its groups, so a resumed study would lose them.

The report then gives each design's mean and a Student-t interval over its seeds (archspace.analysis.stats).
"""
from __future__ import annotations

import copy
import math
from typing import Optional

from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

REPLICATE_KEY = "replicate"


def replicate_of(config: dict) -> int:
    return int(config.get(REPLICATE_KEY, 0) or 0)


def base_seed(space) -> int:
    return int((space.base.get("train") or {}).get("seed", 0))


def replicate_values(space, config: dict) -> dict:
    """The train.seed of a replicate trial ({} for a space with one seed per design)."""
    if getattr(space, "seeds", 1) <= 1:
        return {}
    return {"train.seed": base_seed(space) + replicate_of(config)}


class Replicates(Searcher):
    """Each suggestion of `searcher` becomes `replicates` trials; the searcher is told their mean."""

    def __init__(self, searcher: Searcher, replicates: int):
        self.searcher = searcher
        self.replicates = int(replicates)
        self._groups: dict[str, dict] = {}  # first trial id -> {"config": ..., "results": {trial id: result}}
        self._group_of: dict[str, str] = {}  # trial id -> first trial id of its group
        self._open: Optional[str] = None  # the group still handing out replicates
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = _set_search_properties_backwards_compatible(self.searcher.set_search_properties, metric, mode, config,
                                                         **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def suggest(self, trial_id: str) -> Optional[dict]:
        group = self._groups.get(self._open) if self._open else None
        if group is None or len(group["members"]) >= self.replicates:
            config = self.searcher.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self._open = trial_id
            group = {"config": copy.deepcopy(config), "members": [], "results": {}}
            self._groups[trial_id] = group
        group["members"].append(trial_id)
        self._group_of[trial_id] = self._open
        return {**group["config"], REPLICATE_KEY: len(group["members"]) - 1}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate results stay here: the searcher only ever hears of finished designs (under Tune,
        Optuna's own pruning never acts; early stopping is Tune's scheduler, which sees every trial)."""

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        first = self._group_of.get(trial_id)
        if first is None:
            return
        group = self._groups[first]
        group["results"][trial_id] = None if error else dict(result or {})
        if len(group["results"]) < self.replicates:
            return
        metrics = self.searcher.metric if isinstance(self.searcher.metric, list) else [self.searcher.metric]
        mean = {}
        for m in metrics:
            xs = [float(r[m]) for r in group["results"].values() if r and _finite(r.get(m))]
            if xs:
                mean[m] = sum(xs) / len(xs)
        if len(mean) == len(metrics):
            self.searcher.on_trial_complete(first, result=mean)
        else:
            self.searcher.on_trial_complete(first, result=None, error=True)

    # Tune saves the search state into the experiment directory after every trial event and restores it on resume
    # (SearchGenerator.save_to_dir / restore_from_dir): a wrapper hands over its own state here, the wrapped
    # searcher saves itself. The open groups must survive, or a resumed study's seeds would be lost.
    def get_state(self) -> dict:
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
