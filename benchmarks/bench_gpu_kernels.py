"""GPU kernels: archspace Triton vs archspace chunked PyTorch vs fla (when importable) vs SDPA.

    python benchmarks/bench_gpu_kernels.py [--shapes 8x2048 2x8192 1x32768] [--heads 16 --dim 128]
        [--ops gla deltanet gated_deltanet mamba2] [--dtype bf16] [--no-torch-chunk] [--json FILE]
    python benchmarks/bench_gpu_kernels.py --smoke      # tiny shapes on CPU under Triton's interpreter:
                                                        # checks the script, measures nothing meaningful

For each (B, T) and op: forward and forward+backward milliseconds (median of triton.testing.do_bench,
with its 20th-80th percentile range), tokens/s (B*T / fwd+bwd time), achieved FLOP/s and bytes/s as
shares of this GPU's peaks, measured in the same run (a large bf16 matmul, a large device copy), and
ratios between implementations from this one run. Every implementation gets the same inputs.

Counting (nominal, the same for every implementation of an op, so shares compare implementations):
  FLOPs  the matmuls of the chunkwise algorithm, per head and token with chunk C = 64, K = V = D:
         linear forms (gla, mamba2): 2C(K+V) intra + 4KV state read/write; delta forms add
         2C(2K+V) (K K^T, W, U) + 2KV (W S). Backward = 2x forward (two gradient products per product).
         SDPA causal: 2 T^2 D per head forward, backward 2.5x forward (FlashAttention's recomputation).
  bytes  compulsory traffic only: q, k, v, gates, beta read and o written once (forward); plus do read
         and every gradient written once (backward). Chunk states are implementation detail, not counted.
Correctness: the relative error of o and dq against archspace's chunked PyTorch path (fp32 math on the
same inputs) is printed next to each implementation that ran.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

CHUNK = 64


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["8x2048", "2x8192", "1x32768"], help="BxT")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128, help="head dim (K = V)")
    p.add_argument("--ops", nargs="+", default=["gla", "deltanet", "gated_deltanet", "mamba2"],
                   choices=["gla", "deltanet", "gated_deltanet", "mamba2"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--no-torch-chunk", action="store_true", help="skip archspace's chunked PyTorch path")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warm-up (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time (ms)")
    p.add_argument("--json", help="write every measurement to this file")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (Triton interpreter)")
    return p.parse_args()


def flops_per_token(op: str, D: int) -> float:
    """Nominal forward FLOPs per head and token of the chunkwise algorithm (see the module docstring)."""
    K = V = D
    f = 2 * CHUNK * (K + V) + 4 * K * V
    if op in ("deltanet", "gated_deltanet"):
        f += 2 * CHUNK * (2 * K + V) + 2 * K * V
    return f


def make_inputs(op, B, T, H, D, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, D), "k": r(B, T, H, D), "v": r(B, T, H, D), "g": None, "beta": None}
    if op == "gla":
        x["g"] = F.logsigmoid(r(B, T, H, D)) / 16  # GLA's gate normaliser
    elif op in ("mamba2", "gated_deltanet"):
        x["g"] = F.logsigmoid(r(B, T, H))
    if op in ("deltanet", "gated_deltanet"):
        x["k"] = F.normalize(x["k"], dim=-1)
        x["beta"] = torch.sigmoid(r(B, T, H))
    return {n: None if t is None else t.to(device=device, dtype=dtype) for n, t in x.items()}


def torch_chunk(op):
    """archspace's chunked PyTorch path of ``op``: fn(x) -> o."""
    from archspace.kernels.delta_rule import chunk_delta_rule
    from archspace.kernels.gla import chunk_gla

    if op in ("gla", "mamba2"):
        return lambda x: chunk_gla(x["q"], x["k"], x["v"], g=x["g"], chunk_size=CHUNK)[0]
    return lambda x: chunk_delta_rule(x["q"], x["k"], x["v"], beta=x["beta"], g=x["g"], chunk_size=CHUNK)[0]


