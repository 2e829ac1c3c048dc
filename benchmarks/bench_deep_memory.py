"""The mini-batch engine's chunked path against its token loop (kernels/minibatch.py), CPU fp32; and, with
``--agreement``, how closely the two paths agree in fp32 and fp64 for every mini-batch preset.

    python benchmarks/bench_deep_memory.py [--T 1024 --B 8 --d-model 256 --heads 4 --chunk 16 --repeats 3 --threads 2]
                                           [--protocols forward fwd+bwd]
    python benchmarks/bench_deep_memory.py --agreement

Speed: Titans' long-term memory (blocks/presets.py ``titans_lmm``: a 2-layer MLP memory of expansion 4, l2 loss,
momentum and weight decay, mini-batches of ``--chunk`` tokens), d_model 256 = 4 heads of K = V = 64, i.e. the
kernel on q, k, v [B, T, 4, 64] with its gates. Two protocols, both with the same semantics (gradients at the
mini-batch start):

    forward      no autograd, both paths
    fwd+bwd      the chunked path with autograd; the token loop with autograd and each mini-batch of the loop under
                 torch.utils.checkpoint (without it the loop keeps every token's weight, momentum and gradient
                 copies for backward: about 12 MB per token at this size, 12 GB at T = 1024, more than a shared
                 24 GB machine can hold), so its backward recomputes its forward once.

Memory: glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MB), after which the
loop's per-token 4 MB weight copies are served from the heap, which then fragments and is not given back: with
checkpointing the loop still grew by about 0.8 GB per 32 tokens (3 GB at T = 128, past 17 GB at T = 1024). The
benchmark therefore fixes the threshold with mallopt (``--mmap-threshold``, default 128 KiB, glibc's initial value;
0 leaves glibc's dynamic default), which bounds the checkpointed loop (0.8 GB at T = 128). Both paths run under the
same setting in the same process; peak resident memory is printed.

Times are medians over ``--repeats`` runs after a warm-up (the loop: one run; it takes minutes).
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import statistics
import resource
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from archspace.blocks.dispatch import memory_statics, spec_of
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.presets import memory_preset
from archspace.kernels.minibatch import chunk_minibatch, naive_minibatch


def inputs(B, T, H, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return {"q": F.normalize(r(B, T, H, K), dim=-1), "k": F.normalize(r(B, T, H, K), dim=-1), "v": r(B, T, H, K),
            "beta": torch.sigmoid(r(B, T, H)), "g": -F.softplus(r(B, T, H) - 4.6),
            "log_eta": F.logsigmoid(r(B, T, H) + 2.2)}


def loop_checkpointed(x, spec, statics, C):
    """The token loop, one checkpointed call per mini-batch (continuing the state)."""
    T = x["q"].shape[1]
    state, outs = None, []
    for s in range(0, T, C):
        piece = {n: t[:, s:s + C] for n, t in x.items()}

        def run(*args, state=state):
            o, st = naive_minibatch(*args[:3], beta=args[3], g=args[4], log_eta=args[5], spec=spec, statics=statics,
                                    initial_state=state, output_final_state=True, chunk_size=C)
            return o, st["memory"]

        o, mem = checkpoint(run, *piece.values(), use_reentrant=False)
        state = {"memory": mem, "pos": s + piece["q"].shape[1]}
        outs.append(o)
    return torch.cat(outs, 1), state


def fix_mmap_threshold(nbytes: int) -> bool:
    """mallopt(M_MMAP_THRESHOLD, nbytes): blocks of at least nbytes are mmapped and returned to the system when
    freed, and glibc stops raising the threshold (module docstring). False where libc has no mallopt."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_MMAP_THRESHOLD = -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, nbytes))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def timed(fn, repeats):
    fn()  # warm-up
    return statistics.median(_once(fn) for _ in range(repeats))


