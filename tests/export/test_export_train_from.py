"""`archspace train [FILE] --from DIR` continues an export from its weights."""
from __future__ import annotations

import dataclasses
import json

import lightning as L
import torch
from export_testutil import TINY, resolve_text, run_cli

from archspace.cli import main


def exported_module(exported):
    """The export's own entry module, loaded here as a top-level module (it imports its directory as a package)."""
    import importlib.util
    import sys

    from archspace.export import MODELING_FILE

    spec = importlib.util.spec_from_file_location("_test_train_from_modeling", exported / MODELING_FILE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def max_weight_diff(a_file, b_file) -> float:
    from safetensors.torch import load_file

    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


class FirstLoss(L.Callback):
    """Loss of the first training batch before any optimizer step, and the exported model's loss on it."""

    def __init__(self, exported_model):
        self.exported_model = exported_model
        self.pairs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and not self.pairs:
            with torch.no_grad():
                loss, _, _ = pl_module._step(batch)
                m = self.exported_model
                hidden = m(batch["input_ids"])
                mask = batch["labels"] != -100
                ref = torch.nn.functional.cross_entropy(m.logits(hidden[mask]).float(), batch["labels"][mask])
            self.pairs.append((loss.item(), ref.item()))


def test_initial_loss_equals_exported_model_loss(trained, exported, tmp_path):
    from archspace.training import train

    _, resolved, _ = trained
    short = dataclasses.replace(resolved, train={**resolved.train, "max_steps": 1, "eval_every": 1})
    mod = exported_module(exported)
    probe = FirstLoss(mod.load(str(exported)))
    train(short, tmp_path / "cont", progress=False, callbacks=(probe,), init_weights=exported / "model.safetensors")
    (loss, ref), = probe.pairs
    print(f"initial loss {loss:.6f}, exported model's loss {ref:.6f}")
    assert abs(loss - ref) <= 1e-6
    # without --from the same run starts elsewhere (the check can fail)
    probe2 = FirstLoss(mod.load(str(exported)))
    train(short, tmp_path / "fresh", progress=False, callbacks=(probe2,))
    assert abs(probe2.pairs[0][0] - probe2.pairs[0][1]) > 1e-3


def test_cli_train_from_export_alone_and_with_file(trained, exported, tmp_path, capsys):
    # --from alone: the exported recipe, here 1 step at a tiny learning rate
    out = tmp_path / "cont"
    proc = run_cli(["train", "--from", str(exported), "--set", "train.max_steps=1", "--set", "train.eval_every=1",
                    "--set", "train.lr=1e-5", "--set", "train.warmup_steps=0", "--out", str(out), "--no-progress"])
    assert proc.returncode == 0, proc.stderr
    assert "initial weights:" in proc.stdout
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1
    diff = max_weight_diff(out / "model.safetensors", exported / "model.safetensors")
    print(f"max |weight change| after one step at lr 1e-5: {diff:.3g}")
    assert 0 < diff <= 5e-5  # one Adam step moves each weight by about lr at most
    # FILE supplies task and train; the model must be the exported one
    design = tmp_path / "design.yaml"
    design.write_text(TINY.replace("max_steps: 5", "max_steps: 1").replace("lr: 0.01", "lr: 0.00001")
                      .replace("warmup_steps: 1", "warmup_steps: 0").replace("eval_every: 5", "eval_every: 1"))
    assert main(["train", str(design), "--from", str(exported), "--out", str(tmp_path / "cont2"), "--no-progress"]) == 0
    assert max_weight_diff(tmp_path / "cont2" / "model.safetensors", exported / "model.safetensors") <= 5e-5
    capsys.readouterr()


def test_train_from_errors(exported, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text(TINY.replace("d_model: 16", "d_model: 32"))
    cases = [
        (["train", str(other), "--from", str(exported)], "must describe the same model"),
        (["train", "--from", str(tmp_path / "nope")], "not an archspace export"),
        (["train", "--from", str(exported), "--set", "train.lr=-1"], "train.lr"),
        (["train", "--from", str(exported), "--set", "model.d_model=8"], "only existing train"),
        (["train"], "needs a design FILE"),
    ]
    for argv, needle in cases:
        rc = main(argv + ["--out", str(tmp_path / "never")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error:") and "\n\n" not in err and needle in err, (argv, err)
        assert not (tmp_path / "never").exists()
