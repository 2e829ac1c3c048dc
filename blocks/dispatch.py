"""Which kernels compute a memory: one function from a resolved memory config to its ops.

    memory_ops(cfg) -> MemoryOps(family, paths, step, rows_step)

Every caller goes through it: the plain mixer (blocks/memory.py), the Mixture-of-Memories (blocks/mom.py),
Titans (through its memory mixer), the accounting's kernel-path column (``kernel_paths``, logged with every run)
and the export (its model card). The op family comes from the axes: the hierarchy's kernel if it has one
(log_linear); else "minibatch" when some chosen axis value has no exact online kernel (``cfg.minibatch``: a deep
memory, the lp / l1 / huber / omega biases, the lq / kl / elastic_net retentions, the momentum and newton_schulz
updates, TTT's token scale); else the structure's (vector -> elementwise), the update's (householder ->
delta_product, implicit), the retention's (hgrn2) or the bias' (dot -> gla, l2 -> delta_rule, rwkv7 -> dplr,
mlstm -> mlstm). ``cfg.path`` then picks the whole-sequence op of that family: "chunk" (the chunked PyTorch form,
for training), "reference" (the token-by-token loop), "triton" (kernels/triton_chunk.py forward and backward,
kernels/triton_recurrent.py for decoding; the gla and delta_rule families on a matrix memory, scalar gates with
the delta rule) or "auto" (triton on a CUDA device where the design and device allow it, else chunk;
``resolve_path``). A new path is one more entry of a family's ``paths``; a new family (a new transition or memory
structure) is one more entry of FAMILIES and the axis value that names it.

Asking for "triton" where it cannot run is an error, never a silent switch: a design the kernels do not cover is
refused when its config is built (``path_problem``), a device they cannot run on when training starts
(``check_device``) and, for direct calls, by the kernels themselves (kernels/triton_support.TritonUnavailable).

The mini-batch family is one engine for the whole Miras grid (kernels/minibatch.py): ``spec_of(cfg)`` collects
what each axis value contributes to its MemorySpec (the structure its layers, the bias its loss, the retention its
map Phi, the update its algorithm), bound to the family's ops; ``memory_statics`` collects the learned tensors it
reads (initial weights, the memory's LayerNorm, ...). Its chunk_size is the mini-batch size: part of the model.

Calls follow the op contract of kernels/common.py: q, k, v positionally, the gates as keywords.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional

import torch

from ..kernels.delta_product import chunk_delta_product, delta_product_step, naive_recurrent_delta_product
from ..kernels.delta_rule import (chunk_delta_rule, chunk_implicit_delta_rule, delta_rule_step,
                                  implicit_delta_rule_step, naive_implicit_delta_rule, naive_recurrent_delta_rule)
from ..kernels.dplr import chunk_dplr, dplr_step, naive_recurrent_dplr
from ..kernels.elementwise import chunk_elementwise, elementwise_step, naive_recurrent_elementwise
from ..kernels.gla import chunk_gla, chunk_hgrn2, gla_step, naive_recurrent_gla
from ..kernels.log_linear import chunk_log_linear, log_linear_step, log_linear_step_slots, naive_recurrent_log_linear
from ..kernels.minibatch import MemorySpec, chunk_minibatch, minibatch_step, naive_minibatch
from ..kernels.mlstm import chunk_mlstm, mlstm_step, naive_recurrent_mlstm
from ..kernels.triton_support import CHUNK_SIZES as TRITON_CHUNK_SIZES
from ..kernels.triton_support import MAX_HEAD_DIM_K as TRITON_MAX_K
from ..kernels.triton_support import triton_available
from .config import leaf_mixers

__all__ = ["MemoryOps", "Path", "FAMILIES", "kernel_family", "memory_ops", "kernel_paths", "resolve_path",
           "path_problem", "check_device", "spec_of", "memory_statics"]


class Path(NamedTuple):
    """A whole-sequence op and whether it takes ``chunk_size``."""

    op: Callable
    chunked: bool


@dataclass(frozen=True)
class MemoryOps:
    """The ops of one kernel family."""

    family: str  # the name logged in the kernel-path column
    paths: dict  # path name -> Path
    step: Callable  # one decoding step: (q, k, v, *, gates, state) -> (o, state)
    rows_step: Optional[Callable] = None  # one step for rows at different positions (a memory in its own time)
    fused_step: Optional[Callable] = None  # the decoding step of the triton path (same contract as step)

    def forward(self, path: str, q, k, v, gates: dict, *, initial_state=None, output_final_state: bool = False,
                chunk_size: int = 64):
        """The whole-sequence op of ``path`` on q, k, v [B, T, H, D] with the gates {name: tensor} (a "g_sign"
        among them: negative decays, ``signed_forward``)."""
        p = self.paths[resolve_path(self, path, q.device, chunk_size)]
        kw = {"chunk_size": chunk_size} if p.chunked else {}
        if "g_sign" in gates:
            gates = dict(gates)
            return signed_forward(p.op, q, k, v, g_sign=gates.pop("g_sign"), **gates, initial_state=initial_state,
                                  output_final_state=output_final_state, **kw)
        return p.op(q, k, v, **gates, initial_state=initial_state, output_final_state=output_final_state, **kw)

    def bind(self, **kw) -> "MemoryOps":
        """These ops with keyword arguments fixed (the mini-batch engine's MemorySpec)."""
        part = functools.partial
        return replace(self, paths={n: Path(part(p.op, **kw), p.chunked) for n, p in self.paths.items()},
                       step=part(self.step, **kw), rows_step=part(self.step, **kw))

    def decode(self, path: str, q, k, v, gates: dict, *, state=None, chunk_size: int = 64):
        """One token [B, H, *] through ``stepper(path)`` with the gates {name: tensor} (a "g_sign" among them:
        negative decays, ``signed_step``)."""
        step = self.stepper(path, q.device, chunk_size)
        if "g_sign" in gates:
            step = functools.partial(signed_step, step)
        return step(q, k, v, **gates, state=state)

    def stepper(self, path: str, device, chunk_size: int = 64) -> Callable:
        """The decoding step of ``path`` on ``device``: the fused Triton kernel on the triton path, else ``step``."""
        if self.fused_step is not None and resolve_path(self, path, device, chunk_size) == "triton":
            return self.fused_step
        return self.step


def _sign_inputs(q, k, v, sigma):
    """q, k, v with the running sign sigma of the decays folded in: a scalar gate's sigma [B, T, H] (or [B, H])
    multiplies q and v (exact under the delta rule too: S_t = sigma_t S~_t with S~ the state of the unsigned decays
    and the writes sigma_j v_j); a per-key-channel gate's [B, T, H, K] multiplies q and k channel by channel
    (S_t = Diag(sigma_t) S~_t, a Hebbian write only: blocks/compat.py)."""
    if sigma.dim() == q.dim() - 1:
        s = sigma.unsqueeze(-1)
        return q * s.to(q.dtype), k, v * s.to(v.dtype)
    return q * sigma.to(q.dtype), k * sigma.to(k.dtype), v


def _sign_state(S, sigma_last):
    """The signed state S = Diag(sigma) S~ from the kernels' S~ [B, H, K, V]; sigma_last [B, H] or [B, H, K]."""
    if S is None:
        return None
    return S * (sigma_last[..., None, None] if sigma_last.dim() == 2 else sigma_last[..., None]).to(S.dtype)


def signed_forward(op: Callable, q, k, v, *, g, g_sign, initial_state=None, output_final_state: bool = False, **kw):
    """A kernel written for decays a = exp(g) > 0 run with signed decays a' = g_sign exp(g) (negative eigenvalues,
    blocks/retention.py): with sigma_t the product of the signs up to t (exact, +-1), the state is
    S_t = Diag(sigma_t) S~_t, where S~ follows the unsigned decays from the same initial state and the sign-folded
    inputs of ``_sign_inputs``, and o_t = S_t^T q_t = S~_t^T (sigma_t q_t). Any path (chunk, reference, triton)
    computes S~ unchanged."""
    sigma = torch.cumprod(g_sign, dim=1)
    q, k, v = _sign_inputs(q, k, v, sigma)
    o, S = op(q, k, v, g=g, initial_state=initial_state, output_final_state=output_final_state, **kw)
    return o, _sign_state(S, sigma[:, -1])


def signed_step(step: Callable, q, k, v, *, g=None, g_sign, state=None, **kw):
    """One token of ``step`` [B, H, *] with a signed decay (``signed_forward`` at T = 1)."""
    q, k, v = _sign_inputs(q, k, v, g_sign)
    o, S = step(q, k, v, g=g, state=state, **kw)
    return o, _sign_state(S, g_sign)


def _triton_chunk(q, k, v, *, g=None, beta=None, scale=None, initial_state=None, output_final_state=False,
                  chunk_size=64):
    """Both families on one Triton kernel: beta None is gated linear attention, beta given the delta rule."""
    from ..kernels.triton_chunk import chunk_gated_delta_rule  # compiles (or interprets) only when a design runs it

    return chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                                  output_final_state=output_final_state, chunk_size=chunk_size)