def implementations(op, smoke, with_torch_chunk):
    """name -> fn(x) returning o [B, T, H, V], or a string saying why it is not available."""
    from archspace.kernels.triton_chunk import chunk_gated_delta_rule

    impls = {"archspace-triton": lambda x: chunk_gated_delta_rule(x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"],
                                                                  chunk_size=CHUNK)[0]}
    if with_torch_chunk:
        impls["archspace-torch-chunk"] = torch_chunk(op)
    try:
        if smoke:
            raise ImportError("not tried in --smoke mode")
        if op == "gla":
            from fla.ops.gla import chunk_gla as fla_op
            impls["fla"] = lambda x: fla_op(x["q"], x["k"], x["v"], g=x["g"])[0]
        elif op == "mamba2":
            from fla.ops.simple_gla import chunk_simple_gla as fla_op
            impls["fla"] = lambda x: fla_op(x["q"], x["k"], x["v"], g=x["g"])[0]
        elif op == "deltanet":
            from fla.ops.delta_rule import chunk_delta_rule as fla_op
            impls["fla"] = lambda x: fla_op(x["q"], x["k"], x["v"], beta=x["beta"])[0]
        else:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_op
            impls["fla"] = lambda x: fla_op(x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"])[0]
    except Exception as e:  # fla is optional: say why it is missing
        impls["fla"] = f"not importable ({type(e).__name__}: {e})"
    return impls


def timer(device, warmup, rep):
    """Median and 20/80 percentiles in ms: triton.testing.do_bench on CUDA, wall clock on CPU (smoke)."""
    if device == "cuda":
        from triton.testing import do_bench

        def run(fn, grad_to_none=None):
            med, lo, hi = do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
            return med, lo, hi
        return run

    def run(fn, grad_to_none=None):
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), min(times), max(times)
    return run


def measure_peaks(device, dtype):
    """(matmul FLOP/s in ``dtype``, copy bytes/s) measured here: the denominators of the shares."""
    if device != "cuda":
        return float("nan"), float("nan")
    from triton.testing import do_bench

    n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    ms = do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="min")
    flops = 2 * n ** 3 / (ms * 1e-3)
    src = torch.empty(2 ** 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="min")
    return flops, 2 * src.numel() / (ms * 1e-3)


def grads_of(fn, x, do):
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in x.items() if t is not None}
    o = fn({n: leaves.get(n) for n in x})
    o.backward(do)
    return o.detach(), leaves["q"].grad


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


class Bench:
    def __init__(self, device, run, peak_flops, peak_bw):
        self.device, self.run, self.peak_flops, self.peak_bw = device, run, peak_flops, peak_bw
        self.records = []

    def op(self, label, op, impls, x, flops, bytes_, ref=None):
        """Time every implementation of one op at one shape; print and record one line each."""
        B, T, H = x["q"].shape[:3] if op != "sdpa" else (x["q"].shape[0], x["q"].shape[2], x["q"].shape[1])
        do = torch.randn(x["v"].shape, device=self.device, dtype=x["v"].dtype)
        ref = grads_of(ref, x, do) if ref is not None else None
        for name, fn in impls.items():
            rec = {"op": op, "impl": name, "B": B, "T": T, "H": H}
            if isinstance(fn, str):
                rec["status"] = fn
            else:
                try:
                    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in x.items() if t is not None}
                    args = {n: leaves.get(n) for n in x}
                    with torch.no_grad():
                        fwd = self.run(lambda: fn(args))
                    both = self.run(lambda: fn(args).backward(do), grad_to_none=list(leaves.values()))
                    if ref is not None:
                        o, dq = grads_of(fn, x, do)
                        rec["rel_err_o"], rec["rel_err_dq"] = rel(o, ref[0]), rel(dq, ref[1])
                    tok = B * T
                    rec.update(status="ok", fwd_ms=fwd[0], fwd_ms_p20=fwd[1], fwd_ms_p80=fwd[2], fwdbwd_ms=both[0],
                               fwdbwd_ms_p20=both[1], fwdbwd_ms_p80=both[2], tokens_per_s=tok / (both[0] * 1e-3),
                               fwd_flops_share=flops[0] / (fwd[0] * 1e-3) / self.peak_flops,
                               fwdbwd_flops_share=flops[1] / (both[0] * 1e-3) / self.peak_flops,
                               fwd_bytes_share=bytes_[0] / (fwd[0] * 1e-3) / self.peak_bw,
                               fwdbwd_bytes_share=bytes_[1] / (both[0] * 1e-3) / self.peak_bw)
                except torch.cuda.OutOfMemoryError:
                    rec["status"] = "out of memory"
                except Exception as e:  # e.g. fla refusing its gated backward on Hopper: record why
                    rec["status"] = f"refused/failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
                if self.device == "cuda":
                    torch.cuda.empty_cache()
            self.records.append(rec)
            if rec["status"] != "ok":
                print(f"{label:>8} {op:<15} {name:<22} {rec['status']}", flush=True)
                continue
            err = f"  err o {rec['rel_err_o']:.1e} dq {rec['rel_err_dq']:.1e}" if "rel_err_o" in rec else ""
            print(f"{label:>8} {op:<15} {name:<22} fwd {rec['fwd_ms']:8.3f} ms  fwd+bwd {rec['fwdbwd_ms']:8.3f} ms "
                  f"[{rec['fwdbwd_ms_p20']:.3f}, {rec['fwdbwd_ms_p80']:.3f}]  {rec['tokens_per_s'] / 1e6:8.2f} Mtok/s  "
                  f"FLOP {100 * rec['fwdbwd_flops_share']:5.1f}%  bytes {100 * rec['fwdbwd_bytes_share']:5.1f}% of peak"
                  + err, flush=True)


