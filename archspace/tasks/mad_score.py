"""The MAD score of a design: train it on every (task, setting, lr, weight decay) and aggregate.

setting result = test accuracy of the run whose *validation* accuracy is best over the lr x weight-decay
sweep; task score = mean over the task's settings; MAD score = mean over tasks (Poli et al. 2024).
`archspace mad DESIGN.yaml` runs it. MAD-lab keeps the best *test* accuracy of the sweep instead, which
selects on the test data; that figure is kept as `mad_score_best_test` for comparison with published
scores, and `val_mad_score` (the validation accuracies of the chosen runs) is what a study selects on.

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
    `on_task(task, {"val": score, "test": score})` is called as each task's last setting finishes (a study's
    intermediate report).
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
                acc, val = (_acc(m.get(k)) for k in ("test/acc", "val/acc"))
                runs.append({"task": TASKS[name], "setting": label, "lr": lr, "weight_decay": wd, "val/acc": val,
                             "test/acc": acc, "train_wall_s": m.get("train_wall_s")})
                if best is None or val > best["val/acc"]:  # chosen on validation; ties keep the earlier run
                    best = runs[-1]
        swept = [r["test/acc"] for r in runs if r["task"] == TASKS[name] and r["setting"] == label]
        per_setting.append({"task": TASKS[name], "setting": label, "best_acc": best["test/acc"],
                            "best_val_acc": best["val/acc"], "best_test_acc_over_sweep": max(swept),
                            "best_lr": best["lr"], "best_weight_decay": best["weight_decay"]})
        if log:
            log(f"{TASKS[name]:<24} {label:<24} test/acc {best['test/acc']:.3f} of the best val/acc "
                f"{best['val/acc']:.3f} (lr {best['lr']:g}, wd {best['weight_decay']:g})  "
                f"[{time.perf_counter() - t0:.0f}s]")
        if on_task is not None and (i + 1 == len(planned) or planned[i + 1][0] != name):
            done = [s for s in per_setting if s["task"] == TASKS[name]]
            on_task(TASKS[name], {"val": sum(s["best_val_acc"] for s in done) / len(done),
                                  "test": sum(s["best_acc"] for s in done) / len(done)})
    scores = {key: _means(per_setting, key) for key in ("best_acc", "best_val_acc", "best_test_acc_over_sweep")}
    result = {"design": resolved.name, "design_hash": resolved.design_hash, "settings_kind": which, "budget": b,
              "lrs": list(lrs), "weight_decays": list(wds), "runs": runs, "settings": per_setting,
              "tasks": scores["best_acc"], "mad_score": _mean(scores["best_acc"].values()),
              "val_tasks": scores["best_val_acc"], "val_mad_score": _mean(scores["best_val_acc"].values()),
              "tasks_best_test": scores["best_test_acc_over_sweep"],
              "mad_score_best_test": _mean(scores["best_test_acc_over_sweep"].values()),
              "data_hash": hashlib.sha256(json.dumps(data_hashes, sort_keys=True).encode()).hexdigest()[:16],
              "wall_s": time.perf_counter() - t0}
    (out_dir / "mad_scores.json").write_text(json.dumps(result, indent=2))
    return result


def _acc(value) -> float:
    """An accuracy from metrics.json; a missing or NaN one counts as 0 (never chosen, never scored above 0)."""
    acc = float("nan") if value is None else float(value)
    return 0.0 if math.isnan(acc) else acc


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _means(per_setting: list[dict], key: str) -> dict[str, float]:
    """Per task, the mean over its settings of `key`."""
    by_task: dict[str, list[float]] = {}
    for s in per_setting:
        by_task.setdefault(s["task"], []).append(s[key])
    return {k: _mean(v) for k, v in by_task.items()}


def format_table(result: dict) -> str:
    lines = [f"MAD score of {result['design']} ({result['settings_kind']} settings, "
             f"{result['budget']['max_steps']} steps x batch {result['budget']['batch_size']}); lr and weight decay "
             "chosen on validation, scored on test",
             f"{'task':<26}{'score':>8}{'val':>8}{'best test':>11}"]
    for t, v in result["tasks"].items():
        lines.append(f"{t:<26}{v:>8.3f}{result['val_tasks'][t]:>8.3f}{result['tasks_best_test'][t]:>11.3f}")
    lines.append(f"{'MAD score':<26}{result['mad_score']:>8.3f}{result['val_mad_score']:>8.3f}"
                 f"{result['mad_score_best_test']:>11.3f}")
    lines.append("(best test: the best test accuracy of the sweep, MAD-lab's protocol, which selects on test data)")
    return "\n".join(lines)