def _once(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speed(a):
    cfg = memory_preset("titans_lmm", a.d_model, a.heads, a.d_model // a.heads, a.d_model // a.heads,
                        chunk_size=a.chunk)
    spec = spec_of(cfg)
    mixer = MemoryMixer(cfg)
    statics = memory_statics(mixer, cfg, a.B)
    x = inputs(a.B, a.T, a.heads, a.d_model // a.heads)
    C = a.chunk
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, fp32 CPU; titans_lmm memory, d_model "
          f"{a.d_model} ({a.heads} heads, K=V={a.d_model // a.heads}, hidden {4 * a.d_model // a.heads}), B={a.B} "
          f"T={a.T}, mini-batch {C}")

    def chunk_fwd():
        with torch.no_grad():
            chunk_minibatch(*(x[s] for s in "qkv"), beta=x["beta"], g=x["g"], log_eta=x["log_eta"], spec=spec,
                            statics=statics, chunk_size=C)

    def loop_fwd():
        with torch.no_grad():
            naive_minibatch(*(x[s] for s in "qkv"), beta=x["beta"], g=x["g"], log_eta=x["log_eta"], spec=spec,
                            statics=statics, chunk_size=C)

    def leaves():
        return {n: t.clone().requires_grad_(True) for n, t in x.items()}

    def chunk_bwd():
        xs = leaves()
        o, st = chunk_minibatch(*(xs[s] for s in "qkv"), beta=xs["beta"], g=xs["g"], log_eta=xs["log_eta"],
                                spec=spec, statics=statics, output_final_state=True, chunk_size=C)
        (o.square().mean() + st["memory"].mean()).backward()

    def loop_bwd():
        xs = leaves()
        o, st = loop_checkpointed(xs, spec, statics, C)
        (o.square().mean() + st["memory"].mean()).backward()

    rows = []
    protocols = {"forward": (chunk_fwd, loop_fwd), "fwd+bwd": (chunk_bwd, loop_bwd)}
    for label, (chunk, loop) in ((p, protocols[p]) for p in a.protocols):
        t_chunk = timed(chunk, a.repeats)
        t_loop = _once(loop) if a.loop_once else timed(loop, a.repeats)
        rows.append((label, t_loop, t_chunk))
        print(f"{label:8s} token loop {t_loop:8.2f} s   chunked {t_chunk:7.2f} s   speed-up {t_loop / t_chunk:5.1f}x"
              f"   (peak resident so far {peak_gb():.2f} GB)", flush=True)
    return rows


def agreement(seeds=3):
    """max relative difference chunked vs loop (outputs, input gradient, worst parameter gradient) per preset."""
    from archspace.blocks.presets import PRESETS
    from archspace.blocks.config import is_minibatch

    print("preset        dtype    chunk  outputs   grad x    worst param grad   (3 seeds, B=2 T=11 D=32 H=2 K=V=8)")
    for name in sorted(n for n, p in PRESETS.items() if p["type"] == "memory" and is_minibatch(p)):
        for dt in (torch.float32, torch.float64):
            for C in ((2, 4) if name.startswith("ttt") else (1, 4)):
                worst = [0.0, 0.0, 0.0]
                for seed in range(seeds):
                    torch.manual_seed(seed)
                    cfg = memory_preset(name, 32, 2, 8, 8, chunk_size=C)
                    a = MemoryMixer(cfg)
                    with torch.no_grad():
                        for p in a.parameters():
                            p.add_(0.2 * torch.randn_like(p) * (p.abs().mean() + 0.05))
                    a = a.to(dt)
                    b = MemoryMixer(dataclasses.replace(cfg, path="reference")).to(dt)
                    b.load_state_dict(a.state_dict())
                    x, w = torch.randn(2, 11, 32, dtype=dt), torch.randn(2, 11, 32, dtype=dt)
                    xs = [x.clone().requires_grad_(True) for _ in range(2)]
                    ys = []
                    for mod, xi in zip((a, b), xs):
                        y = mod(xi)
                        (y * w).sum().backward()
                        ys.append(y.detach())
                    ref = dict(b.named_parameters())

                    def rel(u, v):
                        return ((u - v).abs().max() / v.abs().max()).item()

                    errs = [rel(ys[0], ys[1]), rel(xs[0].grad, xs[1].grad),
                            max(rel(p.grad, ref[n].grad) for n, p in a.named_parameters())]
                    worst = [max(u, v) for u, v in zip(worst, errs)]
                print(f"{name:12s}  {str(dt)[6:]:8s} {C:5d}  {worst[0]:.1e}   {worst[1]:.1e}   {worst[2]:.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--loop-repeats", dest="loop_once", action="store_false",
                   help="time the token loop like the chunked path (median of --repeats), not once")
    p.add_argument("--protocols", nargs="+", choices=["forward", "fwd+bwd"], default=["forward", "fwd+bwd"])
    p.add_argument("--mmap-threshold", type=int, default=128 * 1024,
                   help="glibc M_MMAP_THRESHOLD in bytes, fixed with mallopt (module docstring); 0: glibc's default")
    p.add_argument("--agreement", action="store_true", help="fp32 / fp64 agreement of the two paths per preset")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.mmap_threshold > 0:
        print(f"glibc mmap threshold fixed at {a.mmap_threshold} bytes: {fix_mmap_threshold(a.mmap_threshold)}")
    if a.agreement:
        agreement()
    else:
        speed(a)


if __name__ == "__main__":
    main()
