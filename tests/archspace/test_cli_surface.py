"""The CLI surface: every command has --help, the shipped JSON Schema is current, examples validate."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from archspace.cli import build_parser, main
from archspace.grammar import json_schema

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["validate", "show", "train", "study", "export", "schema", "dashboard", "compare"]


def test_commands_are_the_documented_ones():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(COMMANDS) <= set(sub.choices)
    readme = (ROOT / "README.md").read_text()
    for name in sub.choices:
        assert f"archspace {name}" in readme, f"README does not document `archspace {name}`"


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: archspace " + command in capsys.readouterr().out


def test_shipped_schema_is_current():
    shipped = json.loads((ROOT / "archspace.schema.json").read_text())
    assert shipped == json_schema(), "run `archspace schema --out archspace.schema.json`"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path):
    assert main(["validate", str(path)]) == 0


def test_top_level_help_is_fast():
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "archspace.cli", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "validate" in p.stdout
    imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "lightning", "mlflow", "ray", "optuna"}


@pytest.mark.parametrize("path", sorted((ROOT / "spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_spaces_validate_as_search_spaces(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "ok (search space" in capsys.readouterr().out


def test_validate_space_error_names_file_line_and_axis(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text('base: {model: {d_model: 64}}\naxes:\n  hybrid.ratio: ["1:0", "5"]\n'
                 'objectives: [{metric: val/acc, mode: max}]\n')
    p = subprocess.run([sys.executable, "-m", "archspace.cli", "validate", str(f)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "space.yaml:3" in p.stderr and "axes.hybrid.ratio[1]" in p.stderr and "'5'" in p.stderr