def _fused_step(differentiable_step: Callable, q, k, v, *, g=None, beta=None, state=None, scale=None):
    """One token [B, H, *] through the fused recurrent kernel, with the contract of gla_step / delta_rule_step
    (bound to a family's PyTorch step with functools.partial: a module's ops pickle, e.g. for spawned DDP).

    The fused kernel has no backward (it decodes); a step whose inputs need gradients (a test comparing
    decoding with the forward under autograd, say) runs the family's PyTorch step, the same recurrence."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, g, beta, state)):
        return differentiable_step(q, k, v, g=g, **({} if beta is None else {"beta": beta}), state=state, scale=scale)
    from ..kernels.triton_recurrent import fused_recurrent_gated_delta_rule

    one = (lambda t: None if t is None else t[:, None])
    o, S = fused_recurrent_gated_delta_rule(one(q), one(k), one(v), g=one(g), beta=one(beta), scale=scale,
                                            initial_state=state, output_final_state=True)
    return o[:, 0], S


FAMILIES = {
    "gla": MemoryOps("gla", {"chunk": Path(chunk_gla, True), "reference": Path(naive_recurrent_gla, False),
                             "triton": Path(_triton_chunk, True)},
                     gla_step, fused_step=functools.partial(_fused_step, gla_step)),
    "hgrn2": MemoryOps("hgrn2", {"chunk": Path(chunk_hgrn2, True), "reference": Path(naive_recurrent_gla, False)},
                       gla_step),
    "delta_rule": MemoryOps("delta_rule", {"chunk": Path(chunk_delta_rule, True),
                                           "reference": Path(naive_recurrent_delta_rule, False),
                                           "triton": Path(_triton_chunk, True)},
                            delta_rule_step, fused_step=functools.partial(_fused_step, delta_rule_step)),
    "log_linear": MemoryOps("log_linear", {"chunk": Path(chunk_log_linear, True),
                                           "reference": Path(naive_recurrent_log_linear, False)},
                            log_linear_step, rows_step=log_linear_step_slots),
    "delta_product": MemoryOps("delta_product", {"chunk": Path(chunk_delta_product, True),
                                                 "reference": Path(naive_recurrent_delta_product, False)},
                               delta_product_step),
    "dplr": MemoryOps("dplr", {"chunk": Path(chunk_dplr, True), "reference": Path(naive_recurrent_dplr, False)},
                      dplr_step),
    "mlstm": MemoryOps("mlstm", {"chunk": Path(chunk_mlstm, True), "reference": Path(naive_recurrent_mlstm, False)},
                       mlstm_step),
    "elementwise": MemoryOps("elementwise", {"chunk": Path(chunk_elementwise, True),
                                             "reference": Path(naive_recurrent_elementwise, False)},
                             elementwise_step),
    "implicit": MemoryOps("implicit", {"chunk": Path(chunk_implicit_delta_rule, True),
                                       "reference": Path(naive_implicit_delta_rule, False)},
                          implicit_delta_rule_step),
    # the token loop takes chunk_size too: it is the mini-batch size, where the gradients' anchor moves
    "minibatch": MemoryOps("minibatch", {"chunk": Path(chunk_minibatch, True),
                                         "reference": Path(naive_minibatch, True)}, minibatch_step,
                           rows_step=minibatch_step),
}


_WITHOUT_TRITON = {name: dataclasses.replace(ops, paths={p: f for p, f in ops.paths.items() if p != "triton"},
                                               fused_step=None)
                   for name, ops in FAMILIES.items()}


def kernel_family(cfg) -> str:
    """The op family of a MemoryConfig (see the module docstring)."""
    axes = cfg.axes
    if axes.hierarchy.kernel:
        return axes.hierarchy.kernel
    if cfg.minibatch:
        return "minibatch"
    return axes.structure.kernel or axes.update.kernel or axes.retention.kernel or axes.bias.kernel


def memory_ops(cfg) -> MemoryOps:
    """The ops that compute a MemoryConfig's memory: the mini-batch family's bound to the config's spec; without
    the triton path where its kernels do not compute this design, so that "auto" runs it on the chunk path."""
    family = kernel_family(cfg)
    ops = FAMILIES[family]
    if family == "minibatch":
        return ops.bind(spec=spec_of(cfg))
    if "triton" in ops.paths and _triton_problem(cfg) is not None:
        return _WITHOUT_TRITON[ops.family]
    return ops


def spec_of(cfg) -> MemorySpec:
    """The mini-batch engine's MemorySpec of a MemoryConfig: what every chosen axis value contributes, plus the
    engine-wide fields (chunk_size is the mini-batch size)."""
    fields = {"chunk": cfg.chunk_size, "read_before": cfg.read == "before", "grad_clip": cfg.inner_grad_clip}
    for value in cfg.axes:
        fields.update(value.spec(cfg))
    return MemorySpec(**fields)


def memory_statics(host, cfg, batch_size: int) -> dict:
    """The learned tensors a mini-batch memory reads at every token ({} for the exact families): every axis
    value's ``statics`` on ``host`` (per head, [H, ...]), expanded to [B, H, ...]."""
    if host is None or not cfg.minibatch:
        return {}
    out = {}
    for value in cfg.axes:
        out.update(value.statics(host, cfg))
    return {name: t.unsqueeze(0).expand(batch_size, *t.shape) for name, t in out.items()}


