"""Hostile and broken input (issue 17): empty files, YAML bombs, deep nesting, control bytes, huge files,
negative numbers on the command line, unwritable result folders, a missing LM corpus, `--set` on a
space, and the layer count `validate` reports. Each gives exit 2 and one paragraph, no traceback."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archspace.cli import main
from archspace.study.space import load_space

ROOT = Path(__file__).resolve().parents[2]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.strip().count("\n") == 0, err  # one paragraph
    return err


def _validate(path, capsys) -> str:
    assert main(["validate", str(path)]) == 2
    return _error(capsys)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n", "~\n"])
def test_empty_design_file_is_refused(tmp_path, capsys, text):
    f = tmp_path / "e.yaml"
    f.write_text(text)
    err = _validate(f, capsys)
    assert str(f) in err and "empty" in err


def test_alias_bomb_is_refused_fast(tmp_path, capsys):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    err = _validate(f, capsys)
    assert time.perf_counter() - t0 < 2
    assert "alias" in err and f"{f}:" in err


def test_self_referencing_alias_is_refused(tmp_path, capsys):
    f = tmp_path / "self.yaml"
    f.write_text("model: &x [*x]\n")
    err = _validate(f, capsys)
    assert f"{f}:1:" in err and "refers to itself" in err


@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused(tmp_path, capsys, opener, closer):
    f = tmp_path / "deep.yaml"
    f.write_text("model: " + opener * 5000 + "1" + closer * 5000 + "\n")
    err = _validate(f, capsys)
    assert f"{f}:1:" in err and "nested" in err


def test_nul_byte_is_refused(tmp_path, capsys):
    f = tmp_path / "nul.yaml"
    f.write_text("name: a\x00b\n")
    err = _validate(f, capsys)
    assert f"{f}:1:" in err and "#x0000" in err


def test_huge_file_is_refused_without_reading_it(tmp_path, capsys):
    f = tmp_path / "huge.yaml"
    f.write_text("# " + "x" * (2 << 20) + "\n")
    t0 = time.perf_counter()
    err = _validate(f, capsys)
    assert time.perf_counter() - t0 < 2
    assert str(f) in err and "KiB" in err


def test_endless_device_is_refused(capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    t0 = time.perf_counter()
    err = _validate("/dev/zero", capsys)
    assert time.perf_counter() - t0 < 2 and "/dev/zero" in err


def test_pattern_layer_count_is_the_layer_count(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("model: {d_model: 32, hybrid: {pattern: 'MS x 2'}, mixers: {S: {preset: swa, window: 8}}}\n")
    assert main(["validate", str(f)]) == 0
    assert "model with 4 layers" in capsys.readouterr().out


@pytest.mark.parametrize("argv,option", [
    (["show", "examples/mqar_attention.yaml", "--seq-len", "-5"], "--seq-len"),
    (["show", "examples/mqar_attention.yaml", "--seq-len", "0"], "--seq-len"),
    (["study", "spaces/quickstart.yaml", "--trials", "0"], "--trials"),
    (["study", "spaces/quickstart.yaml", "--max-concurrent", "-1"], "--max-concurrent"),
    (["export", "results/studies/none", "--out", "x", "--rank", "0"], "--rank"),
    (["mad", "examples/mad/attention.yaml", "--steps", "0"], "--steps"),
    (["mad", "examples/mad/attention.yaml", "--batch-size", "-2"], "--batch-size"),
    (["mad", "examples/mad/attention.yaml", "--test-examples", "0"], "--test-examples"),
    (["mad", "examples/mad/attention.yaml", "--lrs", "-0.001"], "--lrs"),
    (["mad", "examples/mad/attention.yaml", "--lrs", "nan"], "--lrs"),
    (["mad", "examples/mad/attention.yaml", "--wds", "-0.1"], "--wds"),
])
def test_numeric_options_are_validated(argv, option, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = _error(capsys)
    assert "<command line>" in err and option in err


def test_set_on_a_space_keeps_the_study_name():
    space = load_space(ROOT / "spaces" / "quickstart.yaml", overrides={("train", "max_steps"): 40})
    assert space.name == "quickstart"
    assert space.base["train"]["max_steps"] == 40


DESIGN = """\
model: {d_model: 16, n_layers: 1, mixer: {heads: 2}}
task: {vocab_size: 64, train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 8}],
       test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 8}]}
train: {max_steps: 1, batch_size: 4}
"""


def _read_only_folder(tmp_path) -> Path:
    """A folder nobody may write into: a 0500 folder, or (root ignores modes) one under /sys, read-only."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return ro
    ro = Path("/sys/fs/archspace-results")
    try:
        ro.mkdir()
    except OSError:
        return ro
    ro.rmdir()
    pytest.skip("no read-only folder on this machine")


def test_read_only_results_folder_is_refused_up_front(tmp_path, capsys):
    f = tmp_path / "d.yaml"
    f.write_text(DESIGN)
    ro = _read_only_folder(tmp_path)
    try:
        assert main(["train", str(f), "--results-dir", str(ro)]) == 2
        err = _error(capsys)
        assert str(ro) in err and "not writable" in err
    finally:
        if ro.is_relative_to(tmp_path):
            ro.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("command", ["train", "study"])
def test_results_path_under_a_regular_file_is_refused(tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    if command == "train":
        f = tmp_path / "d.yaml"
        f.write_text(DESIGN)
        argv = ["train", str(f), "--out", str(blocker / "run")]
    else:
        argv = ["study", str(ROOT / "spaces" / "quickstart.yaml"), "--results-dir", str(blocker / "res")]
    assert main(argv) == 2
    err = _error(capsys)
    assert str(blocker) in err and "not a folder" in err


def test_missing_lm_corpus_is_reported_at_its_key_before_any_work(tmp_path, capsys):
    f = tmp_path / "lm.yaml"
    f.write_text("model: {d_model: 16, n_layers: 1, mixer: {heads: 2}}\n"
                 "task:\n  name: lm\n  corpus: files\n  files: [" + str(tmp_path / "nope.txt") + "]\n")
    t0 = time.perf_counter()
    err = _validate(f, capsys)
    assert time.perf_counter() - t0 < 2
    assert f"{f}:5:" in err and "task.files" in err and "nope.txt" in err


def test_bomb_on_the_command_line_exits_2_without_traceback(tmp_path):
    f = tmp_path / "self.yaml"
    f.write_text("a: &x [*x]\n")
    p = subprocess.run([sys.executable, "-m", "archspace.cli", "validate", str(f)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.startswith("error: ")
