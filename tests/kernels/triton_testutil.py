"""Shared pieces of the Triton kernel tests: the five special cases of the gated delta recurrence, their
inputs, the references they are compared with (the token-by-token oracles and the chunked PyTorch paths
of kernels/gla.py and kernels/delta_rule.py) and dtype-derived tolerances.

On a CPU the kernels run under Triton's interpreter (set in tests/conftest.py), so the shapes are
tiny; with a CUDA device (ON_GPU) the same tests run at real shapes (head dims 64, 128 and a padded 100).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from archspace.kernels.delta_rule import chunk_delta_rule, naive_recurrent_delta_rule
from archspace.kernels.gla import chunk_gla, naive_recurrent_gla
from archspace.kernels.triton_support import interpreting

ON_GPU = torch.cuda.is_available() and not interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"

# name -> (gate, delta term): the special cases the kernels must serve
VARIANTS = {
    "linear_attention": (None, False),  # Katharopoulos et al. 2020
    "mamba2": ("scalar", False),  # scalar data-dependent decay (SSD)
    "gla": ("vector", False),  # per-key-channel decay
    "deltanet": (None, True),
    "gated_deltanet": ("scalar", True),
}

# Norm-wise relative error allowed against an fp32 reference computed on the same (rounded) inputs,
# in units of the unit roundoff u of the dtype:
#   fp32: kernels and references sum the same terms in different orders; rounding errors of length-n sums
#         grow like u * sqrt(n): 2**-16 = 256 u at the CPU test lengths, times sqrt(T / 64) beyond (GPU,
#         where tf32x3 products add about 2**-21 = 8 u each). (Measured: <= 1e-6, i.e. <= 17 u, on CPU.)
#   bf16 / fp16: matmul operands (states, pseudo-values, W, U, A, Tm) are rounded to the input dtype
#         before each tensor-core product, a chain of about eight roundings of at most u each; 16 u bounds
#         their norm-wise sum with a 2x margin over the worst case measured (6.7 u, bf16 Gated DeltaNet).
_UNIT = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -9, torch.float16: 2.0 ** -11}


def tol(dtype: torch.dtype, T: int = 64) -> float:
    if dtype == torch.float32:
        return 2.0 ** -16 * max(1.0, math.sqrt(T / 64))
    return 16 * _UNIT[dtype]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error ||a - b|| / ||b|| in fp64 (||a|| when b is exactly zero)."""
    a, b = a.detach().double(), b.detach().double()
    nb = b.norm()
    return (a - b).norm().item() if nb == 0 else ((a - b).norm() / nb).item()


def make_inputs(variant, B, T, H, K, V, *, init=True, seed=0, dtype=torch.float32, n_seq=None,
                zero_gate_p=0.0, zero_beta_p=0.0, strong=False):
    """Inputs in fp32 on DEVICE, cast to ``dtype``. Keys are l2-normalised for the delta rule (as the
    blocks do); ``n_seq`` sizes the initial state for variable-length batches; ``zero_gate_p`` zeroes
    that fraction of log-gates (decay exactly 1 there), ``zero_beta_p`` that fraction of step sizes;
    ``strong`` draws log-decays down to -5 per step (exp(-cumsum) would overflow in fp32 in one chunk)."""
    gate, delta = VARIANTS[variant]
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K), "v": r(B, T, H, V), "g": None, "beta": None}
    if delta:
        x["k"] = F.normalize(x["k"], dim=-1)
        x["beta"] = torch.sigmoid(r(B, T, H))
        if zero_beta_p:
            x["beta"] = x["beta"] * (torch.rand(B, T, H, generator=gen) >= zero_beta_p)
    if gate is not None:
        shape = (B, T, H) if gate == "scalar" else (B, T, H, K)
        x["g"] = -5.0 * torch.rand(*shape, generator=gen) if strong else F.logsigmoid(r(*shape))
        if zero_gate_p:
            x["g"] = x["g"] * (torch.rand(*shape, generator=gen) >= zero_gate_p)
    x["initial_state"] = r(n_seq or B, H, K, V) if init else None
    return {n: None if t is None else t.to(device=DEVICE, dtype=dtype) for n, t in x.items()}


def cotangents(o_shape, s_shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*o_shape, generator=gen).to(DEVICE), torch.randn(*s_shape, generator=gen).to(DEVICE))


# Every op below is called as fn(x) on a dict of inputs and returns (o, final_state).
def oracle(x):
    """The token-by-token reference of the variant (kernels/gla.py or kernels/delta_rule.py)."""
    if x["beta"] is None:
        return naive_recurrent_gla(x["q"], x["k"], x["v"], g=x["g"], initial_state=x["initial_state"],
                                   output_final_state=True)
    return naive_recurrent_delta_rule(x["q"], x["k"], x["v"], beta=x["beta"], g=x["g"],
                                      initial_state=x["initial_state"], output_final_state=True)


def chunk_torch(chunk_size):
    """The chunked PyTorch path of the variant."""
    def fn(x):
        if x["beta"] is None:
            return chunk_gla(x["q"], x["k"], x["v"], g=x["g"], initial_state=x["initial_state"],
                             output_final_state=True, chunk_size=chunk_size)
        return chunk_delta_rule(x["q"], x["k"], x["v"], beta=x["beta"], g=x["g"], initial_state=x["initial_state"],
                                output_final_state=True, chunk_size=chunk_size)
    return fn


def chunk_triton(chunk_size, cu_seqlens=None):
    from archspace.kernels.triton_chunk import chunk_gated_delta_rule

    def fn(x):
        return chunk_gated_delta_rule(x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"],
                                      initial_state=x["initial_state"], output_final_state=True,
                                      cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    return fn


def run_with_grads(fn, x, do, dS):
    """(o, final state, {input name: gradient}) of the loss <o, do> + <S, dS>, gradients to every input."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in x.items() if t is not None}
    o, S = fn({n: leaves.get(n) for n in x})
    ((o.float() * do).sum() + (S * dS).sum()).backward()
    return o, S, {n: t.grad for n, t in leaves.items()}


def assert_close(got, want, bound, what):
    """got / want: (o, S, grads) triples; every gradient is checked, and must exist on both sides."""
    o, S, grads = got
    o2, S2, grads2 = want
    assert o.shape == o2.shape and S.shape == S2.shape, what
    errors = {"o": rel(o, o2), "final_state": rel(S, S2)}
    assert set(grads) == set(grads2), (what, set(grads), set(grads2))
    for n in grads2:
        assert torch.isfinite(grads[n]).all(), (what, n)
        errors["d" + n] = rel(grads[n], grads2[n])
    bad = {n: e for n, e in errors.items() if not e <= bound}
    assert not bad, f"{what}: relative errors above {bound:.1e}: {bad}"
