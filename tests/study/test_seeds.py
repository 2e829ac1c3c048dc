"""`seeds: N` (archspace.study.seeds): replicate trials, the mean the searcher is told, save/restore, the space key."""
from __future__ import annotations

import subprocess
import sys

import pytest
from ray.tune.search import Searcher

from archspace.errors import ConfigError
from archspace.study.seeds import REPLICATE_KEY, Replicates, replicate_values
from archspace.study.space import load_space


class Recorder(Searcher):
    """A two-objective searcher that suggests {"x": 0}, {"x": 1}, ... and records what it is told."""

    def __init__(self):
        super().__init__(metric=["acc", "loss"], mode=["max", "min"])
        self.n = 0
        self.told = []

    def suggest(self, trial_id):
        self.n += 1
        return {"x": self.n - 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append((trial_id, result, error))

    def save(self, path):
        import pickle

        with open(path, "wb") as f:
            pickle.dump({"n": self.n, "told": self.told}, f)

    def restore(self, path):
        import pickle

        with open(path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def test_each_suggestion_runs_n_times_and_the_searcher_hears_the_mean():
    rep = Replicates(Recorder(), 3)
    configs = [rep.suggest(f"t{i}") for i in range(4)]
    assert configs[:3] == [{"x": 0, REPLICATE_KEY: 0}, {"x": 0, REPLICATE_KEY: 1}, {"x": 0, REPLICATE_KEY: 2}]
    assert configs[3] == {"x": 1, REPLICATE_KEY: 0}
    rep.on_trial_complete("t0", {"acc": 0.5, "loss": 1.0})
    rep.on_trial_complete("t1", None, error=True)  # a failed seed is left out of the mean
    assert rep.searcher.told == []
    rep.on_trial_complete("t2", {"acc": 0.7, "loss": 3.0})
    assert rep.searcher.told == [("t0", {"acc": pytest.approx(0.6), "loss": pytest.approx(2.0)}, False)]


def test_a_design_whose_seeds_all_failed_is_an_error_for_the_searcher():
    rep = Replicates(Recorder(), 2)
    rep.suggest("a")
    rep.suggest("b")
    rep.on_trial_complete("a", None, error=True)
    rep.on_trial_complete("b", {"acc": 0.1})  # no loss: the objective is missing
    assert rep.searcher.told == [("a", None, True)]


def test_groups_survive_tunes_save_and_restore(tmp_path):
    """Through Tune's own SearchGenerator.save_to_dir / restore_from_dir, as a resumed study does."""
    from ray.tune.search.search_generator import SearchGenerator

    rep = Replicates(Recorder(), 2)
    rep.suggest("a")
    rep.suggest("b")
    rep.suggest("c")  # the next design's first seed
    rep.on_trial_complete("a", {"acc": 1.0, "loss": 0.0})
    SearchGenerator(rep).save_to_dir(str(tmp_path), session_str="s")
    again = Replicates(Recorder(), 2)
    SearchGenerator(again).restore_from_dir(str(tmp_path))
    assert again.searcher.n == 2
    assert again.suggest("d") == {"x": 1, REPLICATE_KEY: 1}  # completes the open group, no new suggestion
    again.on_trial_complete("b", {"acc": 0.0, "loss": 1.0})
    assert again.searcher.told == [("a", {"acc": 0.5, "loss": 0.5}, False)]


SPACE = """\
schema_version: 1
name: s
base:
  model: {d_model: 16, n_layers: 2, mixer: {heads: 2}}
  task:
    vocab_size: 64
    train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 32}]
    test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 16}]
  train: {max_steps: 2, seed: 5}
axes:
  mixer.preset: [gla, gated_deltanet]
"""


def test_space_seeds_key_and_cli_override(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(SPACE)
    one = load_space(f)
    assert one.seeds == 1
    f2 = tmp_path / "s2.yaml"
    f2.write_text(SPACE + "seeds: 1\n")
    assert load_space(f2).space_hash == one.space_hash  # one seed: the same study as before the key existed
    f3 = tmp_path / "s3.yaml"
    f3.write_text(SPACE + "seeds: 3\n")
    three = load_space(f3)
    assert three.seeds == 3 and three.space_hash != one.space_hash and three.trials == 2
    assert load_space(f, seeds=3).space_hash == three.space_hash
    assert replicate_values(three, {REPLICATE_KEY: 2}) == {"train.seed": 7}  # base seed 5 + replicate 2
    assert replicate_values(one, {REPLICATE_KEY: 2}) == {}


def test_bad_seeds_are_errors_with_file_line_col(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(SPACE + "seeds: 0\n")
    with pytest.raises(ConfigError) as e:
        load_space(f)
    assert str(e.value).startswith(f"{f}:12:8:") and "seeds" in str(e.value)
    g = tmp_path / "axis.yaml"
    g.write_text(SPACE.replace("mixer.preset: [gla, gated_deltanet]", "train.seed: [0, 1]") + "seeds: 2\n")
    with pytest.raises(ConfigError, match="train.seed"):
        load_space(g)
    proc = subprocess.run([sys.executable, "-m", "archspace.cli", "study", str(f)], capture_output=True, text=True)
    assert proc.returncode == 2 and f"{f}:12:8:" in proc.stderr and "Traceback" not in proc.stderr
    ok = tmp_path / "ok.yaml"
    ok.write_text(SPACE)
    proc = subprocess.run([sys.executable, "-m", "archspace.cli", "study", str(ok), "--seeds", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--seeds must be at least 1" in proc.stderr and "Traceback" not in proc.stderr
