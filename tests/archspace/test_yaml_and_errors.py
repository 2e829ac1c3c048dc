"""Bad input: every kind of malformed design gives one clear paragraph, file:line:col, key path, exit 2."""
import subprocess
import sys
import textwrap

import pytest

from archspace.cli import main
from archspace.yamlio import loads

GOOD = """\
schema_version: 1
model:
  d_model: 32
  n_layers: 2
  mixer:
    preset: gated_deltanet
    heads: 2
task:
  vocab_size: 256
  train: [{seq_len: 32, num_kv_pairs: 4, num_examples: 64}]
  test: [{seq_len: 32, num_kv_pairs: 4, num_examples: 32}]
train:
  lr: 1e-3
  max_steps: 2
"""


def test_yaml_1_1_traps_are_fixed():
    data, _ = loads("a: 1e-3\nb: no\nc: yes\nd: true\ne: off\nf: 2024-01-01\ng: 5E+2\nh: 3:1\ni: 010\nj: 0x10\n")
    assert data == {"a": 0.001, "b": "no", "c": "yes", "d": True, "e": "off", "f": "2024-01-01", "g": 500.0,
                    "h": "3:1", "i": 10, "j": 16}
    assert isinstance(data["a"], float)


def test_duplicate_key_is_an_error():
    from archspace.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        loads("train:\n  lr: 1\n  lr: 2\n", "f.yaml")
    assert "f.yaml:3:3" in str(e.value) and "duplicate key 'lr'" in str(e.value) and "line 2" in str(e.value)


def test_good_file_validates(tmp_path, capsys):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    assert main(["validate", str(f)]) == 0
    assert "ok" in capsys.readouterr().out


# (name, edit of GOOD or full text, expected line, expected fragments)
CASES = [
    ("unknown key", GOOD.replace("    heads: 2", "    heds: 2"), 7, ["model.mixer.heds", "unknown key", "Did you mean 'heads'"]),
    ("wrong type", GOOD.replace("d_model: 32", "d_model: big"), 3, ["model.d_model", "valid integer"]),
    ("out of range", GOOD.replace("    heads: 2", "    heads: 0"), 7, ["model.mixer.heads", "greater than or equal to 1"]),
    ("unknown preset", GOOD.replace("preset: gated_deltanet", "preset: gated_deltnet"), 6,
     ["model.mixer.preset", "Did you mean 'gated_deltanet'"]),
    ("incompatible axes", GOOD.replace("    heads: 2", "    heads: 2\n    hierarchy: log_linear\n    retention: kda"), 9,
     ["model.mixer.retention", "incompatible combination", "hierarchy: log_linear"]),
    ("duplicate key", GOOD.replace("  n_layers: 2", "  n_layers: 2\n  n_layers: 4"), 5, ["duplicate key 'n_layers'"]),
    ("python tag", GOOD.replace("lr: 1e-3", "lr: !!python/object/apply:os.system ['true']"), 13, ["not allowed"]),
    ("syntax error", GOOD.replace("train: [{seq_len: 32,", "train: [{seq_len: 32,,"), 10, ["YAML syntax error"]),
    ("yes/no is not a boolean", GOOD.replace("    heads: 2", "    heads: 2\n    output_gate: no"), 8,
     ["model.mixer.output_gate", "write true or false"]),
    ("bad enum value", GOOD.replace("    heads: 2", "    heads: 2\n    norm: rmsnrom"), 8,
     ["model.mixer.norm", "Did you mean 'rmsnorm'"]),
    ("key of the other mixer type", GOOD.replace("    heads: 2", "    heads: 2\n    window: 64"), 8,
     ["model.mixer.window", "attention mixers only"]),
    ("malformed ratio", GOOD.replace("  n_layers: 2", "  n_layers: 2\n  hybrid: {ratio: 3-1}"), 5, ["model.hybrid.ratio", "3:1"]),
    ("pattern length", GOOD.replace("  n_layers: 2", "  n_layers: 2\n  hybrid: {pattern: MMA}"), 5,
     ["model.hybrid.pattern", "3 layers but n_layers is 2"]),
    ("schema version", "schema_version: 2\n" + GOOD.split("\n", 1)[1], 1, ["schema_version", "not supported"]),
    ("impossible task slice", GOOD.replace("num_kv_pairs: 4, num_examples: 64", "num_kv_pairs: 9, num_examples: 64"), 10,
     ["task.train[0].num_kv_pairs", "seq_len >= 36"]),
    ("unknown section", GOOD.replace("train:\n  lr", "trian:\n  lr"), 12, ["unknown key 'trian'", "Did you mean 'train'"]),
    ("indivisible heads", GOOD.replace("    heads: 2", "    heads: 3"), 7, ["model.mixer.heads", "not divisible"]),
    ("not a mapping", "- model\n- task\n", 1, ["must be a mapping"]),
    ("wrong container", GOOD.replace("  test: [{seq_len: 32, num_kv_pairs: 4, num_examples: 32}]", "  test: 5"), 11,
     ["task.test", "valid list"]),
]


@pytest.mark.parametrize("name,text,line,fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_yaml_gives_clear_error(tmp_path, capsys, name, text, line, fragments):
    f = tmp_path / "design.yaml"
    f.write_text(text)
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert f"{f}:{line}:" in err, err
    for frag in fragments:
        assert frag in err, (frag, err)
    assert err.strip().count("\n") == 0  # one paragraph


def test_missing_file(capsys):
    assert main(["validate", "/nonexistent/design.yaml"]) == 2
    assert "/nonexistent/design.yaml: file not found" in capsys.readouterr().err


def test_cli_error_has_no_traceback_and_exit_2(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text(GOOD.replace("    heads: 2", "    heds: 2"))
    p = subprocess.run([sys.executable, "-m", "archspace.cli", "validate", str(f)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "heds" in p.stderr


@pytest.mark.parametrize("preset", ["gated_deltanet", "titans_lmm"])  # an exact kernel, the mini-batch engine
def test_help_and_validate_do_not_import_heavy_libraries(tmp_path, preset):
    f = tmp_path / "d.yaml"
    f.write_text(GOOD.replace("preset: gated_deltanet", f"preset: {preset}"))
    code = textwrap.dedent(f"""
        import sys
        from archspace.cli import main
        assert main(["validate", {str(f)!r}]) == 0
        heavy = [m for m in ("torch", "lightning", "mlflow", "ray", "optuna") if m in sys.modules]
        print("HEAVY", heavy)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in p.stdout, p.stdout + p.stderr
