"""A study directory written the way archspace.study.runner writes one, with metrics drawn from a known scaling law:
two memory mixers x 4 sizes x 3 FLOP budgets, 2 seeds, so every section of the report has data, in a second."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

# per family: (E, A, B, alpha, beta) of L(N, D) and the training FLOPs per token f(N) = c0 + k N
LAWS = {"gla": ((1.9, 60.0, 90.0, 0.36, 0.3), (2.0e4, 6.6)),
        "gated_deltanet": ((1.8, 55.0, 80.0, 0.34, 0.29), (2.4e4, 6.9))}
SIZES = {32: 3.0e4, 48: 6.5e4, 64: 1.15e5, 96: 2.6e5}  # d_model -> parameters without the embedding
BUDGETS = (3e11, 1e12, 3e12)
SLICES = ("seq64_kv4", "seq128_kv8")

SPACE = """\
schema_version: 1
name: fake
base:
  model: {d_model: 32, n_layers: 2, mixer: {heads: 2}}
  task: lm_stdlib_bytes
  train: {batch_size: 8}
axes:
  mixer.preset: [gla, gated_deltanet]
  hybrid.ratio: ["1:0", "1:1", "0:1"]
  d_model: [32, 48, 64, 96]
  train.flops: [3e11, 1e12, 3e12]
objectives: [{metric: val/loss, mode: min}, {metric: state_size, mode: min}]
search: {sampler: grid}
pruner: {kind: none}
seeds: 2
scaling: {family: [mixer.preset, hybrid.ratio], bootstrap: 100}
"""


def write_fake_study(root: Path, name: str = "fake") -> Path:
    rng = np.random.Generator(np.random.PCG64(0))
    study = Path(root) / "studies" / name
    (study / "trials").mkdir(parents=True)
    (study / "space.yaml").write_text(SPACE)
    (study / "study.json").write_text(json.dumps({"name": name, "space_file": str(study / "space.yaml"),
                                                  "space_hash": "0" * 16}))
    rows = []
    k = 0
    for mixer, ((e, a, b, al, be), (c0, kk)) in LAWS.items():
        for ratio, n_a in (("1:0", 0), ("1:1", 1)):
            for d_model, n in SIZES.items():
                for budget in BUDGETS:
                    fpt = c0 + kk * n
                    tokens = budget / fpt
                    law = e + a / n ** al + b / tokens ** be + 0.05 * n_a  # attention layers cost a little here
                    for seed in (0, 1):
                        k += 1
                        tid = f"t{k:04d}"
                        loss = law * float(np.exp(rng.normal(0, 0.004)))
                        acc = float(np.clip(0.3 + 0.4 * n_a + 0.05 * seed + rng.normal(0, 0.02), 0, 1))
                        final = {"val/loss": loss, "test/loss": loss * 1.01, "val/acc": acc, "test/acc": acc,
                                 **{f"test/acc/{s}": acc * (1 - 0.2 * j) for j, s in enumerate(SLICES)},
                                 "params_non_embedding": n, "params": n + 258 * d_model, "tokens": tokens,
                                 "train_flops": budget, "train_flops_per_token": fpt, "state_size": 40 * d_model
                                 * (2 - n_a) + 128 * d_model * n_a, "steps": 100.0}
                        values = {"model.mixer.preset": mixer, "model.hybrid.ratio": ratio, "model.d_model": d_model,
                                  "train.flops": budget}
                        rows.append(_row(tid, values, final, n_a, seed))
                        _trial_files(study / "trials" / tid, final, "M" * (2 - n_a) + "A" * n_a)
    # pure attention: the shared end point of the ratio curves (no memory mixer, no scaling family)
    for seed in (0, 1):
        k += 1
        final = {"val/loss": 2.6 + 0.01 * seed, "test/loss": 2.62, "val/acc": 0.9, "test/acc": 0.9 - 0.02 * seed,
                 "params_non_embedding": 6e4, "tokens": 1e5, "train_flops": 1e12, "train_flops_per_token": 4e5,
                 "state_size": 8192.0}
        rows.append(_row(f"t{k:04d}", {"model.hybrid.ratio": "0:1", "model.d_model": 48, "train.flops": 1e12},
                         final, 2, seed))
        _trial_files(study / "trials" / f"t{k:04d}", final, "AA")
    summary = {"study": name, "objectives": [{"metric": "val/loss", "mode": "min"}, {"metric": "state_size", "mode": "min"}],
               "counts": {"completed": len(rows), "pruned": 0, "failed": 0, "running": 0, "pending": 0},
               "total": len(rows), "best": rows[0], "pareto": [], "failures": {}, "trials": rows}
    (study / "summary.json").write_text(json.dumps(summary, indent=2))
    return study


def _row(tid, values, final, n_a, seed):
    return {"trial_id": tid, "status": "completed", "values": values,
            "objectives": {"val/loss": final["val/loss"], "state_size": final["state_size"]},
            "params": int(final.get("params", final["params_non_embedding"])), "state_size": int(final["state_size"]),
            "steps": 100, "design_hash": _hash(json.dumps(values, sort_keys=True)),
            "layout": "M" * (2 - n_a) + "A" * n_a, "attention_layers": n_a,
            "slices": {k: v for k, v in final.items() if k.startswith("test/acc/")}, "reason": None,
            "final": final, "replicate": seed, "seed": seed}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _trial_files(run_dir: Path, final: dict, layout: str) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({**final, "design_hash": _hash(layout)}))
    (run_dir / "resolved.yaml").write_text(f"name: fake\nlayout: {layout}\n")
    with open(run_dir / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "val/loss", "val/acc"])
        w.writeheader()
        for step in (25, 50, 75, 100):
            w.writerow({"step": step, "val/loss": final["val/loss"] * (1 + 0.5 / step),
                        "val/acc": final["val/acc"] * step / 100})
