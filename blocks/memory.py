"""Memory token mixer (linear attention / RetNet / Mamba2 / GLA / DeltaNet / Gated DeltaNet and their log-linear
forms), assembled from the axis values of its config (blocks/axis.py) and the kernels of blocks/dispatch.py.

Per head the memory is S_t in R^{K x V} (kept in fp32) and the read is after the write:

    dot bias (Hebbian):  S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T
    l2 bias (delta):     S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T
    read:                o_t = K**-0.5 * S_t^T q_t

Pipeline of ``MemoryMixer.forward`` on x [B, T, D], in three paths that a Mixture-of-Memories (blocks/mom.py) and
Titans (blocks/titans.py) assemble from the same functions:
    query path   q = W_q x (H*K channels, no bias); optional depthwise causal conv + SiLU (cfg.short_conv = kernel
                 size, 0 = off); feature map phi (blocks/feature_map.py); optional per-head l2 norm
                 (cfg.key_norm); the hierarchy's read inputs (log-linear level weights, blocks/hierarchy.py)
    write path   k = W_k x, v = W_v x, conv, phi and key norm on k; the gates of the retention axis
                 (log-decay g, blocks/retention.py) and of the bias axis (step size beta, blocks/bias.py)
    memory       the kernels of blocks/dispatch.py (chunked or token loop, cfg.path)
    output path  optional per-head RMSNorm, optional output gate o * silu(W_g x), then W_o (H*V -> D).

State (``init_state``/``forward(..., return_state=True)``/``step``) is a dict: the hierarchy's entries ("memory":
[B, H, K, V] fp32, or log-linear "levels" and "pos") and, when short_conv > 1, "conv_q", "conv_k", "conv_v":
[B, C, k-1].

Accounting (``MemoryMixer.cost(cfg, seq_len)``), analytic from the config:
    params: the module's trainable parameters (the RetNet decay is a buffer, not counted);
    state: the hierarchy's state (H*K*V, or H*K*V per log-linear level in use: grows as log2 T) + (k-1)*(2*H*K +
        H*V) when a short conv of size k is on;
    flops_per_token (2 per multiply-add): every linear 2*in*out; the short conv 2*k per convolved channel; the
        recurrence in its token-by-token form (blocks/hierarchy.py: per head the bias' write, the retention's
        decay K*V, the read 2*K*V; log-linear per level slot in use). Norms, activations, feature maps and gates'
        nonlinearities are ignored. The count does not depend on the kernel path.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .axis import linear
from .config import Cost, MemoryConfig
from .dispatch import memory_ops, memory_statics
from .norm import GroupRMSNorm
from .short_conv import ShortConv

__all__ = ["MemoryMixer", "PathCost", "add_projections", "add_gate_params", "add_output_params", "qk_features",
           "query", "write_project", "write_finish", "output", "query_cost", "write_cost", "output_cost",
           "with_statics"]


# ---------------------------------------------------------------------------------------------- the paths
def add_projections(host: nn.Module, cfg: MemoryConfig, streams: str) -> None:
    """W_q / W_k / W_v of ``streams`` (a subset of "qkv", in that order) and then their short convs on ``host``."""
    D, H = cfg.d_model, cfg.heads
    width = {"q": H * cfg.key_dim, "k": H * cfg.key_dim, "v": H * cfg.value_dim}
    for s in streams:
        setattr(host, f"{s}_proj", linear(D, width[s]))
    if cfg.short_conv > 0:
        for s in streams:
            setattr(host, f"{s}_conv", ShortConv(width[s], cfg.short_conv))


def add_gate_params(host: nn.Module, cfg: MemoryConfig) -> None:
    """The write's gates: the retention gate's parameters, then the bias', the update's and the structure's (a deep
    memory's initial weights and LayerNorm) (the same names on a MemoryMixer and on each write path of a
    Mixture-of-Memories, so weights map one to one: every memory of a mixture has its own)."""
    axes = cfg.axes
    axes.retention.add_params(host, cfg)
    axes.bias.add_params(host, cfg)
    axes.update.add_params(host, cfg)
    axes.structure.add_params(host, cfg)


def add_output_params(host: nn.Module, cfg: MemoryConfig) -> None:
    H, V = cfg.heads, cfg.value_dim
    if cfg.norm == "rmsnorm":
        host.o_norm = GroupRMSNorm(H, V)
    if cfg.output_gate:
        host.g_proj = linear(cfg.d_model, H * V)
    host.o_proj = linear(H * V, cfg.d_model)


def features(t: torch.Tensor, cfg: MemoryConfig) -> torch.Tensor:
    """[..., H*K] after the conv -> phi: [..., H, K] (queries and keys)."""
    return cfg.axes.feature_map(t.view(*t.shape[:-1], cfg.heads, cfg.key_dim))


def key_norm(t: torch.Tensor, cfg: MemoryConfig) -> torch.Tensor:
    """The optional per-head l2 norm of queries and keys [..., H, K]."""
    return F.normalize(t, p=2.0, dim=-1, eps=1e-6) if cfg.key_norm == "l2" else t


def qk_features(t: torch.Tensor, cfg: MemoryConfig) -> torch.Tensor:
    """[..., H*K] after the conv -> phi, then the optional per-head l2 norm: [..., H, K]."""
    return key_norm(features(t, cfg), cfg)


def query(host: nn.Module, cfg: MemoryConfig, x: torch.Tensor, conv_state: Optional[torch.Tensor], step: bool):
    """The query path on x [B, T, D] (or, ``step``, [B, D]) -> (q [..., H, K], new conv state or None)."""
    q = host.q_proj(x)
    new = None
    if cfg.short_conv > 0:
        q, new = (host.q_conv.step if step else host.q_conv)(q, conv_state)
    return qk_features(q, cfg), new


def write_gates(host: nn.Module, cfg: MemoryConfig, x: torch.Tensor) -> dict:
    """The write's gates of tokens x [..., D]: {"g": log-decay or None, "beta": step size (delta rule), and the
    bias' and update's other inputs (Huber threshold, Omega weights, momentum, Longhorn's eps)}."""
    axes = cfg.axes
    return {"g": axes.retention.log_decay(host, cfg, x), **axes.bias.step_size(host, cfg, x),
            **axes.update.gates(host, cfg, x)}


def with_statics(gates: dict, host: nn.Module, cfg: MemoryConfig, batch_size: int) -> dict:
    """The gates plus, for a mini-batch memory, the learned tensors its kernels read ("statics")."""
    return {**gates, "statics": memory_statics(host, cfg, batch_size)} if cfg.minibatch else gates


def write_project(host: nn.Module, cfg: MemoryConfig, x: torch.Tensor):
    """The pointwise part of the write path, x [..., D] -> k [..., H*K], v [..., H*V] (before the conv) and the
    gates. Commutes with gathering tokens."""
    gates = write_gates(host, cfg, x)
    return host.k_proj(x), host.v_proj(x), gates


def write_finish(cfg: MemoryConfig, k: torch.Tensor, v: torch.Tensor):
    """After the conv: k -> phi, key norm, [..., H, K]; v -> [..., H, V]."""
    return qk_features(k, cfg), v.view(*v.shape[:-1], cfg.heads, cfg.value_dim)


def output(host: nn.Module, cfg: MemoryConfig, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The output path: memory read o [..., H, V] -> [..., D]."""
    o = o.to(x.dtype)
    if cfg.norm == "rmsnorm":
        o = host.o_norm(o)
    o = o.reshape(*o.shape[:-2], cfg.heads * cfg.value_dim)
    if cfg.output_gate:
        o = o * F.silu(host.g_proj(x))
    return host.o_proj(o)


# ---------------------------------------------------------------------------------------------- their costs
class PathCost(NamedTuple):
    """What one path costs: its projections (in, out), its other parameters and its conv FLOPs per token."""

    linears: list
    extra: int
    conv_flops: int

    @property
    def params(self) -> int:
        return sum(i * o for i, o in self.linears) + self.extra

    @property
    def flops(self) -> int:
        return 2 * sum(i * o for i, o in self.linears) + self.conv_flops


def _conv_cost(cfg: MemoryConfig, channels: int) -> tuple[int, int]:
    c = cfg.short_conv
    return (ShortConv.params(channels, c), 2 * c * channels) if c > 0 else (0, 0)


def query_cost(cfg: MemoryConfig) -> PathCost:
    """W_q, its conv and the hierarchy's read projection (log-linear level weights)."""
    hier = cfg.axes.hierarchy
    conv_params, conv_flops = _conv_cost(cfg, cfg.heads * cfg.key_dim)
    return PathCost([(cfg.d_model, cfg.heads * cfg.key_dim)] + hier.linears(cfg), conv_params + hier.extra_params(cfg),
                    conv_flops)


def write_cost(cfg: MemoryConfig) -> PathCost:
    """W_k, W_v, their convs and the gates of the retention and bias axes."""
    axes, D, H = cfg.axes, cfg.d_model, cfg.heads
    conv_params, conv_flops = _conv_cost(cfg, H * cfg.key_dim + H * cfg.value_dim)
    owners = (axes.retention, axes.bias, axes.update, axes.structure)
    linears = [(D, H * cfg.key_dim), (D, H * cfg.value_dim)] + [lin for v in owners for lin in v.linears(cfg)]
    return PathCost(linears, conv_params + sum(v.extra_params(cfg) for v in owners), conv_flops)


def output_cost(cfg: MemoryConfig) -> PathCost:
    """The per-head norm, the output gate and W_o."""
    HV = cfg.heads * cfg.value_dim
    linears = [(HV, cfg.d_model)] + ([(cfg.d_model, HV)] if cfg.output_gate else [])
    return PathCost(linears, HV if cfg.norm == "rmsnorm" else 0, 0)


# ---------------------------------------------------------------------------------------------- the mixer
class MemoryMixer(nn.Module):
    """(B, T, D) -> (B, T, D) memory mixer built from a ``MemoryConfig``."""

    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        self.axes = cfg.axes
        self.ops = memory_ops(cfg)
        add_projections(self, cfg, "qkv")
        self.use_conv = cfg.short_conv > 0
        add_gate_params(self, cfg)
        self.axes.hierarchy.add_params(self, cfg)
        add_output_params(self, cfg)

    # ------------------------------------------------------------------ accounting
    @staticmethod
    def cost(cfg: MemoryConfig, seq_len: int) -> Cost:
        """Analytic Cost of one mixer at sequence length ``seq_len`` (see the module docstring)."""
        paths = (query_cost(cfg), write_cost(cfg), output_cost(cfg))
        hier = cfg.axes.hierarchy
        state = hier.state_numel(cfg, seq_len)
        if cfg.short_conv > 0:
            state += ShortConv.state_size(2 * cfg.heads * cfg.key_dim + cfg.heads * cfg.value_dim, cfg.short_conv)
        flops = float(sum(p.flops for p in paths)) + hier.recurrence_flops(cfg, seq_len)
        return Cost(params=sum(p.params for p in paths), state=state, flops_per_token=flops)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None) -> dict:
        device = device if device is not None else self.q_proj.weight.device
        state = self.axes.hierarchy.init_state(self.cfg, batch_size, device, host=self)
        if self.use_conv:
            dtype = self.q_proj.weight.dtype
            for s in "qkv":
                state[f"conv_{s}"] = getattr(self, f"{s}_conv").init_state(batch_size, device, dtype)
        return state

    # ------------------------------------------------------------------ forward / step
    def _inputs(self, x: torch.Tensor, state: Optional[dict], step: bool):
        """Query and write paths on [B, T, D] or (step) [B, D] -> q, k, v, the kernels' gates, new conv states."""
        # The paths of the functions above, interleaved in this order: it is the order in which the gradients
        # of x accumulate, so a seeded run reproduces bit for bit across versions.
        cfg = self.cfg
        get = (lambda n: None) if state is None else state.get
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        convs = {}
        if self.use_conv:
            fn = "step" if step else "forward"
            q, convs["conv_q"] = getattr(self.q_conv, fn)(q, get("conv_q"))
            k, convs["conv_k"] = getattr(self.k_conv, fn)(k, get("conv_k"))
            v, convs["conv_v"] = getattr(self.v_conv, fn)(v, get("conv_v"))
        q, k = features(q, cfg), features(k, cfg)
        v = v.view(*v.shape[:-1], cfg.heads, cfg.value_dim)
        q, k = key_norm(q, cfg), key_norm(k, cfg)
        gates = write_gates(self, cfg, x)
        gates.update(self.axes.hierarchy.read_inputs(self, cfg, x))
        return q, k, v, with_statics(gates, self, cfg, x.shape[0]), convs

    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False):
        """x [B, T, D] -> y [B, T, D] (or (y, state) when return_state).

        ``state`` (optional) continues a sequence: its memory entries are the initial memory and its conv
        entries the last k-1 inputs of each convolved stream.
        """
        cfg, hier = self.cfg, self.axes.hierarchy
        q, k, v, gates, convs = self._inputs(x, state, step=False)
        init = None if state is None else hier.kernel_state(state)
        o, final = self.ops.forward(cfg.path, q, k, v, gates, initial_state=init, output_final_state=return_state,
                                    chunk_size=cfg.chunk_size)
        y = output(self, cfg, o, x)
        if not return_state:
            return y
        return y, {**hier.state_entries(final), **convs}

    def step(self, x: torch.Tensor, state: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
        """One decoding step: x [B, D], state dict (or None = fresh) -> (y [B, D], new state)."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        hier = self.axes.hierarchy
        q, k, v, gates, convs = self._inputs(x, state, step=True)
        o, new = self.ops.step(q, k, v, **gates, state=hier.kernel_state(state))
        return output(self, self.cfg, o, x), {**hier.state_entries(new), **convs}

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"structure={c.structure}, bias={c.bias}, retention={c.retention}, update={c.update}, "
                f"feature_map={c.feature_map}, key_norm={c.key_norm}, "
                f"short_conv={c.short_conv}, path={c.path}, chunk_size={c.chunk_size}, kernels={self.ops.family}"
                + (f", hierarchy={c.hierarchy}, levels={c.levels}" if c.hierarchy != "none" else ""))
