"""Log-linear kernels: the chunked form against its token loop and against the plain chunked kernels.

    python benchmarks/bench_log_linear.py [--T 1024 --B 4 --H 4 --K 32 --V 32 --chunk 64 --levels 16 --repeats 3]

Forward+backward times (fp32, CPU, torch's default threads), medians over --repeats after a warm-up:
chunk_log_linear vs naive_recurrent_log_linear (the O(log T)-state token loop), and vs chunk_gla /
chunk_delta_rule on the same inputs (what the hierarchy costs over the plain memory). Not a test.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from archspace.kernels.delta_rule import chunk_delta_rule
from archspace.kernels.gla import chunk_gla
from archspace.kernels.log_linear import chunk_log_linear, naive_recurrent_log_linear


def inputs(delta: bool, B, T, H, K, V, L, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K), "v": r(B, T, H, V), "g": F.logsigmoid(r(B, T, H)),
         "lam": F.softplus(r(B, T, H, L))}
    if delta:
        x["k"] = F.normalize(x["k"], dim=-1)
        x["beta"] = torch.sigmoid(r(B, T, H))
    return {k: v.requires_grad_() for k, v in x.items()}


def timed(fn, x, repeats):
    def once():
        for t in x.values():
            t.grad = None
        t0 = time.perf_counter()
        o, _ = fn(x)
        o.square().sum().backward()
        return time.perf_counter() - t0

    once()
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("T", 1024), ("B", 4), ("H", 4), ("K", 32), ("V", 32), ("chunk", 64), ("levels", 16),
                          ("repeats", 3)):
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args()
    print(f"B={a.B} T={a.T} H={a.H} K={a.K} V={a.V} chunk={a.chunk} levels={a.levels}, forward+backward, "
          f"{torch.get_num_threads()} threads")
    for delta in (False, True):
        x = inputs(delta, a.B, a.T, a.H, a.K, a.V, a.levels)
        beta = (lambda x: x["beta"]) if delta else (lambda x: None)
        chunk = timed(lambda x: chunk_log_linear(x["q"], x["k"], x["v"], g=x["g"], lam=x["lam"], beta=beta(x),
                                                 chunk_size=a.chunk), x, a.repeats)
        loop = timed(lambda x: naive_recurrent_log_linear(x["q"], x["k"], x["v"], g=x["g"], lam=x["lam"],
                                                           beta=beta(x)),
                     x, 1)
        if delta:
            plain = timed(lambda x: chunk_delta_rule(x["q"], x["k"], x["v"], beta=x["beta"], g=x["g"], chunk_size=a.chunk),
                          x, a.repeats)
        else:
            plain = timed(lambda x: chunk_gla(x["q"], x["k"], x["v"], g=x["g"], chunk_size=a.chunk), x, a.repeats)
        name = "log-linear gated delta rule" if delta else "log-linear Mamba2 (scalar gate)"
        print(f"{name:<34} chunk {chunk * 1e3:8.1f} ms   token loop {loop * 1e3:9.1f} ms ({loop / chunk:5.1f}x)   "
              f"plain chunked kernel {plain * 1e3:7.1f} ms (log-linear costs {chunk / plain:.2f}x)")


if __name__ == "__main__":
    main()