def path_problem(cfg) -> Optional[tuple]:
    """(key, reason) when a MemoryConfig asks for the triton path on a design its kernels do not compute, else
    None (called by MemoryConfig itself, so the grammar reports it at the key)."""
    return _triton_problem(cfg) if cfg.path == "triton" else None


def _triton_problem(cfg) -> Optional[tuple]:
    # the Triton kernels compute one matrix S in R^{K x V} per head under one linear (gla) or delta-rule write per
    # token; the Miras structures and the mini-batch engine's values (cfg.minibatch) are not among them
    if cfg.structure != "matrix":
        return "path", (f"path 'triton' computes matrix memories only, not structure {cfg.structure!r}; use path "
                        f"'chunk' or 'auto'")
    if cfg.minibatch:
        return "path", ("path 'triton' computes the exact linear and delta-rule recurrences; this memory (bias "
                        f"{cfg.bias!r}, retention {cfg.retention!r}, update {cfg.update!r}) runs on the mini-batch "
                        "engine (kernels/minibatch.py): use path 'chunk' or 'auto'")
    family = kernel_family(cfg)
    if "triton" not in FAMILIES[family].paths:
        on_triton = ", ".join(name for name, ops in FAMILIES.items() if "triton" in ops.paths)
        return "path", (f"path 'triton' has no kernels for the {family} family (bias {cfg.bias!r}, hierarchy "
                        f"{cfg.hierarchy!r}); the Triton kernels compute {on_triton}: use path 'chunk' or 'auto'")
    if family == "delta_rule" and cfg.axes.retention.gate == "vector":
        return "path", (f"path 'triton' computes the delta rule with scalar gates only, not retention "
                        f"{cfg.retention!r} (a per-channel gate); use path 'chunk' or 'auto'")
    if cfg.state_key_dim > TRITON_MAX_K:
        return "path", (f"path 'triton' keeps a state's key rows in one register tile, at most {TRITON_MAX_K}; "
                        f"feature_map {cfg.feature_map!r} gives {cfg.state_key_dim}: use path 'chunk' or 'auto'")
    if cfg.chunk_size not in TRITON_CHUNK_SIZES:
        return "chunk_size", (f"path 'triton' takes chunk_size {', '.join(map(str, TRITON_CHUNK_SIZES))}, "
                              f"got {cfg.chunk_size}")
    return None


