"""Which kernels compute a memory: one function from a resolved memory config to its ops.

    memory_ops(cfg) -> MemoryOps(family, paths, step, rows_step)

Every caller goes through it: the plain mixer (blocks/memory.py), the Mixture-of-Memories (blocks/mom.py),
Titans (through its memory mixer), the accounting's kernel-path column (``kernel_paths``, logged with every run)
and the export (its model card). The op family comes from the axes: the hierarchy's kernel if it has one
(log_linear), else the update's (householder -> delta_product), else the retention's (hgrn2), else the bias' (dot -> gla, l2 -> delta_rule,
rwkv7 -> dplr, mlstm -> mlstm). ``cfg.path`` then picks the whole-sequence op of
that family: "chunk" (the chunked PyTorch form, for training) or "reference" (the token-by-token loop). A new
path (e.g. fused Triton kernels) is one more entry of a family's ``paths``; a new family (a new transition
or memory structure) is one more entry of FAMILIES and the axis value that names it.

Calls follow the op contract of kernels/common.py: q, k, v positionally, the gates as keywords.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

from ..kernels.delta_product import chunk_delta_product, delta_product_step, naive_recurrent_delta_product
from ..kernels.delta_rule import chunk_delta_rule, delta_rule_step, naive_recurrent_delta_rule
from ..kernels.dplr import chunk_dplr, dplr_step, naive_recurrent_dplr
from ..kernels.gla import chunk_gla, chunk_hgrn2, gla_step, naive_recurrent_gla
from ..kernels.log_linear import chunk_log_linear, log_linear_step, log_linear_step_slots, naive_recurrent_log_linear
from ..kernels.mlstm import chunk_mlstm, mlstm_step, naive_recurrent_mlstm
from .config import leaf_mixers

__all__ = ["MemoryOps", "Path", "FAMILIES", "kernel_family", "memory_ops", "kernel_paths"]


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


FAMILIES = {
    "gla": MemoryOps("gla", {"chunk": Path(chunk_gla, True), "reference": Path(naive_recurrent_gla, False)},
                     gla_step),
    "hgrn2": MemoryOps("hgrn2", {"chunk": Path(chunk_hgrn2, True), "reference": Path(naive_recurrent_gla, False)},
                       gla_step),
    "delta_rule": MemoryOps("delta_rule", {"chunk": Path(chunk_delta_rule, True),
                                           "reference": Path(naive_recurrent_delta_rule, False)}, delta_rule_step),
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
}


def kernel_family(cfg) -> str:
    """The op family of a MemoryConfig (see the module docstring)."""
    axes = cfg.axes
    return axes.hierarchy.kernel or axes.update.kernel or axes.retention.kernel or axes.bias.kernel


def memory_ops(cfg) -> MemoryOps:
    """The ops that compute a MemoryConfig's memory."""
    return FAMILIES[kernel_family(cfg)]


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
