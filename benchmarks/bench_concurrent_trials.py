"""Per-trial time of two concurrent study trials, and which threads each trial actually runs on.

    python benchmarks/bench_concurrent_trials.py [--steps 60] [--niceness 15 0]

For each worker niceness (Ray starts its workers at nice 15 unless told otherwise; archspace's embedded Ray now
asks for 0), starts an embedded Ray with 2 CPUs and runs two Ray Tune trials at once, each training the same
2-layer Gated DeltaNet (width 64, MQAR (64, 4), vocabulary 8192, batch 64, `train.threads: 1`) for --steps steps
through `archspace.training.train`, as a study trial does. Inside each trial a Lightning callback reads
/proc/self/task before and after training and reports:

    wall s, s/step     the trial's training time
    busy threads       threads of the trial process that used more than 5% of its training CPU time: 1 when
                       the intra-op pool is the one thread `train.threads` asks for
    intra, inter-op    torch.get_num_threads() in the training thread, torch.get_num_interop_threads()
    trained in caller  whether training ran in the thread that called torch.set_num_threads (train() does both)
    nice               the trial process's niceness

Also runs the same training once outside Ray, in this process, for comparison. Not a test: it prints numbers,
and on a shared machine they depend on the load (printed with them).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

DESIGN = {
    "model": {"d_model": 64, "n_layers": 2, "mixer": {"preset": "gated_deltanet", "heads": 2}, "mlp": {"kind": "none"}},
    "task": {"vocab_size": 8192, "train": [{"seq_len": 64, "num_kv_pairs": 4, "num_examples": 10000}],
             "test": [{"seq_len": 64, "num_kv_pairs": 4, "num_examples": 256}]},
    "train": {"batch_size": 64, "lr": 3e-3, "threads": 1, "checkpoint": False, "warmup_steps": 10},
}


def _ticks() -> dict:
    """CPU time (user + system, in clock ticks) of every thread of this process."""
    out = {}
    for t in Path("/proc/self/task").iterdir():
        try:
            fields = (t / "stat").read_text().rsplit(")", 1)[1].split()
            out[t.name] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return out


def train_once(steps: int, out_dir: str) -> dict:
    """One training run with the thread probe: the numbers of the table above."""
    import lightning as L
    import torch

    from archspace.compiler import resolve
    from archspace.grammar import validate_data
    from archspace.training import train
    from archspace.yamlio import Marks

    design = {**DESIGN, "train": {**DESIGN["train"], "max_steps": steps, "eval_every": steps}}
    resolved = resolve(validate_data(design, Marks("<bench>")))
    probe: dict = {"caller": threading.get_ident()}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            probe.update(before=_ticks(), t0=time.perf_counter(), thread=threading.get_ident(),
                         intra=torch.get_num_threads(), inter=torch.get_num_interop_threads())

        def on_train_end(self, trainer, pl_module):
            probe.update(after=_ticks(), t1=time.perf_counter())

    train(resolved, Path(out_dir), progress=False, callbacks=(Probe(),))
    used = {t: probe["after"][t] - probe["before"].get(t, 0) for t in probe["after"]}
    total = max(1, sum(used.values()))
    return {"wall_s": probe["t1"] - probe["t0"], "s_per_step": (probe["t1"] - probe["t0"]) / steps,
            "busy_threads": sum(1 for v in used.values() if v > 0.05 * total), "threads": len(used),
            "intra": probe["intra"], "inter": probe["inter"], "in_caller": probe["thread"] == probe["caller"],
            "nice": os.nice(0)}


def run_pair(niceness: int, steps: int) -> list[dict]:
    import ray
    from ray import tune

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             _system_config={"worker_niceness": niceness})
    try:
        def trainable(config):
            with tempfile.TemporaryDirectory() as d:
                tune.report(train_once(steps, d))

        with tempfile.TemporaryDirectory() as storage:
            tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                               param_space={"seed": tune.grid_search([0, 1])},
                               tune_config=tune.TuneConfig(max_concurrent_trials=2),
                               run_config=tune.RunConfig(storage_path=storage, verbose=0))
            results = tuner.fit()
            return [r.metrics for r in results]
    finally:
        ray.shutdown()


def _row(label: str, m: dict) -> str:
    return (f"| {label} | {m['wall_s']:.1f} | {m['s_per_step']:.3f} | {m['busy_threads']} of {m['threads']} | "
            f"{m['intra']} | {m['inter']} | {'yes' if m['in_caller'] else 'no'} | {m['nice']} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--niceness", type=int, nargs="+", default=[15, 0])
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(f"load average before: {os.getloadavg()[0]:.1f} (CPUs: {os.cpu_count()})")
    print("| run | wall s | s/step | busy threads | intra-op | inter-op | trained in caller | nice |")
    print("|---|---|---|---|---|---|---|---|")
    for nice in args.niceness:
        for i, m in enumerate(run_pair(nice, args.steps)):
            print(_row(f"Ray worker niceness {nice}, trial {i} (2 at once)", m), flush=True)
    with tempfile.TemporaryDirectory() as d:
        print(_row("outside Ray, alone", train_once(args.steps, d)), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
