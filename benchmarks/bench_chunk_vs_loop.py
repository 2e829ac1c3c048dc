"""Chunkwise kernels vs the token-by-token loop, forward and forward+backward, CPU fp32.

    python benchmarks/bench_chunk_vs_loop.py [--T 1024 --B 8 --H 4 --K 64 --V 64 --chunk 64 --repeats 3 --threads 0]

Ops: gated linear attention with a scalar per-head gate (chunk_gla vs naive_recurrent_gla) and
the gated delta rule (chunk_delta_rule vs naive_recurrent_delta_rule). Times are medians over
``--repeats`` runs after one warm-up; torch uses its default number of threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from archspace.kernels.delta_rule import chunk_delta_rule, naive_recurrent_delta_rule
from archspace.kernels.gla import chunk_gla, naive_recurrent_gla


def make_inputs(op, B, T, H, K, V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K), "v": r(B, T, H, V), "g": F.logsigmoid(r(B, T, H))}
    if op == "delta":
        x["k"] = F.normalize(x["k"], dim=-1)
        x["beta"] = torch.sigmoid(r(B, T, H))
    return x


def call(fn, op, x, **kw):
    if op == "gla":
        return fn(x["q"], x["k"], x["v"], g=x["g"], output_final_state=True, **kw)
    return fn(x["q"], x["k"], x["v"], beta=x["beta"], g=x["g"], output_final_state=True, **kw)


def time_it(fn, op, x, backward, repeats, **kw):
    def once():
        xs = {n: t.clone().requires_grad_(backward) for n, t in x.items()}
        t0 = time.perf_counter()
        if backward:
            o, S = call(fn, op, xs, **kw)
            (o.sum() + S.sum()).backward()
        else:
            with torch.no_grad():
                call(fn, op, xs, **kw)
        return time.perf_counter() - t0

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--V", type=int, default=64)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, fp32 CPU, "
          f"B={a.B} T={a.T} H={a.H} K={a.K} V={a.V} chunk={a.chunk}, median of {a.repeats}")
    ops = {
        "gla (scalar gate)": ("gla", naive_recurrent_gla, chunk_gla),
        "gated delta rule": ("delta", naive_recurrent_delta_rule, chunk_delta_rule),
    }
    ratios = {}
    print(f"{'op':<20}{'pass':<10}{'loop ms':>10}{'chunk ms':>10}{'speed-up':>10}")
    for name, (op, naive, chunk) in ops.items():
        x = make_inputs(op, a.B, a.T, a.H, a.K, a.V)
        for label, bwd in (("fwd", False), ("fwd+bwd", True)):
            t_loop = time_it(naive, op, x, bwd, a.repeats)
            t_chunk = time_it(chunk, op, x, bwd, a.repeats, chunk_size=a.chunk)
            ratios[(name, label)] = t_loop / t_chunk
            print(f"{name:<20}{label:<10}{t_loop * 1e3:>10.1f}{t_chunk * 1e3:>10.1f}{t_loop / t_chunk:>9.1f}x")
    for label, target in (("fwd", 5.0), ("fwd+bwd", 20.0)):
        worst = min(r for (_, lab), r in ratios.items() if lab == label)
        print(f"chunk speed-up {label:<8}: min over ops {worst:.1f}x (target >= {target:.0f}x)")


if __name__ == "__main__":
    main()
