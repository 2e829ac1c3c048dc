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
from export_testutil import TINY as _TINY


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


@pytest.mark.slow
def test_generate_py_runs_as_the_readme_writes_it_and_refuses_bad_prompts(exported):
    proc = _generate(exported)  # no --prompt: a one-token prompt (0)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 16
    vocab = json.loads((exported / "config.json").read_text())["vocab_size"]
    bad = ((str(vocab), "outside the model's vocabulary"), ("-1", "outside the model's vocabulary"),
           ("1,x", "integers"))
    # the bad prompts through generate.py's main in one torch-only process (one interpreter start, not three)
    script = ("import contextlib, io, json, sys; sys.modules['archspace'] = None; sys.path.insert(0, sys.argv[1])\n"
              "from modeling_archspace import main\n"
              "for prompt in sys.argv[2:]:\n"
              "    err = io.StringIO()\n"
              "    try:\n"
              "        with contextlib.redirect_stderr(err):\n"
              "            code = main(['--prompt', prompt])\n"
              "    except SystemExit as exc:\n"
              "        code = exc.code\n"
              "    print(json.dumps([code, err.getvalue()]))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(exported), *(p for p, _ in bad)], capture_output=True,
                          text=True, timeout=120, cwd=exported.parent)
    assert proc.returncode == 0, proc.stderr
    for (prompt, words), line in zip(bad, proc.stdout.splitlines(), strict=True):
        code, err = json.loads(line)
        assert code == 2 and "Traceback" not in err and words in err, (prompt, err)


def test_model_card_snippets_put_the_export_on_sys_path(exported):
    card = (exported / "README.md").read_text()
    blocks = card.split("```python")[1:]
    assert blocks
    for block in blocks:
        code = block.split("```")[0]
        if "from modeling_archspace import" in code:
            assert code.index("sys.path.insert") < code.index("from modeling_archspace import")
    assert "tie_word_embeddings: false" in card


# layers fed by other layers (blocks/model.py): HGRN2's shared lower bounds (layers 0 and 2, the bound reaching
# layer 2) and RWKV-7's value residual (layer 3 mixing in layer 1's values), both on through the presets
SHARED = _TINY.replace("name: tiny-hybrid", "name: tiny-shared").replace(
    "  n_layers: 2\n  hybrid: {pattern: MA}\n  mixer: {preset: gated_deltanet, heads: 2}",
    "  n_layers: 4\n  hybrid: {pattern: MRMR}\n  mixer: {preset: hgrn2, heads: 2}\n"
    "  mixers: {R: {preset: rwkv7, heads: 2, gate_rank: 4, iclr_rank: 4, value_rank: 4}}")


@pytest.fixture(scope="module", params=["hybrid", "shared"])
def random_hybrid_export(request, tmp_path_factory):
    """The tiny memory + attention hybrid (and a model whose layers feed each other: SHARED) with random,
    non-degenerate weights, exported in-process (a 5-step model repeats one token, which would hide a decoding
    state carried wrongly)."""
    import torch
    from export_testutil import TINY, resolve_text
    from safetensors.torch import save_model

    from archspace.blocks.model import SequenceModel
    from archspace.export import export, select

    tmp = tmp_path_factory.mktemp(request.param)
    _, resolved = resolve_text(TINY if request.param == "hybrid" else SHARED, tmp)
    if request.param == "shared":
        assert "lower_bounds" in dict(SequenceModel(resolved.model).named_parameters())
    run = tmp / "run"
    run.mkdir()
    (run / "resolved.yaml").write_text(resolved.to_yaml())
    torch.manual_seed(3)
    model = SequenceModel(resolved.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    save_model(model, str(run / "model.safetensors"))
    out = tmp / "export"
    export(select(str(run)), out)
    return out


def test_transformers_generate_matches_the_exports_generate(random_hybrid_export):
    """model.generate() of AutoModelForCausalLM (GenerationMixin, the decoding state as its cache) gives the
    greedy tokens of the export's own generate; an all-ones attention_mask is accepted, a padded one refused."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(random_hybrid_export), trust_remote_code=True).eval()
    entry = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".modeling_archspace"]
    ids = torch.tensor([[3, 17, 5, 9, 2], [1, 2, 3, 4, 5]])
    reference = entry.generate(entry.load(str(random_hybrid_export)), ids, 20)
    assert len(set(reference[:, 5:].flatten().tolist())) > 2  # the continuation is not one repeated token
    assert torch.equal(model.generate(ids, max_new_tokens=20, do_sample=False), reference)
    assert torch.equal(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                                      do_sample=False), reference)
    with pytest.raises(ValueError, match="padding"):
        model.generate(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]), max_new_tokens=3)
    with torch.no_grad():  # forward with a cache continues the sequence: the same logits as one call
        whole = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :3], use_cache=True)
        rest = model(input_ids=ids[:, 3:], cache=first.cache)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), whole, rtol=1e-5, atol=1e-5)
