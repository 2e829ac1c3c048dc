"""Chunkwise kernels vs the token-by-token loop, forward and forward+backward, CPU fp32.

    python benchmarks/bench_chunk_vs_loop.py [--T 1024 --B 8 --H 4 --K 64 --V 64 --chunk 64 --repeats 3 --threads 0]

Ops (each chunked form against its token loop): gated linear attention with a scalar per-head gate (GLA/Mamba2),
the gated delta rule (Gated DeltaNet), and the transitions of issue 13: the vector-gated delta rule (KDA), Gated
DeltaProduct with 2 Householder steps, the diagonal-plus-low-rank transition (RWKV-7), HGRN2 (GLA with a vector gate
and the key tied to it, k = 1 - exp(g)) and mLSTM. ``--ops`` picks a subset. Times are medians over ``--repeats``
runs after one warm-up; torch uses its default number of threads unless ``--threads``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from archspace.kernels.delta_product import chunk_delta_product, naive_recurrent_delta_product
from archspace.kernels.delta_rule import chunk_delta_rule, naive_recurrent_delta_rule
from archspace.kernels.dplr import chunk_dplr, naive_recurrent_dplr
from archspace.kernels.gla import chunk_gla, chunk_hgrn2, naive_recurrent_gla
from archspace.kernels.mlstm import chunk_mlstm, naive_recurrent_mlstm


def make_inputs(op, B, T, H, K, V, seed=0):
    """The positional q, k, v and the keyword gates of ``op``, drawn in the ranges its models use."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K), "v": r(B, T, H, V)}
    if op == "gla":
        x["g"] = F.logsigmoid(r(B, T, H))
    elif op == "delta":
        x.update(k=F.normalize(x["k"], dim=-1), beta=torch.sigmoid(r(B, T, H)), g=F.logsigmoid(r(B, T, H)))
    elif op == "kda":
        x.update(k=F.normalize(x["k"], dim=-1), beta=torch.sigmoid(r(B, T, H)), g=F.logsigmoid(r(B, T, H, K)))
    elif op == "deltaproduct":  # 2 Householder steps, step sizes in (0, 2), a scalar gate
        x.update(k=F.normalize(r(B, T, 2, H, K), dim=-1), v=r(B, T, 2, H, V), beta=2 * torch.sigmoid(r(B, T, 2, H)),
                 g=F.logsigmoid(r(B, T, H)))
    elif op == "dplr":  # RWKV-7: a = -kh, b = iclr * kh, log w = -e^{-1/2} sigmoid(.)
        kh = F.normalize(r(B, T, H, K), dim=-1)
        x.update(a=-kh, b=kh * torch.sigmoid(r(B, T, H, K)), g=-0.6065306597 * torch.sigmoid(r(B, T, H, K)))
    elif op == "hgrn2":  # the key is 1 - exp(g), computed inside the timed call (its gradient flows into g)
        x["g"] = F.logsigmoid(r(B, T, H, K))
        del x["k"]
    elif op == "mlstm":
        x.update(k=x["k"] * K ** -0.5, i=r(B, T, H), g=F.logsigmoid(3 + 2 * r(B, T, H)))
    return x


def call(fn, op, x, **kw):
    gates = {n: t for n, t in x.items() if n not in ("q", "k", "v")}
    k = -torch.expm1(x["g"]) if op == "hgrn2" else x["k"]
    return fn(x["q"], k, x["v"], **gates, output_final_state=True, **kw)


def _total(o, S):
    """A scalar that depends on the output and every part of the final state."""
    states = S.values() if isinstance(S, dict) else [S]
    return o.sum() + sum(s.sum() for s in states)


OPS = {
    "gla": ("gla (scalar gate)", "gla", naive_recurrent_gla, chunk_gla),
    "delta": ("gated delta rule", "delta", naive_recurrent_delta_rule, chunk_delta_rule),
    "kda": ("kda (vector delta)", "kda", naive_recurrent_delta_rule, chunk_delta_rule),
    "deltaproduct": ("gated deltaproduct 2", "deltaproduct", naive_recurrent_delta_product, chunk_delta_product),
    "dplr": ("rwkv7 (dplr)", "dplr", naive_recurrent_dplr, chunk_dplr),
    "hgrn2": ("hgrn2", "hgrn2", naive_recurrent_gla, chunk_hgrn2),
    "mlstm": ("mlstm", "mlstm", naive_recurrent_mlstm, chunk_mlstm),
}


def time_it(fn, op, x, backward, repeats, **kw):
    def once():
        xs = {n: t.clone().requires_grad_(backward) for n, t in x.items()}
        t0 = time.perf_counter()
        if backward:
            o, S = call(fn, op, xs, **kw)
            _total(o, S).backward()
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
    p.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS), help="ops to time (default all)")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, fp32 CPU, "
          f"B={a.B} T={a.T} H={a.H} K={a.K} V={a.V} chunk={a.chunk}, median of {a.repeats}")
    ratios = {}
    print(f"{'op':<22}{'pass':<10}{'loop ms':>10}{'chunk ms':>10}{'speed-up':>10}")
    for name, op, naive, chunk in (OPS[o] for o in a.ops):
        x = make_inputs(op, a.B, a.T, a.H, a.K, a.V)
        for label, bwd in (("fwd", False), ("fwd+bwd", True)):
            t_loop = time_it(naive, op, x, bwd, a.repeats)
            t_chunk = time_it(chunk, op, x, bwd, a.repeats, chunk_size=a.chunk)
            ratios[(name, label)] = t_loop / t_chunk
            print(f"{name:<22}{label:<10}{t_loop * 1e3:>10.1f}{t_chunk * 1e3:>10.1f}{t_loop / t_chunk:>9.1f}x", flush=True)
    for label, target in (("fwd", 5.0), ("fwd+bwd", 20.0)):
        worst = min(r for (_, lab), r in ratios.items() if lab == label)
        print(f"chunk speed-up {label:<8}: min over ops {worst:.1f}x (target >= {target:.0f}x)")


if __name__ == "__main__":
    main()
