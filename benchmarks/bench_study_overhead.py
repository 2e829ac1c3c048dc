"""Per-trial overhead of the study machinery (Ray Tune + Optuna + MLflow) against plain `train()` calls.

    python benchmarks/bench_study_overhead.py --trials 6

Runs the same N tiny designs (a grid over the learning rate, max_steps 5) twice:
  1. in-process, one after the other, through `archspace.training.train` (no Ray, no MLflow);
  2. through `archspace.study.runner.run_study` with the embedded Ray, one trial at a time
     (--max-concurrent 1, so both sides use the same CPUs), the embedded MLflow store and the live view off.
Prints (study wall - direct wall) / N, the Ray start time separately, and how that splits into a fixed
cost (the first Ray worker imports torch and Lightning; reused actors do not) and a marginal cost per
trial. Target: <= 3 s per trial.
Not a test: it prints numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SPACE = """schema_version: 1
name: overhead
base:
  model:
    d_model: 16
    n_layers: 2
    hybrid: {{ratio: "1:1"}}
    mixer: {{preset: gated_deltanet, heads: 2}}
    attention: {{preset: attention, heads: 2}}
  task:
    vocab_size: 64
    train: [{{seq_len: 16, num_kv_pairs: 2, num_examples: 64}}]
    test: [{{seq_len: 16, num_kv_pairs: 2, num_examples: 32}}]
  train:
    max_steps: 5
    batch_size: 16
    eval_every: 5
    warmup_steps: 1
    checkpoint: false
axes:
  lr: [{lrs}]
search: {{sampler: grid}}
pruner: {{kind: none}}
resources: {{cpus_per_trial: 1, max_concurrent: 1}}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    n = args.trials
    tmp = Path(tempfile.mkdtemp(prefix="archspace-overhead-"))
    lrs = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(n))
    space_file = tmp / "overhead.yaml"
    space_file.write_text(SPACE.format(lrs=lrs))

    from archspace.study.runner import execution_values, run_study
    from archspace.study.space import load_space, resolve_values

    space = load_space(space_file)

    # 1. direct: import cost paid once, like a reused Ray actor pays it once
    t_import = time.perf_counter()
    from archspace.training import train

    t_import = time.perf_counter() - t_import
    t0 = time.perf_counter()
    for i, values in enumerate(space.grid):
        train(resolve_values(space, {**values, **execution_values(space)}), tmp / "direct" / str(i), progress=False)
    direct = time.perf_counter() - t0

    # 2. through the study machinery
    from rich.console import Console

    console = Console(file=open(os.devnull, "w"))
    t0 = time.perf_counter()
    outcome = run_study(space, results_dir=str(tmp / "results"), console=console, live=False)
    study = time.perf_counter() - t0
    c = outcome.summary["counts"]
    assert c["completed"] == n, c

    print(f"archspace study overhead, {n} tiny trials (max_steps 5, one at a time), {os.cpu_count()} CPUs")
    print(f"  direct train() in-process : {direct:7.2f} s  ({direct / n:.2f} s/trial; import of training {t_import:.1f} s "
          f"not counted)")
    print(f"  study (Ray + Optuna + MLflow): {study:7.2f} s  ({study / n:.2f} s/trial)")
    print(f"    of which Ray start      : {outcome.ray_start_s:7.2f} s")
    ends = sorted(p.stat().st_mtime for p in (outcome.study_dir / "trials").glob("*/metrics.json"))
    marginal = (ends[-1] - ends[0]) / max(1, n - 1) - direct / n if n > 1 else float("nan")
    fixed = study - outcome.ray_start_s - (ends[-1] - ends[0]) - direct / n
    per_trial = (study - direct) / n
    per_trial_no_start = (study - outcome.ray_start_s - direct) / n
    print(f"  overhead per trial        : {per_trial:7.2f} s  (target <= 3 s)")
    print(f"  overhead per trial without the Ray start: {per_trial_no_start:.2f} s")
    print(f"  marginal overhead per trial once workers are warm: {marginal:.2f} s "
          f"(spacing of trial ends minus a direct trial)")
    print(f"  fixed cost besides the Ray start (MLflow store, first worker importing torch/Lightning, "
          f"shutdown): {fixed:.2f} s")
    print(f"  (scratch dir {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