def main():
    a = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.smoke:
        if device == "cpu":
            os.environ["TRITON_INTERPRET"] = "1"  # before the kernel module is imported
        a.shapes, a.heads, a.dim = ["1x80", "2x64"], 2, 32
    elif device != "cuda":
        sys.exit("bench_gpu_kernels.py needs a CUDA device (or --smoke for a CPU check of the script)")
    import triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    H, D = a.heads, a.dim
    esize = torch.finfo(dtype).bits // 8
    peak_flops, peak_bw = measure_peaks(device, dtype)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter smoke run)"
    print(f"# {gpu}; torch {torch.__version__}, triton {triton.__version__}; {a.dtype}, H={H}, D={D}, chunk {CHUNK}")
    print(f"# peaks measured here: {peak_flops / 1e12:.0f} TFLOP/s ({a.dtype} matmul 8192^3), "
          f"{peak_bw / 1e12:.2f} TB/s (device copy, read + write)")
    bench = Bench(device, timer(device, a.warmup, a.rep), peak_flops, peak_bw)
    for shape in a.shapes:
        B, T = (int(s) for s in shape.split("x"))
        tokens = B * T
        for op in a.ops:
            x = make_inputs(op, B, T, H, D, dtype, device)
            fwd_flops = flops_per_token(op, D) * tokens * H
            io = (sum(t.numel() for t in x.values() if t is not None) + tokens * H * D) * esize
            bench.op(shape, op, implementations(op, a.smoke, not a.no_torch_chunk), x, (fwd_flops, 3 * fwd_flops),
                     (io, 2 * io), ref=None if a.no_torch_chunk else torch_chunk(op))
        x = make_inputs("linear", B, T, H, D, dtype, device)
        x = {n: x[n].transpose(1, 2).contiguous() for n in ("q", "k", "v")}  # SDPA wants [B, H, T, D]
        sdpa = lambda xx: F.scaled_dot_product_attention(xx["q"], xx["k"], xx["v"], is_causal=True)
        fwd_flops = 2 * T * T * D * H * B
        io = 4 * tokens * H * D * esize
        bench.op(shape, "sdpa", {"sdpa": sdpa}, x, (fwd_flops, 3.5 * fwd_flops), (io, 2 * io))
    print_ratios(bench.records)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__, "dtype": a.dtype,
                       "peak_flops": peak_flops, "peak_bytes_per_s": peak_bw, "records": bench.records}, f, indent=1)


def print_ratios(records):
    """fwd+bwd speed of archspace Triton relative to every other implementation, same run, same shape."""
    ok = [r for r in records if r.get("status") == "ok"]
    print("\n# speed ratios, fwd+bwd (forward in brackets): other time / archspace-triton time (> 1: Triton faster)")
    for r in ok:
        if r["impl"] != "archspace-triton":
            continue
        for o in ok:
            if (o["B"], o["T"]) != (r["B"], r["T"]) or o["impl"] == "archspace-triton":
                continue
            if o["op"] != r["op"] and o["impl"] != "sdpa":
                continue
            other = "sdpa (causal attention)" if o["impl"] == "sdpa" else o["impl"]
            print(f"{r['B']}x{r['T']:<6} {r['op']:<15} vs {other:<26} "
                  f"{o['fwdbwd_ms'] / r['fwdbwd_ms']:6.2f}x  [{o['fwd_ms'] / r['fwd_ms']:.2f}x]")


if __name__ == "__main__":
    main()
