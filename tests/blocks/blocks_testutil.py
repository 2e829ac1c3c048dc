"""Shared configs and helpers for the blocks tests (small dims so everything runs in seconds on CPU)."""
from __future__ import annotations

import torch

from archspace.blocks.config import is_minibatch
from archspace.blocks.presets import PRESETS, memory_preset

D, H, K, V = 32, 2, 8, 12

# name -> MemoryConfig of each memory preset with an exact kernel at the dims above (paths/chunk set per test).
MEMORY_PRESETS = {name: memory_preset(name, D, H, K, V) for name, keys in PRESETS.items()
                  if keys["type"] == "memory" and not is_minibatch(keys)}
# name -> MemoryConfig of each mini-batch (deep) memory preset (a residual memory needs K == V; chunk 4 for short
# sequences); their tests: tests/blocks/test_miras_*.py
MINIBATCH_PRESETS = {name: memory_preset(name, D, H, 8, 8, chunk_size=4) for name, keys in PRESETS.items()
                     if keys["type"] == "memory" and is_minibatch(keys)}


def rounding_tol(n_terms: int, dtype: torch.dtype = torch.float32) -> float:
    """Largest max-normalised difference (`rel_err`) that rounding alone can put between two evaluation
    orders of one formula in `dtype` (a chunked kernel against its token loop, a gathered token list
    against a strided one), when each compared entry sums at most `n_terms` products: recursive summation
    of n terms errs by at most about n units of rounding (Higham, "Accuracy and Stability of Numerical
    Algorithms", 2nd ed., eq. 4.4). Which order runs depends on the CPU's SIMD width and the thread count,
    so a tolerance tuned to one machine's error is not a bound on another's; this one is."""
    return n_terms * torch.finfo(dtype).eps


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both vanish)."""
    denom = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / denom if denom > 0 else diff


def perturbed(mod: torch.nn.Module, std: float = 0.3, seed: int = 3) -> torch.nn.Module:
    """Move every weight off its initialisation (zero LoRA downs, unit gains, constant biases), so that every
    parameter gets a gradient and every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return mod


def check_against_formula(mod: torch.nn.Module, formula, T: int = 29, tol: float = 1e-5, seed: int = 0,
                          grad_scale=None) -> None:
    """The fp32 mixer against ``formula(mod64, x64)``, its recurrence written in the test and run in fp64 on a
    float64 copy: outputs, and the gradients of the input and of every parameter (each nonzero). ``tol`` bounds
    max |diff| / max |reference|: ~100 fp32 ulps accumulated over the T steps, as the other block tests.
    ``grad_scale(name)`` may give another denominator for a parameter whose gradient is a sum of terms that cancel
    (the size of those terms), called after the formula's backward."""
    import copy

    gen = torch.Generator().manual_seed(seed)
    mod64 = copy.deepcopy(mod).double()
    x = torch.randn(2, T, mod.cfg.d_model, generator=gen).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    w = torch.randn(2, T, mod.cfg.d_model, generator=gen)
    y, y_ref = mod(x), formula(mod64, x64)
    assert y.shape == x.shape
    assert rel_err(y.detach(), y_ref.detach()) <= tol
    (y * w).sum().backward()
    (y_ref * w.double()).sum().backward()
    assert rel_err(x.grad, x64.grad) <= tol
    ref = dict(mod64.named_parameters())
    for name, p in mod.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{name} gets no gradient"
        scale = None if grad_scale is None else grad_scale(name)
        err = rel_err(p.grad, ref[name].grad) if scale is None else (p.grad - ref[name].grad).abs().max().item() / scale
        assert err <= tol, (name, err)


