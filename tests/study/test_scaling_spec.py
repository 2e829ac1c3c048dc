"""The `scaling:` section of a space file (archspace.study.scaling_spec): defaults, short axis names, errors."""
from __future__ import annotations

import pytest

from archspace.errors import ConfigError
from archspace.study.space import load_space

SPACE = """\
schema_version: 1
name: s
base:
  model: {d_model: 16, n_layers: 2, mixer: {heads: 2}}
  task: lm_stdlib_bytes
  train: {batch_size: 4}
axes:
  mixer.preset: [gla, gated_deltanet]
  d_model: [16, 32]
  train.flops: [1e9, 3e9]
"""


def _load(tmp_path, scaling: str):
    f = tmp_path / "s.yaml"
    f.write_text(SPACE + scaling)
    return f, load_space(f)


def test_defaults_and_short_axis_names(tmp_path):
    _, space = _load(tmp_path, "scaling: {family: [mixer.preset]}\n")
    assert space.scaling == {"family": ["model.mixer.preset"], "loss": "val/loss", "params": "params_non_embedding",
                             "bootstrap": 1000, "budgets": None, "level": 0.95}
    _, plain = _load(tmp_path, "")
    assert plain.scaling is None and plain.space_hash == space.space_hash  # analysis settings are not the study


@pytest.mark.parametrize("text,line_col,fragment", [
    ("scaling: {famly: []}\n", "11:11", "unknown key 'famly'"),
    ("scaling: {family: [lr]}\n", "11:20", "'lr' is not an axis of this space"),
    ("scaling: {params: weights}\n", "11:19", "scaling.params must be one of"),
    ("scaling: {loss: params}\n", "11:17", "scaling.loss must be a val/ or test/ metric"),
    ("scaling: {bootstrap: -1}\n", "11:22", "scaling.bootstrap"),
    ("scaling: {budgets: [1e12, -1]}\n", "11:20", "scaling.budgets"),
])
def test_errors_name_file_line_col(tmp_path, text, line_col, fragment):
    f = tmp_path / "s.yaml"
    f.write_text(SPACE + text)
    with pytest.raises(ConfigError) as e:
        load_space(f)
    assert str(e.value).startswith(f"{f}:{line_col}:") and fragment in str(e.value), str(e.value)
