"""Mixture-of-Memories mixer: the gathered chunked path against its token-loop reference and against one
plain memory mixer, for a plain and a log-linear Gated DeltaNet memory.

    python benchmarks/bench_mom.py [--B 4 --T 256 --D 64 --heads 2 --memories 4 --top-k 2 --levels 8 --repeats 15]

Forward+backward times of one mixer (fp32, CPU, torch's default threads), medians over --repeats after a
warm-up (the slow token-loop reference: 3 repeats). Not a test.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from archspace.blocks.config import MemoryConfig, MoMConfig
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.mom import MoMMixer


def timed(mod, x, repeats: int) -> float:
    def once():
        mod.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        y = mod(x)
        loss = y.square().mean() + (mod.aux_loss if getattr(mod, "aux_loss", None) is not None else 0.0)
        loss.backward()
        return time.perf_counter() - t0

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--memories", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    torch.manual_seed(0)
    gdn = MemoryConfig(a.D, a.heads, a.D // a.heads, a.D // a.heads, bias="l2", retention="scalar", key_norm="l2",
                       feature_map="silu", short_conv=4, output_gate=True, chunk_size=a.chunk)
    x = torch.randn(a.B, a.T, a.D)
    print(f"B={a.B} T={a.T} D={a.D} heads={a.heads} memories={a.memories} top_k={a.top_k} chunk={a.chunk}, "
          f"fwd+bwd, median of {a.repeats} (reference: 3), {torch.get_num_threads()} threads")
    for name, mem in (("gated_deltanet", gdn),
                      (f"log-linear gated_deltanet ({a.levels} levels)",
                       dataclasses.replace(gdn, hierarchy="log_linear", levels=a.levels))):
        mom = MoMConfig(mem, memories=a.memories, top_k=a.top_k, shared_memory=True)
        chunk = timed(MoMMixer(mom), x, a.repeats)
        ref = timed(MoMMixer(dataclasses.replace(mom, memory=dataclasses.replace(mem, path="reference"))), x, 3)
        plain = timed(MemoryMixer(mem), x, a.repeats)
        print(f"{name:40s} MoM chunk {chunk * 1e3:8.1f} ms | MoM reference {ref * 1e3:8.1f} ms "
              f"({ref / chunk:5.1f}x) | one plain mixer {plain * 1e3:7.1f} ms (MoM {chunk / plain:4.2f}x)")


if __name__ == "__main__":
    main()