def check_decoding(mod: torch.nn.Module, T: int = 13, tol: float = 1e-5) -> None:
    """Token-by-token ``step`` equals the parallel forward, outputs and every final state entry; a forward continued
    from a state equals the whole sequence."""
    x = torch.randn(2, T, mod.cfg.d_model, dtype=next(mod.parameters()).dtype)
    with torch.no_grad():
        y, final = mod(x, return_state=True)
        state, outs = None, []
        for t in range(T):
            y_t, state = mod.step(x[:, t], state)
            outs.append(y_t)
        a, s = mod(x[:, : T // 2], return_state=True)
        b = mod(x[:, T // 2:], state=s)
    assert rel_err(torch.stack(outs, 1), y) <= tol
    _same_state(state, final, tol, "state")
    assert rel_err(torch.cat([a, b], 1), y) <= tol


def check_model_against_formula(model: torch.nn.Module, formula, cells: int, T: int = 23, grad_scale=None) -> None:
    """A SequenceModel (perturbed) whose layers feed each other, run in fp64, against ``formula(ref, ids)``, the
    model written layer by layer on a copy: outputs and the gradient of every parameter (each nonzero). Its kernels
    keep the memory in fp32, so the bound is fp32 rounding over what each entry sums (``rounding_tol`` of the
    layers' T reads of ``cells`` = K x V products; twice that for a weight's gradient, summed over B = 2); a wiring
    error (a layer given another's input) is O(1). ``grad_scale(name, ref)`` may give another denominator for a
    gradient whose terms cancel (their size). Last, the model-level inputs matter: without them the output moves."""
    import copy

    model = model.double()
    ref_model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (2, T), generator=gen)
    w = torch.randn(2, T, model.cfg.d_model, generator=gen, dtype=torch.float64)
    y, y_ref = model(ids), formula(ref_model, ids)
    tol = rounding_tol(len(model.layers) * T * cells)
    assert rel_err(y.detach(), y_ref.detach()) <= tol
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    ref = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{name} gets no gradient"
        scale = None if grad_scale is None else grad_scale(name, ref_model)
        err = rel_err(p.grad, ref[name].grad) if scale is None else (p.grad - ref[name].grad).abs().max().item() / scale
        assert err <= 2 * tol, (name, err)
    free = copy.deepcopy(model)
    free.layer_inputs = lambda: [{} for _ in free.layers]
    assert rel_err(free(ids).detach(), y.detach()) > 1e-3


def check_model_decoding(model: torch.nn.Module, T: int = 11, tol: float = 1e-5) -> None:
    """A SequenceModel's token-by-token ``step`` logits equal its parallel forward's (layers fed by other layers
    included: their model-level inputs go through both)."""
    ids = torch.randint(0, model.cfg.vocab_size, (2, T))
    with torch.no_grad():
        logits = model.logits(model(ids))
        state, outs = None, []
        for t in range(T):
            out, state = model.step(ids[:, t], state)
            outs.append(out)
    assert rel_err(torch.stack(outs, 1), logits) <= tol


def check_mom(mem, T: int = 19, **extra) -> None:
    """A Mixture-of-Memories of ``mem`` memories (3 of them, top 2 unless ``extra`` says otherwise): the chunked path
    equals the reference path, decoding equals the forward, and the accounting counts the module's parameters and
    state."""
    import dataclasses

    from archspace.blocks.config import MoMConfig
    from archspace.blocks.mom import MoMMixer

    mom = MoMConfig(mem, memories=3, **{"top_k": 2, **extra})
    a = perturbed(MoMMixer(mom))
    b = MoMMixer(dataclasses.replace(mom, memory=dataclasses.replace(mem, path="reference")))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, T, mem.d_model)
    with torch.no_grad():
        assert rel_err(a(x), b(x)) <= 1e-5
        assert state_numel(a(x[:1], return_state=True)[1]) == MoMMixer.cost(mom, T).state
    check_decoding(a)
    assert MoMMixer.cost(mom, T).params == sum(p.numel() for p in a.parameters())


def _same_state(a, b, tol: float, where: str) -> None:
    """Two (nested) state dicts: the same keys, tensors within ``tol``, other entries (positions) equal."""
    if isinstance(b, dict):
        assert set(a) == set(b), where
        for key in b:
            _same_state(a[key], b[key], tol, f"{where}.{key}")
    elif isinstance(b, torch.Tensor) and b.is_floating_point() and b.numel():
        assert rel_err(a, b) <= tol, where
    elif isinstance(b, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def state_numel(state: dict) -> int:
    return sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def design_error(tmp_path, mixer_yaml: str, extra_model: str = ""):
    """The ConfigError of a design whose model.mixer is ``mixer_yaml`` (a flow mapping), or None if it validates."""
    from archspace.errors import ConfigError
    from archspace.grammar import load_design

    f = tmp_path / "d.yaml"
    f.write_text(f"model:\n  d_model: 16\n  mixer: {mixer_yaml}\n{extra_model}"
                 "task: {vocab_size: 64, train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 8}],"
                 " test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 8}]}\n")
    try:
        load_design(f)
    except ConfigError as exc:
        return exc
    return None


def outputs_and_input_grads(mods, x: torch.Tensor, w: torch.Tensor):
    """Run each module on its own leaf copy of x and back-propagate <y, w>: ([y], [dx]) per module."""
    xs = [x.clone().requires_grad_(True) for _ in mods]
    ys = []
    for mod, xi in zip(mods, xs):
        y = mod(xi)
        (y * w).sum().backward()
        ys.append(y.detach())
    return ys, [xi.grad for xi in xs]
