"""Which kernels compute a memory: one function from a resolved memory config to its ops.

    memory_ops(cfg) -> MemoryOps(family, paths, step, rows_step)

Every caller goes through it: the plain mixer (blocks/memory.py), the Mixture-of-Memories (blocks/mom.py),
Titans (through its memory mixer), the accounting's kernel-path column (``kernel_paths``, logged with every run)
and the export (its model card). The op family comes from the axes: the hierarchy's kernel if it has one
(log_linear); else "minibatch" when some chosen axis value has no exact online kernel (``cfg.minibatch``: a deep
memory, the lp / l1 / huber / omega biases, the lq / kl / elastic_net retentions, the momentum and newton_schulz
updates, TTT's token scale); else the structure's (vector -> elementwise), the update's (implicit) or the bias'
(dot -> gla, l2 -> delta_rule). ``cfg.path`` then picks the whole-sequence op of that family: "chunk" (the
chunked PyTorch form, for training) or "reference" (the token-by-token loop). A new path (e.g. fused Triton
kernels) is one more entry of a family's ``paths``; a new family (a new transition or memory structure) is one
more entry of FAMILIES and the axis value that names it.

The mini-batch family is one engine for the whole Miras grid (kernels/minibatch.py): ``spec_of(cfg)`` collects
what each axis value contributes to its MemorySpec (the structure its layers, the bias its loss, the retention its
map Phi, the update its algorithm), bound to the family's ops; ``memory_statics`` collects the learned tensors it
reads (initial weights, the memory's LayerNorm, ...). Its chunk_size is the mini-batch size: part of the model.

Calls follow the op contract of kernels/common.py: q, k, v positionally, the gates as keywords.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional

from ..kernels.delta_rule import (chunk_delta_rule, chunk_implicit_delta_rule, delta_rule_step,
                                  implicit_delta_rule_step, naive_implicit_delta_rule, naive_recurrent_delta_rule)
from ..kernels.elementwise import chunk_elementwise, elementwise_step, naive_recurrent_elementwise
from ..kernels.gla import chunk_gla, gla_step, naive_recurrent_gla
from ..kernels.log_linear import chunk_log_linear, log_linear_step, log_linear_step_slots, naive_recurrent_log_linear
from ..kernels.minibatch import MemorySpec, chunk_minibatch, minibatch_step, naive_minibatch
from .config import leaf_mixers

__all__ = ["MemoryOps", "Path", "FAMILIES", "kernel_family", "memory_ops", "kernel_paths", "spec_of",
           "memory_statics"]


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

    def forward(self, path: str, q, k, v, gates: dict, *, initial_state=None, output_final_state: bool = False,
                chunk_size: int = 64):
        """The whole-sequence op of ``path`` on q, k, v [B, T, H, D] with the gates {name: tensor}."""
        p = self.paths[path]
        kw = {"chunk_size": chunk_size} if p.chunked else {}
        return p.op(q, k, v, **gates, initial_state=initial_state, output_final_state=output_final_state, **kw)

    def bind(self, **kw) -> "MemoryOps":
        """These ops with keyword arguments fixed (the mini-batch engine's MemorySpec)."""
        part = functools.partial
        return replace(self, paths={n: Path(part(p.op, **kw), p.chunked) for n, p in self.paths.items()},
                       step=part(self.step, **kw), rows_step=part(self.step, **kw))


FAMILIES = {
    "gla": MemoryOps("gla", {"chunk": Path(chunk_gla, True), "reference": Path(naive_recurrent_gla, False)},
                     gla_step),
    "delta_rule": MemoryOps("delta_rule", {"chunk": Path(chunk_delta_rule, True),
                                           "reference": Path(naive_recurrent_delta_rule, False)}, delta_rule_step),
    "log_linear": MemoryOps("log_linear", {"chunk": Path(chunk_log_linear, True),
                                           "reference": Path(naive_recurrent_log_linear, False)},
                            log_linear_step, rows_step=log_linear_step_slots),
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


def kernel_family(cfg) -> str:
    """The op family of a MemoryConfig (see the module docstring)."""
    axes = cfg.axes
    if axes.hierarchy.kernel:
        return axes.hierarchy.kernel
    if cfg.minibatch:
        return "minibatch"
    return axes.structure.kernel or axes.update.kernel or axes.bias.kernel


def memory_ops(cfg) -> MemoryOps:
    """The ops that compute a MemoryConfig's memory (the mini-batch family's bound to the config's spec)."""
    family = kernel_family(cfg)
    ops = FAMILIES[family]
    return ops.bind(spec=spec_of(cfg)) if family == "minibatch" else ops


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


def kernel_paths(model) -> list:
    """Which computation each layer's token mixer runs (logged with every run), e.g. "delta_rule:chunk",
    "log_linear:chunk", "mom4(gla:chunk)", "titans-mac(delta_rule:chunk+sdpa)"."""
    def leaf(m) -> str:
        if m.kind == "memory":
            return f"{kernel_family(m)}:{m.path}"
        if m.kind == "attention":
            return "sdpa" if m.window is None else f"sdpa:window{m.window}"
        return type(m).__name__

    out = []
    for layer in model.layers:
        mx = layer.mixer
        inner = "+".join(leaf(m) for m in leaf_mixers(mx))
        if mx.kind == "mom":
            out.append(f"mom{mx.memories}({inner})")
        elif mx.kind == "titans":
            out.append(f"titans-{mx.variant}({inner})")
        else:
            out.append(inner)
    return out
