"""Hostile inputs of export and `train --from`, and the export's own command line (issue 17, items 12 and 15):
each answers with exit 2 and one paragraph naming the file, never a traceback, and leaves nothing half-written."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from archspace.cli import main


def _weights(kind: str, good: bytes) -> bytes:
    return {"empty": b"", "truncated": good[: len(good) - 10], "header_cut": good[:100],
            "random": bytes(range(256)) * 20}[kind]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("kind", ["empty", "truncated", "header_cut", "random"])
def test_export_of_unreadable_weights_is_refused_and_leaves_no_folder(trained, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(trained[2], run)
    weights = run / "model.safetensors"
    weights.write_bytes(_weights(kind, weights.read_bytes()))
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = _error(capsys)
    assert str(weights) in err and "not a readable safetensors file" in err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "random"])
def test_train_from_unreadable_weights_is_refused(exported, tmp_path, capsys, kind):
    src = tmp_path / "export"
    shutil.copytree(exported, src)
    weights = src / "model.safetensors"
    weights.write_bytes(_weights(kind, weights.read_bytes()))
    assert main(["train", "--from", str(src), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = _error(capsys)
    assert str(weights) in err and "not a readable safetensors file" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("drop", ["archspace", "model"])
def test_train_from_a_config_without_the_design_is_refused(exported, tmp_path, capsys, drop):
    src = tmp_path / "export"
    shutil.copytree(exported, src)
    config = json.loads((src / "config.json").read_text())
    if drop == "archspace":
        del config["archspace"]
    else:
        del config["archspace"]["model"]
    (src / "config.json").write_text(json.dumps(config))
    assert main(["train", "--from", str(src), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = _error(capsys)
    assert f"{src / 'config.json'}:" in err
    assert ("'archspace'" if drop == "archspace" else "'archspace.model'") in err


def test_missing_export_target_names_its_path_once(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    assert main(["export", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = _error(capsys)
    assert err.count(str(missing)) == 1 and "no such file or directory" in err


def test_exported_weights_are_readable_like_the_other_files(exported):
    mode = stat.S_IMODE(os.stat(exported / "model.safetensors").st_mode)
    assert mode == stat.S_IMODE(os.stat(exported / "config.json").st_mode)
    assert mode & stat.S_IRGRP


def _generate(exported, *args):
    return subprocess.run([sys.executable, str(exported / "generate.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=exported.parent)


def test_generate_py_runs_as_the_readme_writes_it_and_refuses_bad_prompts(exported):
    proc = _generate(exported)  # no --prompt: a one-token prompt (0)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 16
    vocab = json.loads((exported / "config.json").read_text())["vocab_size"]
    for prompt, words in ((str(vocab), "outside the model's vocabulary"), ("-1", "outside the model's vocabulary"),
                          ("1,x", "integers")):
        proc = _generate(exported, "--prompt", prompt)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and words in proc.stderr, proc.stderr


def test_model_card_snippets_put_the_export_on_sys_path(exported):
    card = (exported / "README.md").read_text()
    blocks = card.split("```python")[1:]
    assert blocks
    for block in blocks:
        code = block.split("```")[0]
        if "from modeling_archspace import" in code:
            assert code.index("sys.path.insert") < code.index("from modeling_archspace import")
    assert "tie_word_embeddings: false" in card
