"""Compile archspace's Triton kernels for a GPU target without a GPU, and report their resources.

    python tools/triton_aot_check.py [--arch 90 80] [--dtype bf16 fp32] [--dims 128x128 64x64 100x72]
                                     [--chunk 64] [--variants all] [--quick]

The kernels' host code (kernels/triton_chunk.py, kernels/triton_recurrent.py) is run forward and backward
on CPU tensors with every kernel launch recorded instead of executed; each distinct launch (kernel,
argument dtypes, constexprs, num_warps) is then compiled ahead of time by ``triton.compile`` for the
target (Triton -> PTX -> cubin with the ptxas shipped in the triton wheel), and cuobjdump reports the
registers, spilled (local) bytes per thread and shared memory of each kernel. This proves that every configuration compiles for that
GPU with the installed Triton (run it under another Triton, e.g. the GPU image's 3.6.0, with
``PYTHONPATH=<dir with that triton>``) and shows where registers spill; it does not prove the numerics
(the tests do, under the interpreter or on a GPU) nor measure speed (benchmarks/bench_gpu_kernels.py).

Exit code 0 when everything compiled, 1 otherwise (each failure is printed with its configuration).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: this tool compiles the kernels, the interpreter does not")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import archspace.kernels.triton_chunk as tc  # noqa: E402
import archspace.kernels.triton_recurrent as tr  # noqa: E402
import archspace.kernels.triton_support as ts  # noqa: E402

_TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                    torch.int32: "i32", torch.int64: "i64"}
VARIANTS = {"linear_attention": (0, False), "mamba2": (1, False), "gla": (2, False), "deltanet": (0, True),
            "gated_deltanet": (1, True)}


class Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def __getitem__(self, grid):
        def launch(*args, num_warps=4, num_stages=None, **kwargs):
            self.log.append((self.fn, args, kwargs, num_warps, num_stages))
        return launch


def record_launches(variants, dtypes, dims, chunks):
    log = []
    patched = {}
    for mod in (tc, tr):
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, triton.runtime.jit.JITFunction) and not name.startswith("_device"):
                patched[(mod, name)] = obj
                setattr(mod, name, Recorder(obj, log))
    available, sm_count = ts._available_on, tc._sm_count
    ts._available_on = lambda device: (True, "aot")  # CPU tensors stand in for CUDA ones: nothing runs
    try:
        for variant, wide_gpu in ((v, w) for v in variants for w in (False, True)):
            # wide_gpu: more SMs than scan programs, so the scans take their halved V-block
            tc._sm_count = (lambda device: 10 ** 6) if wide_gpu else (lambda device: None)
            gate, delta = VARIANTS[variant]
            for dtype in dtypes:
                for K, V in dims:
                    for C in chunks:
                        B, T, H = 1, 2 * C + 3, 2
                        mk = lambda *s, d=dtype: torch.randn(*s, dtype=d).requires_grad_(True)
                        q, k, v = mk(B, T, H, K), mk(B, T, H, K), mk(B, T, H, V)
                        g = None if gate == 0 else mk(*((B, T, H) if gate == 1 else (B, T, H, K)))
                        beta = mk(B, T, H) if delta else None
                        h0 = mk(B, H, K, V, d=torch.float32)
                        o, S = tc.chunk_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0,
                                                         output_final_state=True, chunk_size=C)
                        (o.float().sum() + S.sum()).backward()
                        with torch.no_grad():
                            tr.fused_recurrent_gated_delta_rule(q[:, :2], k[:, :2], v[:, :2],
                                                                g=None if g is None else g[:, :2],
                                                                beta=None if beta is None else beta[:, :2],
                                                                initial_state=h0, output_final_state=True)
    finally:
        ts._available_on, tc._sm_count = available, sm_count
        for (mod, name), obj in patched.items():
            setattr(mod, name, obj)
    return log


def source_of(fn, args, kwargs):
    """ASTSource for one recorded launch: tensors -> pointer types, Python scalars -> i32/i64/fp32."""
    names = fn.arg_names
    bound = dict(zip(names, args))
    bound.update(kwargs)
    signature, constexprs = {}, {}
    for i, name in enumerate(names):
        val = bound[name]
        if i in fn.constexprs or val is None or isinstance(val, (tl.dtype, str, bool)):
            signature[name] = "constexpr"
            constexprs[name] = val
        elif isinstance(val, torch.Tensor):
            signature[name] = "*" + _TORCH_TO_TRITON[val.dtype]
        elif isinstance(val, float):
            signature[name] = "fp32"
        elif isinstance(val, int):
            signature[name] = "i32" if -2 ** 31 <= val < 2 ** 31 else "i64"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name}={val!r}")
    key = (fn.__name__, tuple(signature.items()), tuple((k, str(v)) for k, v in constexprs.items()))
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs), key


def cubin_stats(kernel):
    """(registers per thread, local memory per thread in bytes = register spills, shared memory bytes) of a
    compiled kernel: cuobjdump (shipped in the triton wheel) reads the cubin's resource usage."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        out = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    local = re.search(r"LOCAL:(\d+)", out)
    return int(regs.group(1)) if regs else -1, int(local.group(1)) if local else -1, kernel.metadata.shared


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities (80 = A100, 90 = H100/H200)")
    p.add_argument("--dtype", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    p.add_argument("--dims", nargs="+", default=["128x128", "64x64", "100x72"], help="KxV head dims")
    p.add_argument("--chunk", type=int, nargs="+", default=[64])
    p.add_argument("--variants", nargs="+", default=["all"], choices=["all", *VARIANTS])
    p.add_argument("--quick", action="store_true", help="one dtype (bf16), one head dim (128x128)")
    a = p.parse_args()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dt = [torch.bfloat16] if a.quick else [dtypes[d] for d in a.dtype]
    dims = [(128, 128)] if a.quick else [tuple(int(x) for x in d.split("x")) for d in a.dims]
    variants = list(VARIANTS) if "all" in a.variants else a.variants
    print(f"triton {triton.__version__}, torch {torch.__version__}; variants {variants}, dtypes "
          f"{[str(d).split('.')[-1] for d in dt]}, KxV {dims}, chunk {a.chunk}, sm {a.arch}", flush=True)

    log = record_launches(variants, dt, dims, a.chunk)
    launches = {}
    for fn, args, kwargs, num_warps, num_stages in log:
        src, key = source_of(fn, args, kwargs)
        launches.setdefault((key, num_warps, num_stages), (src, fn.__name__, kwargs, num_warps, num_stages))
    failures = 0
    print(f"{len(launches)} distinct launches x {len(a.arch)} targets")
    print(f"{'sm':>3} {'kernel':<16} {'config':<70} {'regs':>4} {'spill B':>7} {'smem B':>7} {'s':>5}")
    for arch in a.arch:
        for (key, num_warps, num_stages), (src, name, kwargs, nw, ns) in launches.items():
            cfg = " ".join(f"{k}={v}" for k, v in kwargs.items()
                           if k in ("GATE", "DELTA", "BT", "BK", "BV", "DT", "HAS_H0", "STORE_HT", "HAS_DHT")
                           and v is not None)
            cfg = cfg.replace("triton.language.", "").replace("True", "1").replace("False", "0") + f" w={nw}"
            options = {"num_warps": nw}
            if ns is not None:
                options["num_stages"] = ns
            t0 = time.time()
            try:
                kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
                regs, local, smem = cubin_stats(kernel)
                print(f"{arch:>3} {name:<16} {cfg:<70} {regs:>4} {local:>7} {smem:>7} {time.time() - t0:5.1f}",
                      flush=True)
            except Exception as e:  # report every failing configuration, then fail
                failures += 1
                msg = str(e).strip().splitlines()
                print(f"{arch:>3} {name:<16} {cfg:<70} FAILED: {msg[-1] if msg else type(e).__name__}", flush=True)
    print("all compiled" if not failures else f"{failures} configuration(s) failed to compile")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
