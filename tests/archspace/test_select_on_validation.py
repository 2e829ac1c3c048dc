"""Studies select on validation data only (issue 17, item 1): test metrics are reported once per trial, at
its end, and may not be objectives or pruner metrics; a MAD sweep picks lr and weight decay on validation."""
from __future__ import annotations

import json

import pytest

from archspace.errors import ConfigError
from archspace.study.space import load_space

SPACE = """\
schema_version: 1
name: sel
base:
  model: {{d_model: 16, n_layers: 1, mixer: {{heads: 2}}}}
  train: {{max_steps: 2}}
axes:
  mixer.preset: [gla, gated_deltanet]
objectives:
  - {{metric: {metric}, mode: max}}
search: {{sampler: grid}}
{extra}"""


def _load(tmp_path, metric, extra=""):
    f = tmp_path / "space.yaml"
    f.write_text(SPACE.format(metric=metric, extra=extra))
    return load_space(f), f


@pytest.mark.parametrize("metric,hint", [("test/acc", "val/acc"), ("test/acc/seq64_kv4", "val/acc/seq64_kv4"),
                                         ("test/loss", "val/loss"), ("mad_score", "val/mad_score"),
                                         ("mad/memorization", "val/mad/memorization")])
def test_test_metrics_are_not_objectives(tmp_path, metric, hint):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, metric)
    err = str(info.value)
    assert err.startswith(f"{tmp_path / 'space.yaml'}:9:") and "test" in err and hint in err


def test_mad_study_selects_on_the_validation_mad_score(tmp_path):
    space, _ = _load(tmp_path, "val/mad_score", "mad: {tasks: [memorization], steps: 2}\n")
    assert space.mad is not None and space.pruner["metric"] == "val/mad_score"
    with pytest.raises(ConfigError, match="val/mad_score"):
        _load(tmp_path, "val/mad_score", "mad: {tasks: [memorization]}\npruner: {metric: val/acc}\n")


def test_mad_sweep_picks_each_setting_on_validation(tmp_path, monkeypatch):
    from archspace.compiler import resolve
    from archspace.grammar import validate_data
    from archspace.tasks import mad_score
    from archspace.yamlio import Marks

    # (val/acc, test/acc) per run: the best validation run is not the best test run
    accs = {("compression", 0.0): (0.5, 0.2), ("compression", 0.1): (0.4, 0.6),
            ("memorization", 0.0): (0.9, 0.7), ("memorization", 0.1): (0.2, 0.8)}

    def fake_train(resolved, run_dir, progress=False):
        val, test = accs[(resolved.task["name"][4:], resolved.train["weight_decay"])]
        return {"val/acc": val, "test/acc": test}

    monkeypatch.setattr("archspace.training.train", fake_train)
    res = resolve(validate_data({"model": {"d_model": 16}}, Marks("<t>")))
    seen = []
    out = mad_score.evaluate(res, tmp_path, tasks=["compression", "memorization"], lrs=[1e-3], wds=[0.0, 0.1],
                             log=None, on_task=lambda task, scores: seen.append((task, scores)))
    assert out["tasks"] == {"compression": 0.2, "memorization": 0.7}  # test accuracy of the validation choice
    assert out["val_tasks"] == {"compression": 0.5, "memorization": 0.9}
    assert out["mad_score"] == pytest.approx(0.45) and out["val_mad_score"] == pytest.approx(0.7)
    assert out["mad_score_best_test"] == pytest.approx(0.7)  # MAD-lab's protocol: best test over the sweep
    assert seen == [("compression", {"val": 0.5, "test": 0.2}), ("memorization", {"val": 0.9, "test": 0.7})]
    assert json.loads((tmp_path / "mad_scores.json").read_text())["val_mad_score"] == pytest.approx(0.7)
