"""Interrupted training (issue 17, item 13): Ctrl-C writes what was measured and exits 130; the run
continues from its checkpoint (`train --resume RUN_DIR`, or the same `--out` again) bit for bit as the
run that was never stopped."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from archspace.compiler import resolve
from archspace.grammar import validate_data
from archspace.training import TrainingInterrupted, train
from archspace.yamlio import Marks, dump

# 96 examples / batch 16 = 6 batches an epoch: 14 steps cross two epoch boundaries
DESIGN = {
    "name": "resume",
    "model": {"d_model": 16, "n_layers": 2, "hybrid": {"pattern": "MA"}, "mixer": {"preset": "gated_deltanet", "heads": 2},
              "attention": {"heads": 2}},
    "task": {"vocab_size": 64, "train": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 96}],
             "test": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 32}]},
    "train": {"max_steps": 14, "batch_size": 16, "eval_every": 4, "warmup_steps": 2, "lr": 3e-3, "threads": 1},
}
TIMING = ("train_wall_s", "throughput_tok_s", "resumed_from_step")


class CtrlCAt(L.Callback):
    """Sends this process SIGINT while it trains step `step` (what a user's Ctrl-C does then)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGINT)


def _resolved(**train_keys):
    data = json.loads(json.dumps(DESIGN))
    data["train"].update(train_keys)
    return resolve(validate_data(data, Marks("<test>")))


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _same_run(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
    assert _rows(a) == _rows(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("whole")
    train(_resolved(), run, progress=False)
    return run


# mid interval in the first epoch; at a validation; mid second epoch; the last validation; and without the
# best/last checkpoints of the recipe (the interruption saves its own)
@pytest.mark.parametrize("stop,checkpoint", [(3, True), (8, True), (11, True), (12, True), (8, False), (11, False)])
def test_interrupted_run_resumes_bit_identically(uninterrupted, tmp_path, stop, checkpoint):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        train(_resolved(checkpoint=checkpoint), run, progress=False, callbacks=(CtrlCAt(stop),))
    assert info.value.step == stop and info.value.resumable
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["steps"] == stop and "test/acc" not in m
    assert [int(r["step"]) for r in _rows(run) if r.get("val/acc")] == [s for s in (4, 8, 12) if s <= stop]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is gone again
    final = train(_resolved(checkpoint=checkpoint), run, progress=False, resume=True)
    assert final["status"] == "finished" and final["resumed_from_step"] == stop
    _same_run(uninterrupted, run)


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "archspace.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_ctrl_c_exits_130_and_train_resume_finishes_the_run(uninterrupted, tmp_path):
    design = tmp_path / "resume.yaml"
    slow = json.loads(json.dumps(DESIGN))
    design.write_text(dump(slow))
    run = tmp_path / "run"
    proc = _cli("train", str(design), "--out", str(run), "--no-progress")
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first validation's checkpoint: training is under way
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and f"archspace train --resume {run}" in err
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "interrupted" and (run / "history.csv").is_file()
    again = _cli("train", "--resume", str(run), "--no-progress")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming" in out and json.loads((run / "metrics.json").read_text())["status"] == "finished"
    _same_run(uninterrupted, run)


def test_same_out_again_resumes_and_other_designs_are_refused(tmp_path, capsys):
    from archspace.cli import main

    design = tmp_path / "resume.yaml"
    design.write_text(dump(DESIGN))
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(_resolved(), run, progress=False, callbacks=(CtrlCAt(5),))
    assert main(["train", str(design), "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "from step 5" in out
    other = tmp_path / "other.yaml"
    other.write_text(dump({**DESIGN, "train": {**DESIGN["train"], "lr": 1e-3}}))
    assert main(["train", str(other), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(run) in err and "another" in err
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_second_ctrl_c_stops_at_once_and_keeps_what_was_measured(tmp_path):
    design = tmp_path / "resume.yaml"
    design.write_text(dump({**DESIGN, "train": {**DESIGN["train"], "max_steps": 400}}))
    run = tmp_path / "run"
    proc = _cli("train", str(design), "--out", str(run), "--no-progress")
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err
    m = json.loads((run / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["steps"] >= 4 and "val/acc" in m
    assert any(r.get("val/acc") for r in _rows(run))
