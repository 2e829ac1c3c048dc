"""Error measures shared by the kernel tests."""
import torch

TOL = 1e-5  # norm-relative, fp32 kernels against their fp32 token loops: ~100 ulps accumulated over the steps


def rel(a, b):
    """||a - b|| / ||b|| in fp64 (||a|| when b vanishes)."""
    a, b = a.detach().double(), b.detach().double()
    nb = b.norm()
    return a.norm().item() if nb == 0 else ((a - b).norm() / nb).item()


def rel_grad(name, grad, ref, x, grads_ref, vanishing):
    """Relative error of the gradient of input ``name``. When the log-gates vanish (``vanishing``: decays of
    exp(-10 .. -20)) the gradient of g is a difference of terms of the size of q * dq and k * dk (for a Hebbian
    memory exactly dL/dG_t = sum q_t dq_t - k_t dk_t over G = cumsum g; the low-rank vectors a, b of a DPLR
    transition add a * da and b * db), which cancel to a value ~ exp(g): the chunked forms sum those terms
    separately, so their fp32 rounding error is ~1e-7 of the terms, not of the vanishing difference. There the
    error of dg is measured against that scale; every other gradient, and dg otherwise, plainly."""
    if name != "g" or not vanishing:
        return rel(grad, ref)
    scale = ref.double().norm() ** 2
    for n in ("q", "k", "a", "b"):
        if n in grads_ref:
            scale = scale + (x[n] * grads_ref[n]).double().norm() ** 2
    return ((grad.double() - ref.double()).norm() / scale.sqrt()).item()
