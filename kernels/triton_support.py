"""What the Triton kernels (triton_chunk, triton_recurrent) share: where they can run, input checks,
and the flattening of a batch into variable-length sequences.

Shape legend: B batch, T length, H heads, K key dim, V value dim, N sequences, C chunk length.

This module imports torch only (triton lazily, inside ``triton_available``), so the kernel dispatch can
ask whether the Triton path can run without compiling anything.

Where the kernels run
    * on CUDA tensors, compiled by Triton (the GPU path);
    * on CPU tensors under Triton's interpreter, when TRITON_INTERPRET=1 was set before the kernel
      modules were imported (Triton reads the variable when ``@triton.jit`` decorates a function). The
      interpreter runs each program instance in NumPy: slow, for tests at small shapes only.
    Anything else is an error (``TritonUnavailable``), never a silent switch to another path.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

Tensor = torch.Tensor

__all__ = ["TritonUnavailable", "triton_available", "interpreting", "Problem", "prepare"]

# Key dims up to this size stay in one register tile (the state [K, V-block] lives in registers
# through the sequential chunk scan); value dims of any size are split into blocks across programs.
MAX_HEAD_DIM_K = 256
CHUNK_SIZES = (16, 32, 64)  # tl.dot needs tiles >= 16; 64 is the usual sweet spot on GPUs
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TritonUnavailable(RuntimeError):
    """The Triton path was asked for where it cannot run (no triton, no CUDA device, no interpreter)."""


def interpreting() -> bool:
    """Whether Triton's interpreter is switched on (TRITON_INTERPRET, read as Triton reads it)."""
    try:
        from triton import knobs  # triton >= 3.4

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_available(device: Optional[torch.device | str] = None) -> Tuple[bool, str]:
    """(ok, reason): whether archspace's Triton kernels can run on ``device`` (default: CUDA if present).

    ok is True with reason "cuda: <gpu name> (sm_XY), triton <version>" on a CUDA device, or
    "interpreter: ..." when the kernels were compiled for Triton's CPU interpreter; otherwise False
    with one sentence saying why (meant to be shown to the user as is).
    """
    try:
        import triton
    except ImportError as e:  # pragma: no cover - triton is a dependency
        return False, f"triton is not installed ({e})"
    dev = torch.device(device) if device is not None else None
    if _kernels_interpreted():
        import triton.language as tl
        from triton.runtime.jit import JITFunction

        if isinstance(tl.cumsum, JITFunction):  # triton.language was decorated for compiling, not interpreting
            return False, ("TRITON_INTERPRET=1 was set after triton was first imported (torch._dynamo and lightning "
                           "import it): set it before anything imports triton")
        if dev is not None and dev.type != "cpu":
            return False, (f"the Triton kernels were compiled for the interpreter (TRITON_INTERPRET=1), "
                           f"which runs on CPU tensors, not on {dev}")
        return True, f"interpreter: TRITON_INTERPRET=1, triton {triton.__version__} on CPU tensors (slow; tests only)"
    if dev is not None and dev.type != "cuda":
        return False, f"Triton kernels run on CUDA devices, not on {dev.type}"
    if not torch.cuda.is_available():
        return False, "no CUDA device is available to this process (torch.cuda.is_available() is False)"
    idx = dev.index if dev is not None and dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    if major < 8:
        return False, f"{torch.cuda.get_device_name(idx)} is sm_{major}{minor}; the kernels need sm_80 or newer (bf16)"
    return True, f"cuda: {torch.cuda.get_device_name(idx)} (sm_{major}{minor}), triton {triton.__version__}"


def _kernels_interpreted() -> bool:
    """The mode the kernel modules were (or will be) compiled in: fixed when they are first imported."""
    import sys

    mod = sys.modules.get(__package__ + ".triton_chunk") if __package__ else None
    if mod is not None:
        return bool(mod.INTERPRETED)
    return interpreting()


@dataclass
class Problem:
    """One call, flattened: the batch becomes N sequences laid end to end along one time axis."""

    B: int
    T: int
    H: int
    K: int
    V: int
    N: int  # sequences
    gate: int  # 0 none, 1 scalar [.., H], 2 vector [.., H, K]
    delta: bool
    scale: float
    cu_seqlens: Tensor  # [N + 1] int32 on the tensors' device
    chunk_table: Optional[Tensor]  # [NC, 2] int32: (sequence, chunk within it) of every chunk
    chunk_offsets: Optional[Tensor]  # [N + 1] int32: first global chunk of each sequence
    n_chunks: int
    acc_dtype: torch.dtype  # state / accumulation: fp32, or fp64 for fp64 inputs


