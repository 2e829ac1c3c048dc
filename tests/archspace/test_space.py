"""Search-space files: validation (file:line errors), grid enumeration, define-by-run sampling."""
from pathlib import Path

import optuna
import pytest

from archspace.errors import ConfigError
from archspace.blocks.compat import violations
from archspace.study.space import (define_by_run, enumerate_grid, load_space, make_sampler, resolve_values,
                                   values_from_config)

ROOT = Path(__file__).resolve().parents[2]

SPACE = """\
schema_version: 1
name: t
base:
  model: {d_model: 32, n_layers: 2, mixer: {heads: 2}}
  task:
    vocab_size: 128
    train: [{seq_len: 32, num_kv_pairs: 4, num_examples: 64}]
    test: [{seq_len: 32, num_kv_pairs: 4, num_examples: 32}]
  train: {max_steps: 2}
axes:
  mixer.bias: [dot, l2]
  mixer.retention: [none, scalar, vector]
  mixer.key_norm: [none, l2]
search: {sampler: grid}
"""


def _write(tmp_path, text, name="space.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_grid_never_contains_forbidden_designs(tmp_path):
    space = load_space(_write(tmp_path, SPACE))
    grid = enumerate_grid(space)
    # 2 x 3 x 2 = 12 combinations; forbidden: l2+key_norm none (3 retentions). (l2+vector was forbidden too until
    # the delta rule took a per-channel gate: Kimi Delta Attention)
    assert len(grid) == 12 - 3 == space.trials
    for values in grid:
        mixer = resolve_values(space, values).model.layers[0].mixer
        assert not violations({"type": "memory", "bias": mixer.bias, "retention": mixer.retention,
                               "key_norm": mixer.key_norm})


def test_define_by_run_never_samples_forbidden_designs_and_is_seeded(tmp_path):
    space = load_space(_write(tmp_path, SPACE.replace("sampler: grid", "sampler: random, trials: 40")))

    def sample(seed_offset=0):
        study = optuna.create_study(sampler=make_sampler(space))
        out = []
        for _ in range(40):
            trial = study.ask()
            define_by_run(space, trial)
            values = values_from_config(space, trial.params)
            r = resolve_values(space, values)  # raises if the design were forbidden
            out.append(tuple(sorted(values.items())))
            study.tell(trial, 0.0)
            assert r.model.layers[0].mixer.kind == "memory"
        return out

    a, b = sample(), sample()
    assert a == b  # same space and seed, same designs
    assert len(set(a)) > 3


def test_conditional_axis(tmp_path):
    text = SPACE.replace("""  mixer.bias: [dot, l2]
  mixer.retention: [none, scalar, vector]
  mixer.key_norm: [none, l2]""", """  hybrid.ratio: ["1:0", "0:1"]
  mixer.preset: {choices: [gla, deltanet], when: {hybrid.ratio: ["1:0"]}}""")
    grid = load_space(_write(tmp_path, text)).grid
    assert [dict(g) for g in grid] == [
        {"model.hybrid.ratio": "1:0", "model.mixer.preset": "gla"},
        {"model.hybrid.ratio": "1:0", "model.mixer.preset": "deltanet"},
        {"model.hybrid.ratio": "0:1"},
    ]


BAD = [
    ("unknown axis path", SPACE.replace("mixer.bias:", "mixer.bais:"), 11, ["'mixer.bais' is not a key path", "mixer.bias"]),
    ("ambiguous path", SPACE.replace("mixer.bias: [dot, l2]", "seed: [0, 1]"), 11, ["ambiguous", "train.seed", "task.seed"]),
    ("invalid axis value", SPACE.replace("[none, scalar, vector]", "[none, scaler]"), 12,
     ["value 'scaler'", "Did you mean 'scalar'"]),
    ("unknown top-level key", SPACE.replace("search:", "serch:"), 14, ["unknown key 'serch'", "Did you mean 'search'"]),
    ("unknown sampler", SPACE.replace("sampler: grid", "sampler: tpee"), 14, ["'tpee' is not one of", "'tpe'"]),
    ("unknown nested key", SPACE + "pruner: {kind: asha, metrc: val/acc}\n", 15,
     ["pruner.metrc: unknown key 'metrc'", "Did you mean 'metric'"]),
    ("wrong type", SPACE + "resources: {cpus_per_trial: two}\n", 15, ["resources.cpus_per_trial", "'two'"]),
    ("out of bounds", SPACE + "pruner: {reduction_factor: 1}\n", 15,
     ["pruner.reduction_factor", "greater than or equal to 2"]),
    ("axis with two kinds", SPACE.replace("mixer.key_norm: [none, l2]", "lr: {int: [1, 2], float: [0.1, 0.2]}"), 13,
     ["axes.lr", "exactly one of choices, int, float or bundle"]),
    ("continuous axis in a grid", SPACE.replace("mixer.key_norm: [none, l2]", "lr: {float: [1e-4, 1e-2], log: true}"), 14,
     ["grid sampler needs discrete axes", "train.lr"]),
    ("bad base design", SPACE.replace("d_model: 32", "d_model: -1"), 4, ["model.d_model", "greater than or equal to 4"]),
    ("unknown metric", SPACE + "objectives: [{metric: val/accuracy, mode: max}]\n", 15, ["unknown metric"]),
    ("empty range", SPACE.replace("mixer.key_norm: [none, l2]", "lr: {float: [1e-2, 1e-4]}").replace("grid", "tpe, trials: 3"),
     13, ["range", "empty"]),
    ("missing trials", SPACE.replace("sampler: grid", "sampler: tpe"), 14, ["search.trials is required"]),
]


@pytest.mark.parametrize("name,text,line,fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_space_errors(tmp_path, name, text, line, fragments):
    f = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_space(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line}:"), msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


@pytest.mark.parametrize("path", sorted((ROOT / "spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_space_loads_and_every_design_builds(path):
    import torch

    from archspace.compiler import build_model

    space = load_space(path)
    designs = space.grid or []
    if not designs:  # sampled spaces: draw a few designs
        study = optuna.create_study(sampler=make_sampler(space))
        for _ in range(3):
            t = study.ask()
            define_by_run(space, t)
            designs.append(values_from_config(space, t.params))
            study.tell(t, 0.0)
    for values in designs:
        resolved = resolve_values(space, values)
        model = build_model(resolved)
        x = torch.randint(0, resolved.model.vocab_size, (1, 16))  # the task's vocabulary (MAD recall: 16)
        model.logits(model(x)).sum().backward()
