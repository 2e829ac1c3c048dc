"""Every shipped space trains: its first design, on its own task with the data shrunk, for two steps in-process
(so a space that loads but cannot train is caught), and the README's quickstart as a real study through the CLI,
embedded Ray and MLflow. The study machinery itself (MLflow records, failures, resume, clusters, DDP, MAD
objectives) has one end-to-end study per feature in the other files of this folder."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from test_study_e2e import run_cli

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "spaces").glob("*.yaml"))


def _shrunk(task: dict) -> dict:
    """The task with a few examples per split (the generators, data modules and metrics unchanged)."""
    task = json.loads(json.dumps(task))
    for split in ("train", "test"):
        for s in task.get(split) or []:
            s["num_examples"] = min(s["num_examples"], 4)
    for key in ("num_train_examples", "num_test_examples"):
        if key in task:
            task[key] = min(task[key], 4)
    if task["name"] == "lm":
        task.update(max_bytes=100_000, max_val_sequences=4)
    return task


@pytest.mark.parametrize("space", SPACES, ids=lambda p: p.stem)
def test_shipped_space_first_design_trains(space, tmp_path):
    from archspace.study.space import load_space, resolve_values
    from archspace.training import train

    s = load_space(space)
    assert s.grid, "the shipped spaces are grids"
    resolved = resolve_values(s, dict(s.grid[0]))
    train_cfg = {**resolved.train, "max_steps": 2, "eval_every": 2, "batch_size": 8, "warmup_steps": 1,
                 "checkpoint": False, "threads": 1}
    task = _shrunk(resolved.task)
    if task["name"] == "lm":
        task["cache_dir"] = str(tmp_path / "cache")
    resolved = dataclasses.replace(resolved, task=task, train=train_cfg)
    metrics = train(resolved, tmp_path / "run", progress=False)
    for o in s.objectives:
        assert o.metric.replace("val/", "test/") in metrics or o.metric in metrics, (o.metric, sorted(metrics))
    assert metrics["steps"] == 2 and metrics["design_hash"] == resolved.design_hash


@pytest.mark.slow
def test_quickstart_runs_as_a_study(tmp_path):
    res = tmp_path / "res"
    proc = run_cli(["study", str(ROOT / "spaces" / "quickstart.yaml"), "--results-dir", str(res), "--trials", "2",
                    "--set", "train.max_steps=2", "--set", "train.eval_every=1"], timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summaries = list(res.glob("studies/*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["total"] == 2 and summary["counts"]["completed"] == 2, summary["counts"]
