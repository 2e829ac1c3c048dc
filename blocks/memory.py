"""Memory token mixer (linear attention / RetNet / Mamba2 / GLA / DeltaNet / Gated DeltaNet and their log-linear
forms), assembled from the axis values of its config (blocks/axis.py) and the kernels of blocks/dispatch.py.

Per head the memory is S_t in R^{K x V} (kept in fp32) and the read is after the write:

    dot bias (Hebbian):  S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T
    l2 bias (delta):     S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T
    read:                o_t = scale * S_t^T q_t          (scale: cfg.scale, default K**-0.5)

with K = cfg.state_key_dim (the feature map's width) and V = cfg.state_value_dim (value_dim, plus one column
of ones with cfg.normalizer "sum", whose read is the denominator phi(q_t)^T z_t).

Pipeline of ``MemoryMixer.forward`` on x [B, T, D], in three paths that a Mixture-of-Memories (blocks/mom.py) and
Titans (blocks/titans.py) assemble from the same functions:
    query path   q = W_q x (H*key_dim channels, no bias); optional depthwise causal conv + SiLU (cfg.short_conv =
                 kernel size, 0 = off; cfg.conv_bias); feature map phi (blocks/feature_map.py); optional per-head
                 l2 norm (cfg.key_norm); q * scale * sqrt(K) when cfg.scale is set (the kernels apply K**-0.5);
                 the hierarchy's read inputs (log-linear level weights, blocks/hierarchy.py)
    write path   k = W_k x, v = W_v x, conv, phi and key norm on k; the gates of the retention axis
                 (log-decay g and, Mamba2's write_scale, k * dt; blocks/retention.py) and of the bias axis
                 (step size beta, blocks/bias.py); v gets a column of ones with the sum normaliser
    memory       the kernels of blocks/dispatch.py (chunked or token loop, cfg.path)
    output path  the normaliser's division; optional RMSNorm (per head, or over all heads: cfg.norm_group) and
                 output gate o * silu(W_g x) (after the norm, or before it: cfg.gate_position); then W_o.

State (``init_state``/``forward(..., return_state=True)``/``step``) is a dict: the hierarchy's entries ("memory":
[B, H, K, V] fp32, or log-linear "levels" and "pos") and, when short_conv > 1, "conv_q", "conv_k", "conv_v":
[B, C, k-1].

Accounting (``MemoryMixer.cost(cfg, seq_len)``), analytic from the config:
    params: the module's trainable parameters (the RetNet decay is a buffer, not counted);
    state: the hierarchy's state (H*K*V, or H*K*V per log-linear level in use: grows as log2 T) + (k-1)*(2*H*key_dim +
        H*value_dim) when a short conv of size k is on;
    flops_per_token (2 per multiply-add): every linear 2*in*out; the short conv 2*k per convolved channel; the
        recurrence in its token-by-token form (blocks/hierarchy.py: per head the bias' write, the retention's
        decay K*V, the read 2*K*V; log-linear per level slot in use). Norms, activations, feature maps and gates'
        nonlinearities are ignored, a learned feature map's matmuls are counted. The count does not depend on the
        kernel path.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .axis import linear
from .bias import SHIFT_STREAMS
from .config import Cost, MemoryConfig
from .dispatch import memory_ops, memory_statics
from .retention import signed_decay, signed_log_decay
from .norm import GROUPNORM_EPS, GroupLayerNorm, GroupRMSNorm
from .short_conv import ShortConv

__all__ = ["MemoryMixer", "PathCost", "add_projections", "add_gate_params", "add_output_params", "query",
           "write_project", "write_finish", "output", "query_cost", "write_cost", "output_cost", "with_statics"]


# ---------------------------------------------------------------------------------------------- the paths
def stream_widths(cfg: MemoryConfig) -> dict:
    """Channels of the projected streams: q H*K; k and v n*H*K and n*H*V (n write steps per token, blocks/update.py);
    no k when the key is tied to the retention gate (HGRN2)."""
    H, n = cfg.heads, cfg.axes.update.steps(cfg)
    width = {"q": H * cfg.key_dim, "k": n * H * cfg.key_dim, "v": n * H * cfg.value_dim}
    if cfg.axes.retention.ties_key:
        del width["k"]
    return width


def add_projections(host: nn.Module, cfg: MemoryConfig, streams: str) -> None:
    """W_q / W_k / W_v of ``streams`` (a subset of "qkv", in that order) and then their short convs on ``host``."""
    D = cfg.d_model
    width = stream_widths(cfg)
    streams = [s for s in streams if s in width]
    for s in streams:
        setattr(host, f"{s}_proj", linear(D, width[s]))
    if cfg.short_conv > 0:
        for s in streams:
            setattr(host, f"{s}_conv", ShortConv(width[s], cfg.short_conv, bias=cfg.conv_bias))
    for s in [s for s in streams if s != "v"]:  # a learned feature map (hedgehog): one per stream, beside its projection
        cfg.axes.feature_map.add_stream_params(host, cfg, s)


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
        host.o_norm = GroupRMSNorm(H, V) if cfg.norm_group == "head" else GroupRMSNorm(1, H * V)
    elif cfg.norm == "groupnorm":
        host.o_norm = GroupLayerNorm(H, V, eps=GROUPNORM_EPS)
    if cfg.output_gate:
        host.g_proj = linear(cfg.d_model, H * V)
    host.o_proj = linear(H * V, cfg.d_model)


def heads(t: torch.Tensor, cfg: MemoryConfig, dim: int, steps: bool = False) -> torch.Tensor:
    """[..., H*dim] -> [..., H, dim]; a write stream (``steps``) of an update with a step axis (householder):
    [..., n*H*dim] -> [..., n, H, dim]."""
    if steps and cfg.axes.update.step_axis:
        return t.view(*t.shape[:-1], cfg.axes.update.steps(cfg), cfg.heads, dim)
    return t.view(*t.shape[:-1], cfg.heads, dim)


def features(t: torch.Tensor, cfg: MemoryConfig, host: nn.Module, stream: str, steps: bool = False) -> torch.Tensor:
    """[..., H*key_dim] after the conv -> phi: [..., H, K] (stream "q" or "k"; a learned map's parameters are on
    ``host``; keys with ``steps``: see ``heads``)."""
    return cfg.axes.feature_map.apply(host, cfg, heads(t, cfg, cfg.key_dim, steps), stream)


def key_norm(t: torch.Tensor, cfg: MemoryConfig) -> torch.Tensor:
    """The optional per-head l2 norm of queries and keys [..., H, K]."""
    return F.normalize(t, p=2.0, dim=-1, eps=1e-6) if cfg.key_norm == "l2" else t


def query_scale(q: torch.Tensor, cfg: MemoryConfig) -> torch.Tensor:
    """q [..., H, K] times scale * sqrt(K) when cfg.scale is set: the kernels then read with exactly cfg.scale."""
    return q if cfg.scale is None else q * (cfg.scale * cfg.state_key_dim ** 0.5)


def qk_features(t: torch.Tensor, cfg: MemoryConfig, host: nn.Module, stream: str, steps: bool = False) -> torch.Tensor:
    """[..., H*K] after the conv -> phi, then the optional per-head l2 norm: [..., H, K] (see ``heads``)."""
    return key_norm(features(t, cfg, host, stream, steps), cfg)


def query(host: nn.Module, cfg: MemoryConfig, x: torch.Tensor, conv_state: Optional[torch.Tensor], step: bool):
    """The query path on x [B, T, D] (or, ``step``, [B, D]) -> (q [..., H, K], new conv state or None)."""
    q = host.q_proj(x)
    new = None
    if cfg.short_conv > 0:
        q, new = (host.q_conv.step if step else host.q_conv)(q, conv_state)
    return query_scale(key_norm(features(q, cfg, host, "q"), cfg), cfg), new


def write_gates(host: nn.Module, cfg: MemoryConfig, x: torch.Tensor, xs: Optional[dict] = None,
                lower_bound: Optional[torch.Tensor] = None) -> dict:
    """The write's gates of tokens x [..., D]: {"g": log-decay or None, "beta": step size (delta rule), ...}, the
    bias' and update's other inputs (Huber threshold, Omega weights, momentum, Longhorn's eps), and "k_scale"
    [..., H] when the retention scales the write (Mamba2's dt): ``scaled_write`` consumes it. With a token shift
    (``xs``, see ``stream_inputs``) the decay reads stream "w" and the bias' gates stream "a". ``lower_bound``:
    this layer's learned HGRN2 bound, from the model."""
    axes = cfg.axes
    x_w, x_a = (x, x) if xs is None else (xs["w"], xs["a"])
    if lower_bound is None:
        g = axes.retention.log_decay(host, cfg, x_w)
    else:
        g = axes.retention.log_decay(host, cfg, x_w, lower_bound=lower_bound)
    sign = {}
    if g is not None and signed_decay(cfg):  # a' = 2a - 1: the kernels take log|a'| and the sign
        g, sign["g_sign"] = signed_log_decay(g)
    gates = {"g": g, **sign, **axes.bias.step_size(host, cfg, x_a), **axes.update.gates(host, cfg, x)}
    k_scale = axes.retention.write_scale(host, cfg, x_w)
    if k_scale is not None:
        gates["k_scale"] = k_scale
    return gates


def with_statics(gates: dict, host: nn.Module, cfg: MemoryConfig, batch_size: int) -> dict:
    """The gates plus, for a mini-batch memory, the learned tensors its kernels read ("statics")."""
    return {**gates, "statics": memory_statics(host, cfg, batch_size)} if cfg.minibatch else gates


def stream_inputs(host: nn.Module, cfg: MemoryConfig, x: torch.Tensor, prev: Optional[torch.Tensor], step: bool):
    """RWKV's token shift (bias rwkv7, option token_shift; Peng et al. 2025, Sec. 4): every stream c of
    SHIFT_STREAMS (q = r, w, k, v, a, g) reads x_c = x + (x_{t-1} - x_t) * mu_c, mu_c [D] learned, x_{-1} from the
    state (zeros for a fresh sequence). x [B, T, D] (``step``: [B, D]) -> ({stream: input}, last x [B, D] for the
    state), or (None, None) without a token shift."""
    if not cfg.axes.bias.token_shift(cfg):
        return None, None
    if step:
        before, last = (x.new_zeros(x.shape) if prev is None else prev.to(x.dtype)), x
    else:
        first = x.new_zeros(x[:, :1].shape) if prev is None else prev[:, None].to(x.dtype)
        before, last = torch.cat([first, x[:, :-1]], dim=1), x[:, -1]
    xx = before - x
    return {name: x + xx * host.shift_mu[i] for i, name in enumerate(SHIFT_STREAMS)}, last


def write_project(host: nn.Module, cfg: MemoryConfig, x: torch.Tensor):
    """The pointwise part of the write path, x [..., D] -> k [..., n*H*K] (None when the key is tied to the gate),
    v [..., n*H*V] (before the conv) and the gates. Commutes with gathering tokens."""
    gates = write_gates(host, cfg, x)
    return (None if cfg.axes.retention.ties_key else host.k_proj(x)), host.v_proj(x), gates


def write_finish(host: nn.Module, cfg: MemoryConfig, k: Optional[torch.Tensor], v: torch.Tensor, gates: dict):
    """After the conv: k -> phi, key norm, [..., H, K] (or [..., n, H, K]); v -> [..., H, V] (or [..., n, H, V]);
    a key tied to the gate (k None: HGRN2) is 1 - exp(g) from ``gates``; then the write's scale (taken out of
    ``gates``) and the normaliser's column (``scaled_write``)."""
    k = -torch.expm1(gates["g"]) if k is None else qk_features(k, cfg, host, "k", steps=True)
    return scaled_write(cfg, k, heads(v, cfg, cfg.value_dim, steps=True), gates)


def scaled_write(cfg: MemoryConfig, k: torch.Tensor, v: torch.Tensor, gates: dict):
    """k [..., H, K] (or [..., n, H, K]) times the write's scale ``gates.pop("k_scale")`` [..., H] (Mamba2: dt k v^T),
    and v [..., H, V] with a column of ones appended under the sum normaliser (its read is the denominator)."""
    k_scale = gates.pop("k_scale", None)
    if k_scale is not None:
        k_scale = k_scale.unsqueeze(-1).to(k.dtype)
        k = k * (k_scale.unsqueeze(-3) if k.dim() == k_scale.dim() + 1 else k_scale)
    if cfg.normalizer == "sum":
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    return k, v


# Based's and Zoology's denominator guard: the sum normaliser's maps keep phi(q).phi(k) > 0, so this only keeps
# a zero read (a padded or empty history) finite.
NORMALIZER_EPS = 1e-12


def _gate_act(cfg: MemoryConfig, z: torch.Tensor) -> torch.Tensor:
    """The output gate's activation (cfg.output_gate_act)."""
    return F.silu(z) if cfg.output_gate_act == "silu" else torch.sigmoid(z)


def output(host: nn.Module, cfg: MemoryConfig, o: torch.Tensor, x: torch.Tensor,
           bonus: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The output path: memory read o [..., H, V] (V + 1 with the sum normaliser) -> [..., D]; ``bonus``
    [..., H, V] is added after the norm."""
    if cfg.normalizer == "sum":
        o = o[..., :-1] / (o[..., -1:] + NORMALIZER_EPS)
    o = o.to(x.dtype)
    HV = cfg.heads * cfg.value_dim
    gate_first = cfg.output_gate and cfg.gate_position == "before_norm"
    if gate_first:  # Mamba2: y * silu(z), then the norm
        o = o * _gate_act(cfg, host.g_proj(x)).view(o.shape)
    if cfg.norm == "rmsnorm":
        o = host.o_norm(o) if cfg.norm_group == "head" else host.o_norm(o.reshape(*o.shape[:-2], 1, HV))
    elif cfg.norm == "groupnorm":
        o = host.o_norm(o)
    o = o.reshape(*o.shape[:-2], HV)
    if bonus is not None:
        o = o + bonus.to(o.dtype).reshape(o.shape)
    if cfg.output_gate and not gate_first:
        o = o * _gate_act(cfg, host.g_proj(x))
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
    return (ShortConv.params(channels, c, cfg.conv_bias), 2 * c * channels) if c > 0 else (0, 0)


def query_cost(cfg: MemoryConfig) -> PathCost:
    """W_q, its conv, its learned feature map (if any) and the hierarchy's read projection (log-linear level
    weights)."""
    hier, fmap = cfg.axes.hierarchy, cfg.axes.feature_map
    conv_params, conv_flops = _conv_cost(cfg, cfg.heads * cfg.key_dim)
    return PathCost([(cfg.d_model, cfg.heads * cfg.key_dim)] + hier.linears(cfg),
                    conv_params + hier.extra_params(cfg) + fmap.stream_params(cfg), conv_flops + fmap.stream_flops(cfg))


def write_cost(cfg: MemoryConfig) -> PathCost:
    """W_k, W_v, their convs, the keys' learned feature map (if any) and the parameters of the retention, bias,
    update and structure axes (RWKV-7's token-shift gains among the bias' parameters; its lerps, elementwise, are
    left out of the FLOPs like every nonlinearity)."""
    axes, D = cfg.axes, cfg.d_model
    width = stream_widths(cfg)
    kv = [width[s] for s in "kv" if s in width]
    conv_params, conv_flops = _conv_cost(cfg, sum(kv))
    owners = (axes.retention, axes.bias, axes.update, axes.structure)
    linears = [(D, w) for w in kv] + [lin for v in owners for lin in v.linears(cfg)]
    extra = conv_params + sum(v.extra_params(cfg) for v in owners)
    return PathCost(linears, extra + axes.feature_map.stream_params(cfg),
                    conv_flops + axes.feature_map.stream_flops(cfg))


def output_cost(cfg: MemoryConfig) -> PathCost:
    """The per-head norm (RMSNorm: a gain per channel; groupnorm: a gain and a bias), the output gate and W_o."""
    HV = cfg.heads * cfg.value_dim
    linears = [(HV, cfg.d_model)] + ([(cfg.d_model, HV)] if cfg.output_gate else [])
    return PathCost(linears, {"rmsnorm": HV, "groupnorm": 2 * HV}.get(cfg.norm, 0), 0)


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
            state += ShortConv.state_size(sum(stream_widths(cfg).values()), cfg.short_conv)
        if cfg.axes.bias.token_shift(cfg):
            state += cfg.d_model  # the last token's x
        flops = float(sum(p.flops for p in paths)) + hier.recurrence_flops(cfg, seq_len)
        return Cost(params=sum(p.params for p in paths), state=state, flops_per_token=flops)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None) -> dict:
        device = device if device is not None else self.q_proj.weight.device
        state = self.axes.hierarchy.init_state(self.cfg, batch_size, device, host=self)
        dtype = self.q_proj.weight.dtype
        if self.use_conv:
            for s in stream_widths(self.cfg):
                state[f"conv_{s}"] = getattr(self, f"{s}_conv").init_state(batch_size, device, dtype)
        if self.axes.bias.token_shift(self.cfg):
            state["shift"] = torch.zeros(batch_size, self.cfg.d_model, device=device, dtype=dtype)
        return state

    # ------------------------------------------------------------------ forward / step
    def _inputs(self, x: torch.Tensor, state: Optional[dict], step: bool, lower_bound=None, value_residual=None):
        """Query and write paths on [B, T, D] or (step) [B, D] -> q, k, v, the kernels' gates, new conv states."""
        return self._paths(x, state, step, lower_bound, value_residual)[:5]

    def add_value_residual(self) -> None:
        """RWKV-7's value-residual mix, on a layer after the first (SequenceModel calls this)."""
        self.axes.bias.add_value_residual(self, self.cfg)

    def _paths(self, x: torch.Tensor, state: Optional[dict], step: bool, lower_bound=None, value_residual=None):
        """``_inputs`` and the output gate's input: q, k, v, gates, the new conv (and token-shift) state entries,
        x_g. ``lower_bound``: see ``forward``."""
        # The paths of the functions above, interleaved in this order: it is the order in which the gradients
        # of x accumulate, so a seeded run reproduces bit for bit across versions.
        cfg, axes = self.cfg, self.axes
        get = (lambda n: None) if state is None else state.get
        xs, last = stream_inputs(self, cfg, x, get("shift"), step)
        X = (lambda name: x) if xs is None else xs.__getitem__
        tied = axes.retention.ties_key  # HGRN2: the key comes from the gate below, no W_k
        q = self.q_proj(X("q"))
        k = None if tied else self.k_proj(X("k"))
        v = self.v_proj(X("v"))
        if value_residual is not None:  # RWKV-7: the first such layer keeps its values, the later ones mix them in
            if hasattr(self, "vres_up"):
                v = torch.lerp(v, value_residual["v"], torch.sigmoid(self.vres_up(self.vres_down(X("v")))))
            else:
                value_residual["v"] = v
        convs = {}
        if self.use_conv:
            fn = "step" if step else "forward"
            q, convs["conv_q"] = getattr(self.q_conv, fn)(q, get("conv_q"))
            if k is not None:
                k, convs["conv_k"] = getattr(self.k_conv, fn)(k, get("conv_k"))
            v, convs["conv_v"] = getattr(self.v_conv, fn)(v, get("conv_v"))
        q = features(q, cfg, self, "q")
        k = None if tied else features(k, cfg, self, "k", steps=True)
        v = heads(v, cfg, cfg.value_dim, steps=True)
        q, k = key_norm(q, cfg), (None if tied else key_norm(k, cfg))
        q = query_scale(q, cfg)
        gates = write_gates(self, cfg, x, xs, lower_bound)
        if tied:
            k = -torch.expm1(gates["g"])  # k = 1 - f, as -expm1(log f): no cancellation for f near 1
        k, v = scaled_write(cfg, k, v, gates)
        k, gates = axes.bias.finish_write(self, cfg, k, gates)
        gates.update(axes.hierarchy.read_inputs(self, cfg, x))
        if last is not None:
            convs["shift"] = last
        return q, k, v, with_statics(gates, self, cfg, x.shape[0]), convs, X("g")

    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False,
                lower_bound: Optional[torch.Tensor] = None, value_residual: Optional[dict] = None):
        """x [B, T, D] -> y [B, T, D] (or (y, state) when return_state).

        ``state`` (optional) continues a sequence: its memory entries are the initial memory and its conv
        entries the last k-1 inputs of each convolved stream. Model-level inputs (SequenceModel passes them; see
        blocks/model.py): ``lower_bound`` [H*K], this layer's HGRN2 bound under learned_lower_bounds;
        ``value_residual``, a dict carried through the layers of one forward: RWKV-7's first layer with
        value_residual stores its values under "v", the later ones mix them in.
        """
        cfg, hier = self.cfg, self.axes.hierarchy
        q, k, v, gates, convs, x_g = self._paths(x, state, False, lower_bound, value_residual)
        init = None if state is None else hier.kernel_state(state)
        o, final = self.ops.forward(cfg.path, q, k, v, gates, initial_state=init, output_final_state=return_state,
                                    chunk_size=cfg.chunk_size)
        y = output(self, cfg, o, x_g, self.axes.bias.bonus(self, cfg, q, k, v))
        if not return_state:
            return y
        return y, {**hier.state_entries(final), **convs}

    def step(self, x: torch.Tensor, state: Optional[dict] = None, lower_bound: Optional[torch.Tensor] = None,
             value_residual: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
        """One decoding step: x [B, D], state dict (or None = fresh) -> (y [B, D], new state); model-level inputs
        as in ``forward``."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        hier = self.axes.hierarchy
        q, k, v, gates, convs, x_g = self._paths(x, state, True, lower_bound, value_residual)
        o, new = self.ops.decode(self.cfg.path, q, k, v, gates, state=hier.kernel_state(state),
                                 chunk_size=self.cfg.chunk_size)
        return output(self, self.cfg, o, x_g, self.axes.bias.bonus(self, self.cfg, q, k, v)), \
            {**hier.state_entries(new), **convs}

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"structure={c.structure}, bias={c.bias}, retention={c.retention}, update={c.update}, "
                f"feature_map={c.feature_map}, key_norm={c.key_norm}, "
                + (f"normalizer={c.normalizer}, " if c.normalizer != "none" else "")
                + f"short_conv={c.short_conv}, path={c.path}, chunk_size={c.chunk_size}, kernels={self.ops.family}"
                + (f", hierarchy={c.hierarchy}, levels={c.levels}" if c.hierarchy != "none" else ""))