def resolve_path(ops: MemoryOps, path: str, device, chunk_size: int) -> str:
    """The path a memory runs on ``device``: ``path`` itself, or for "auto" triton where ``ops`` (from
    ``memory_ops(cfg)``: the design is one the kernels compute) has it, the chunk size is theirs and the device
    is a CUDA GPU they run on, else chunk."""
    if path != "auto":
        return path
    device = torch.device(device)
    if ("triton" in ops.paths and chunk_size in TRITON_CHUNK_SIZES and device.type == "cuda"
            and triton_available(device)[0]):
        return "triton"
    return "chunk"


def check_device(model, device) -> None:
    """Raise ValueError naming the layer when a memory of ``model`` (a ModelConfig) asks for the triton path and
    the kernels cannot run on ``device``; called before training starts."""
    device = torch.device(device)
    for i, layer in enumerate(model.layers):
        for m in leaf_mixers(layer.mixer):
            if m.kind == "memory" and m.path == "triton":
                ok, reason = triton_available(device)
                if not ok:
                    raise ValueError(f"layer {i} asks for path 'triton', which cannot run on {device}: {reason}. "
                                     f"Use path 'auto' (triton on a GPU, chunk elsewhere) or 'chunk'")


def kernel_paths(model, device=None) -> list:
    """Which computation each layer's token mixer runs (logged with every run), e.g. "delta_rule:chunk",
    "log_linear:chunk", "mom4(gla:triton)", "titans-mac(delta_rule:chunk+sdpa)". A path "auto" is shown as
    resolved on ``device`` (e.g. "gla:auto->triton"); without a device, as "auto"."""
    def leaf(m) -> str:
        if m.kind == "memory":
            path = m.path
            if path == "auto" and device is not None:
                path = f"auto->{resolve_path(memory_ops(m), 'auto', device, m.chunk_size)}"
            return f"{kernel_family(m)}:{path}"
        if m.kind == "attention":
            return "sdpa" if m.window is None else f"sdpa:window{m.window}"
        if m.kind == "conv":
            return f"conv{m.short_conv}"
        return type(m).__name__

    def describe(mx) -> str:
        if mx.kind == "mom":
            return f"mom{mx.memories}({describe(mx.memory)})"
        if mx.kind == "titans":
            return f"titans-{mx.variant}({describe(mx.memory)}+{leaf(mx.attention)})"
        return leaf(mx)

    return [describe(layer.mixer) for layer in model.layers]