def prepare(q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], beta: Optional[Tensor], scale: Optional[float],
            initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor], chunk_size: Optional[int],
            op: str) -> Problem:
    """Check one call's inputs (ValueError / TritonUnavailable with a one-sentence reason) and describe it."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"{op}: q and k must be [B, T, H, K] of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: v must be [B, T, H, V] with q's B, T, H = {B, T, H}, got {tuple(v.shape)}")
    V = v.shape[-1]
    if q.dtype not in _FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{op}: q, k, v must share one dtype among fp16, bf16, fp32, fp64; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if K > MAX_HEAD_DIM_K:
        raise ValueError(f"{op}: key head dim {K} > {MAX_HEAD_DIM_K} is not supported (the state's key rows "
                         f"stay in one register tile)")
    gate = 0
    if g is not None:
        if g.shape == q.shape[:3]:
            gate = 1
        elif g.shape == q.shape:
            gate = 2
        else:
            raise ValueError(f"{op}: the log-gate g must be [B, T, H] (scalar decay) or [B, T, H, K] (vector "
                             f"decay), got {tuple(g.shape)} for q {tuple(q.shape)}")
        if not g.dtype.is_floating_point:
            raise ValueError(f"{op}: g must be floating point, got {g.dtype}")
    if beta is not None:
        if beta.shape != q.shape[:3] or not beta.dtype.is_floating_point:
            raise ValueError(f"{op}: beta must be a floating [B, T, H] tensor, got {tuple(beta.shape)} {beta.dtype}")
        if gate == 2:
            raise ValueError(f"{op}: a vector (per-channel) gate with a delta term (beta) is not supported; the "
                             f"grammar rejects bias 'l2' with retention 'vector' too")
    if chunk_size is not None and chunk_size not in CHUNK_SIZES:
        raise ValueError(f"{op}: chunk_size must be one of {CHUNK_SIZES}, got {chunk_size}")
    tensors = [t for t in (q, k, v, g, beta, initial_state, cu_seqlens) if t is not None]
    if any(t.device != q.device for t in tensors):
        raise ValueError(f"{op}: all inputs must be on one device, got {sorted({str(t.device) for t in tensors})}")
    ok, reason = _available_on(str(q.device))
    if not ok:
        raise TritonUnavailable(f"{op}: the Triton path cannot run here: {reason}")

    if cu_seqlens is None:
        N = B
        lengths = None
    else:
        if B != 1:
            raise ValueError(f"{op}: with cu_seqlens the batch must be flattened to B = 1, got B = {B}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{op}: cu_seqlens must be a 1-D int32/int64 tensor [N + 1], got "
                             f"{tuple(cu_seqlens.shape)} {cu_seqlens.dtype}")
        bounds = cu_seqlens.tolist()  # one host sync: the grid size depends on the lengths
        lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        if bounds[0] != 0 or bounds[-1] != T or min(lengths) < 0:
            raise ValueError(f"{op}: cu_seqlens must rise from 0 to T = {T}, got {bounds}")
        N = len(lengths)
    if initial_state is not None and initial_state.shape != (N, H, K, V):
        raise ValueError(f"{op}: initial_state must be [N, H, K, V] = {(N, H, K, V)} (N = number of sequences), "
                         f"got {tuple(initial_state.shape)}")
    if scale is None:
        scale = K ** -0.5
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32

    if lengths is None:  # B sequences of length T: the same tables for every call of this shape
        cu, table, offsets, n_chunks = _uniform_tables(B, T, chunk_size, str(q.device))
    else:
        cu, table, offsets, n_chunks = _tables(lengths, chunk_size, q.device)
    return Problem(B=B, T=T, H=H, K=K, V=V, N=N, gate=gate, delta=beta is not None, scale=float(scale),
                   cu_seqlens=cu, chunk_table=table, chunk_offsets=offsets, n_chunks=n_chunks, acc_dtype=acc)


@functools.lru_cache(maxsize=None)
def _available_on(device: str) -> Tuple[bool, str]:
    """triton_available, asked once per device per process (the entry points ask on every call; the
    answer cannot change once the kernel modules are imported)."""
    return triton_available(device)


def _tables(lengths, chunk_size: Optional[int], device):
    """(cu_seqlens [N+1] int32, chunk table [chunks, 2] int32 of (sequence, chunk within it), first
    chunk of each sequence [N+1] int32, number of chunks) on ``device``; no tables without a chunk size."""
    cu = torch.tensor([0] + lengths, dtype=torch.long).cumsum(0).to(torch.int32).to(device)
    if chunk_size is None:
        return cu, None, None, 0
    counts = torch.tensor([-(-n // chunk_size) for n in lengths], dtype=torch.long)
    n_chunks = int(counts.sum())
    seq = torch.repeat_interleave(torch.arange(len(lengths)), counts)
    first = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    within = torch.arange(n_chunks) - first[seq]
    table = torch.stack([seq, within], 1).to(torch.int32).contiguous().to(device)
    return cu, table, first.to(torch.int32).to(device), n_chunks


@functools.lru_cache(maxsize=64)
def _uniform_tables(B: int, T: int, chunk_size: Optional[int], device: str):
    return _tables([T] * B, chunk_size, torch.device(device))
