"""Time the Chinchilla fit (archspace.analysis.scaling) on synthetic data: L-BFGS from all 4,500 grid starts vs
from the best 16, the bootstrap, and the 100-data-set recovery run of tests/analysis/test_scaling.py.

    python benchmarks/bench_scaling_fit.py [--points 36] [--bootstrap 1000] [--repeats 3]

Prints the best of --repeats wall times per case (a measurement, not a test).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from archspace.analysis import scaling as S

TRUTH = np.array([1.69, 406.4, 410.7, 0.34, 0.28])  # Hoffmann et al. 2022's E, A, B, alpha, beta


def data(side: int, sets: int, seed: int = 0):
    n, d = np.meshgrid(np.logspace(6, 11, side), np.logspace(8, 13, side))
    n, d = n.ravel(), d.ravel()
    law = TRUTH[0] + TRUTH[1] / n ** TRUTH[3] + TRUTH[2] / d ** TRUTH[4]
    rng = np.random.Generator(np.random.PCG64(seed))
    return n, d, law[None] * np.exp(rng.normal(0, 0.001, (sets, n.size)))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=36, help="data points (a square grid of N x D)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    side = int(round(args.points ** 0.5))
    n, d, losses = data(side, 100)
    one = losses[0]
    cases = [
        ("fit, L-BFGS from all 4,500 grid starts", lambda: S.fit_chinchilla(n, d, one)),
        ("fit, from the best 16 grid starts", lambda: S.fit_chinchilla(n, d, one, starts=16)),
        (f"fit from 16 starts + {args.bootstrap} bootstrap refits",
         lambda: S.fit_chinchilla(n, d, one, starts=16, bootstrap=args.bootstrap)),
        ("recovery test: 100 data sets x (16 starts + 200 bootstrap)",
         lambda: S.fit_chinchilla_many(n, d, losses, starts=16, bootstrap=200)),
    ]
    print(f"{side * side} points, noise 0.1%, best of {args.repeats}")
    for name, fn in cases:
        print(f"  {name:60s} {best_of(fn, args.repeats):7.2f} s")


if __name__ == "__main__":
    main()
