"""The MAD score of a design: train it on every (task, setting, lr, weight decay) and aggregate.

setting result = best test accuracy over the lr x weight-decay sweep; task score = mean over the
task's settings; MAD score = mean over tasks (Poli et al. 2024). `archspace mad DESIGN.yaml` runs it.

The design's model section is kept (its vocabulary follows each task), its task section is
replaced by each MAD setting, and its train section supplies everything but lr and weight decay,
which the sweep sets, and the budget keys below.

Budgets (per run):
  cpu:  num_test_examples 256, max_steps 300, batch 32, warm-up 30, cosine; the setting's training-set
        size is kept (so the num_train_examples grid still varies data), evaluation at the end only.
  full: num_test_examples 1,280 (MAD's), max_steps 5,000, batch 128, warm-up 200. archspace's choice of a
        long schedule, not a copy of MAD-lab's trainer settings.
  --steps / --batch-size / --test-examples override either.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .mad_params import BASELINES, SWEEP_LR, SWEEP_WD, TASKS, settings

BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": dict(num_test_examples=256, max_steps=300, batch_size=32, warmup_steps=30),
    "full": dict(num_test_examples=1280, max_steps=5000, batch_size=128, warmup_steps=200),
}


def plan(tasks: Sequence[str], which: str = "baseline") -> list[tuple[str, str, dict]]:
    """[(task, setting label, task section)] in run order."""
    out = []
    for t in tasks:
        name = t if t.startswith("mad_") else f"mad_{t}"
        if name not in BASELINES:
            raise ValueError(f"unknown MAD task {t!r}; tasks: {', '.join(TASKS.values())}")
        for label, params in settings(name, which):
            out.append((name, label, {"name": name, **params}))
    return out


def _run_resolved(resolved, task: dict, lr: float, wd: float, budget: dict):
    from ..compiler import Resolved, design_hash
    from ..grammar import TaskSpec

    task_full = TaskSpec.model_validate(task).model_dump()
    model = dataclasses.replace(resolved.model, vocab_size=task_full["vocab_size"])
    train = {**resolved.train, "lr": lr, "weight_decay": wd, "max_steps": budget["max_steps"],
             "batch_size": budget["batch_size"], "warmup_steps": min(budget["warmup_steps"], budget["max_steps"] // 2),
             "eval_every": budget["max_steps"], "checkpoint": False}
    return Resolved(name=resolved.name, model=model, layout=resolved.layout, labels=resolved.labels,
                    task=task_full, train=train, design_hash=design_hash(model.to_dict()))


def evaluate(resolved, out_dir: Path, *, tasks: Sequence[str] = tuple(TASKS), which: str = "baseline",
             budget: str | dict = "cpu", lrs: Sequence[float] = SWEEP_LR, wds: Sequence[float] = SWEEP_WD,
             log: Optional[Callable[[str], None]] = print,
             on_task: Optional[Callable[[str, float], None]] = None) -> dict[str, Any]:
    """Run the sweep for one resolved design; write and return {"runs", "settings", "tasks", "mad_score"}.

    Runs whose run directory already holds metrics.json are not trained again (a resumed evaluation).
    `on_task(task, score)` is called as each task's last setting finishes (a study's intermediate report).
    """
    from ..training import train

    b = dict(BUDGETS[budget]) if isinstance(budget, str) else dict(budget)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    runs, per_setting = [], []
    data_hashes: dict[str, str] = {}
    t0 = time.perf_counter()
    planned = plan(tasks, which)
    for i, (name, label, params) in enumerate(planned):
        task = {**params, "num_test_examples": b["num_test_examples"]}
        best = None
        for lr in lrs:
            for wd in wds:
                run_dir = out_dir / TASKS[name] / label.replace("=", "-") / f"lr{lr:g}_wd{wd:g}"
                done = run_dir / "metrics.json"
                if done.is_file():
                    m = json.loads(done.read_text())
                else:
                    m = train(_run_resolved(resolved, task, lr, wd, b), run_dir, progress=False)
                data_hashes[f"{TASKS[name]}/{label}"] = m.get("data_hash", "")
                acc = float(m["test/acc"])
                acc = 0.0 if math.isnan(acc) else acc
                runs.append({"task": TASKS[name], "setting": label, "lr": lr, "weight_decay": wd, "test/acc": acc,
                             "train_wall_s": m.get("train_wall_s")})
                if best is None or acc > best["test/acc"]:
                    best = runs[-1]
        per_setting.append({"task": TASKS[name], "setting": label, "best_acc": best["test/acc"],
                            "best_lr": best["lr"], "best_weight_decay": best["weight_decay"]})
        if log:
            log(f"{TASKS[name]:<24} {label:<24} best test/acc {best['test/acc']:.3f} "
                f"(lr {best['lr']:g}, wd {best['weight_decay']:g})  [{time.perf_counter() - t0:.0f}s]")
        if on_task is not None and (i + 1 == len(planned) or planned[i + 1][0] != name):
            accs = [s["best_acc"] for s in per_setting if s["task"] == TASKS[name]]
            on_task(TASKS[name], sum(accs) / len(accs))
    task_scores: dict[str, float] = {}
    for s in per_setting:
        task_scores.setdefault(s["task"], []).append(s["best_acc"])  # type: ignore[arg-type]
    task_scores = {k: sum(v) / len(v) for k, v in task_scores.items()}  # type: ignore[union-attr]
    result = {"design": resolved.name, "design_hash": resolved.design_hash, "settings_kind": which, "budget": b,
              "lrs": list(lrs), "weight_decays": list(wds), "runs": runs, "settings": per_setting,
              "tasks": task_scores, "mad_score": sum(task_scores.values()) / len(task_scores),
              "data_hash": hashlib.sha256(json.dumps(data_hashes, sort_keys=True).encode()).hexdigest()[:16],
              "wall_s": time.perf_counter() - t0}
    (out_dir / "mad_scores.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    lines = [f"MAD score of {result['design']} ({result['settings_kind']} settings, "
             f"{result['budget']['max_steps']} steps x batch {result['budget']['batch_size']})",
             f"{'task':<26}{'score':>8}"]
    for t, v in result["tasks"].items():
        lines.append(f"{t:<26}{v:>8.3f}")
    lines.append(f"{'MAD score':<26}{result['mad_score']:>8.3f}")
    return "\n".join(lines)
