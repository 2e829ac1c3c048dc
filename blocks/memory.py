"""Matrix-memory token mixer (linear attention / RetNet / Mamba2 / GLA / DeltaNet / Gated DeltaNet).

Per head the memory is S_t in R^{K x V} (kept in fp32) and the read is after the write:

    dot bias (Hebbian):  S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T
    l2 bias (delta):     S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T
    read:                o_t = K**-0.5 * S_t^T q_t

Pipeline of ``MemoryMixer.forward`` on x [B, T, D]:
    q, k, v = W_q x, W_k x, W_v x                      (no bias; H*K, H*K, H*V channels)
    optional depthwise causal conv + SiLU on each     (cfg.short_conv = kernel size, 0 = off)
    feature map phi on q and k                         (identity | elu1 | silu | relu)
    optional per-head l2 normalisation of q and k     (cfg.key_norm == "l2")
    log-decay g from the retention gate:
        none      g = None
        constant  g[h] = log(1 - 2**(-5-h))                  (RetNet; fixed buffer, not trained)
        scalar    g = -exp(A_log) * softplus(W_dt x + dt_bias)   [B,T,H] (Mamba2 / SSD)
        vector    g = logsigmoid(W2 W1 x + b) / temperature     [B,T,H,K] (GLA, low rank r)
    beta = sigmoid(W_b x) per head (l2 bias only)
    level weights lambda = softplus(W_l x + b_l) [B,T,H,levels] (hierarchy "log_linear" only)
    memory recurrence via archspace.kernels (chunk_* when cfg.path == "chunk", else naive_*)
    optional per-head RMSNorm, optional output gate o * silu(W_g x), then W_o (H*V -> D).

Log-linear memory (cfg.hierarchy == "log_linear"; Guo et al. 2025, https://arxiv.org/abs/2506.04761;
kernels/log_linear.py): the single state becomes Fenwick levels, o_t = K**-0.5 sum_l lambda_t[l] S_t^(l)T q_t,
where key s sits at level min(bit_length(t XOR s), levels-1) for the query t (the last level absorbs
everything older). lambda = softplus(level_proj(x)) per head and level, with the bias initialised to
softplus^-1(1) so every lambda starts near 1: the model starts close to the plain mixer (exactly it at
lambda == 1). Defined for the scalar-gated forms only (retention none / constant / scalar: log-linear
Mamba2 and log-linear Gated DeltaNet); vector retention is rejected. The chunk path needs a
power-of-two chunk_size.

State (``init_state``/``forward(..., return_state=True)``/``step``) is a dict:
    "memory": [B, H, K, V] fp32, and when short_conv > 1 "conv_q", "conv_k", "conv_v": [B, C, k-1].
    log_linear: "levels": [B, H, n, K, V] fp32 and "pos": int (tokens seen) replace "memory", where
    n = levels_in_use(pos, levels) = min(levels, bit_length(pos-1) + 1) grows as log2(pos).

Accounting (``MemoryMixer.cost(cfg, seq_len)``), analytic from the config:
    params: the module's trainable parameters (the RetNet decay is a buffer, not counted);
    state: H*K*V + (k-1)*(2*H*K + H*V) when a short conv of size k is on (independent of T);
        log_linear: H*K*V*levels_in_use(T, levels) for the memory (grows as log2 T, capped at levels);
    flops_per_token (2 per multiply-add): every linear 2*in*out; the short conv IS included as
        2*k per convolved channel; the recurrence in its token-by-token form, per head:
        write 2*K*V (dot) or 4*K*V (delta: S^T k plus the rank-1 write), decay K*V when
        retention != none, read 2*K*V. Norms, activations, feature maps and gates' nonlinearities
        are ignored. The recurrent-form count does not depend on T (nor on the chunked path).
        log_linear adds the level projection 2*D*H*levels and counts, per head and level slot in use
        (n averaged over the T decoding positions, n_t = levels_in_use(t+1)): decay K*V (retention != none),
        read 2*K*V, and for the delta rule the transition (I - b k k^T) S^(l) 4*K*V plus one write 2*K*V;
        the dot write stays 2*K*V. The level merges (amortised O(K*V) adds per token) are ignored.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.delta_rule import chunk_delta_rule, delta_rule_step, naive_recurrent_delta_rule
from ..kernels.gla import chunk_gla, gla_step, naive_recurrent_gla
from ..kernels.log_linear import chunk_log_linear, levels_in_use, log_linear_step, naive_recurrent_log_linear
from .config import Cost, MemoryConfig
from .norm import GroupRMSNorm
from .short_conv import ShortConv

__all__ = ["MemoryMixer", "feature_map", "retnet_log_decay", "add_gate_params", "gates", "add_level_params",
           "level_weights"]

_INIT_STD = 0.02


def feature_map(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "identity":
        return x
    if name == "elu1":
        return F.elu(x) + 1.0
    if name == "silu":
        return F.silu(x)
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"unknown feature map {name!r}; valid: identity, elu1, silu, relu")


def retnet_log_decay(heads: int) -> torch.Tensor:
    """log gamma_h with gamma_h = 1 - 2**(-5-h), h = 0..H-1 (Sun et al. 2023)."""
    h = torch.arange(heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h)).float()


def _validate(cfg: MemoryConfig) -> None:
    if cfg.structure != "matrix":
        raise ValueError(f"unsupported memory structure {cfg.structure!r}")
    if cfg.update != "gd":
        raise ValueError(f"unsupported memory update {cfg.update!r}")
    if cfg.bias not in ("dot", "l2"):
        raise ValueError(f"unknown memory bias {cfg.bias!r}; valid: dot, l2")
    if cfg.retention not in ("none", "constant", "scalar", "vector"):
        raise ValueError(f"unknown retention {cfg.retention!r}; valid: none, constant, scalar, vector")
    if cfg.bias == "l2" and cfg.retention == "vector":
        raise ValueError("bias 'l2' (delta rule) is incompatible with retention 'vector' (per-channel decay)")
    if cfg.feature_map not in ("identity", "elu1", "silu", "relu"):
        raise ValueError(f"unknown feature map {cfg.feature_map!r}")
    if cfg.key_norm not in ("none", "l2"):
        raise ValueError(f"unknown key_norm {cfg.key_norm!r}")
    if cfg.norm not in ("rmsnorm", "none"):
        raise ValueError(f"unknown norm {cfg.norm!r}")
    if cfg.path not in ("chunk", "reference"):
        raise ValueError(f"unknown kernel path {cfg.path!r}; valid: chunk, reference")
    if cfg.short_conv < 0:
        raise ValueError("short_conv must be >= 0")
    if min(cfg.d_model, cfg.heads, cfg.key_dim, cfg.value_dim) < 1:
        raise ValueError("d_model, heads, key_dim and value_dim must be positive")
    if cfg.retention == "vector" and cfg.gate_rank < 1:
        raise ValueError("gate_rank must be >= 1 for vector retention")
    if cfg.chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if cfg.hierarchy not in ("none", "log_linear"):
        raise ValueError(f"unknown hierarchy {cfg.hierarchy!r}; valid: none, log_linear")
    if cfg.hierarchy == "log_linear":
        if cfg.retention not in ("none", "constant", "scalar"):
            raise ValueError(f"hierarchy 'log_linear' needs a scalar (or no / constant) retention gate, got "
                             f"{cfg.retention!r}: log-linear memory is defined for the Mamba2 and Gated DeltaNet "
                             f"forms (Guo et al. 2025); use retention 'scalar'")
        if cfg.levels < 1:
            raise ValueError(f"levels must be >= 1 for hierarchy 'log_linear', got {cfg.levels}")
        if cfg.chunk_size & (cfg.chunk_size - 1):
            raise ValueError(f"hierarchy 'log_linear' needs a power-of-two chunk_size, got {cfg.chunk_size}")


def _mean_levels_in_use(seq_len: int, levels: int) -> float:
    """(1/T) sum_{t=1..T} levels_in_use(t, levels): the level slots a decoding step touches, averaged.
    levels_in_use(t) = min(levels, bit_length(t-1) + 1) is constant on t-1 in [2**(m-1), 2**m)."""
    T = int(seq_len)
    if T <= 0:
        return 0.0
    total, lo, m = 1, 1, 1  # t-1 = 0 uses one slot; then t-1 in [lo, 2*lo) uses min(levels, m+1)
    while lo <= T - 1:
        hi = min(2 * lo, T)  # t-1 in [lo, hi)
        total += (hi - lo) * min(levels, m + 1)
        lo, m = 2 * lo, m + 1
    return total / T


def add_gate_params(mod: nn.Module, cfg: MemoryConfig) -> None:
    """Register the data-dependent retention-gate parameters and the delta rule's beta projection on
    ``mod`` (MemoryMixer, and each write path of a Mixture-of-Memories: the same names, so weights
    map one to one). The RetNet constant decay is a buffer of the owning mixer, not added here."""
    D, H, K = cfg.d_model, cfg.heads, cfg.key_dim
    if cfg.retention == "scalar":
        # Mamba2: A = -exp(A_log), A ~ U(1, 16); softplus(dt_bias) ~ logU(1e-3, 1e-1).
        mod.dt_proj = _linear(D, H)
        mod.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        dt_min, dt_max = 1e-3, 1e-1
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        mod.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    elif cfg.retention == "vector":
        # GLA: low-rank gate W2 W1 x + b, log a = logsigmoid(.) / temperature.
        mod.gk_down = _linear(D, cfg.gate_rank)
        mod.gk_up = _linear(cfg.gate_rank, H * K, bias=True)
    if cfg.bias == "l2":
        mod.b_proj = _linear(D, H)


def gates(mod: nn.Module, cfg: MemoryConfig, x: torch.Tensor, log_gamma: Optional[torch.Tensor]):
    """Log-decay g (None | [..., H] | [..., H, K]) and beta (None | [..., H]) of tokens x [..., D], from
    the parameters ``add_gate_params`` put on ``mod`` (``log_gamma``: the RetNet buffer or None)."""
    lead = x.shape[:-1]
    g = None
    if cfg.retention == "constant":
        g = log_gamma.to(x.dtype).expand(*lead, cfg.heads)
    elif cfg.retention == "scalar":
        g = -torch.exp(mod.A_log) * F.softplus(mod.dt_proj(x) + mod.dt_bias)
    elif cfg.retention == "vector":
        g = F.logsigmoid(mod.gk_up(mod.gk_down(x))).view(*lead, cfg.heads, cfg.key_dim) / cfg.gate_temperature
    beta = torch.sigmoid(mod.b_proj(x)) if cfg.bias == "l2" else None
    return g, beta


def add_level_params(mod: nn.Module, cfg: MemoryConfig) -> None:
    """Register the log-linear level projection on ``mod``: lambda = softplus(W_l x + b_l) >= 0 per head and
    level, with b_l = softplus^-1(1) so that lambda ~ 1 at init (all levels weighted equally, i.e. close
    to the plain mixer)."""
    mod.level_proj = _linear(cfg.d_model, cfg.heads * cfg.levels, bias=True)
    nn.init.constant_(mod.level_proj.bias, math.log(math.expm1(1.0)))


def level_weights(mod: nn.Module, cfg: MemoryConfig, x: torch.Tensor) -> torch.Tensor:
    """Level weights of tokens x [..., D]: lambda [..., H, levels] from ``add_level_params``' projection."""
    return F.softplus(mod.level_proj(x)).view(*x.shape[:-1], cfg.heads, cfg.levels)


def _linear(d_in: int, d_out: int, bias: bool = False) -> nn.Linear:
    lin = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(lin.weight, 0.0, _INIT_STD)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin


class MemoryMixer(nn.Module):
    """(B, T, D) -> (B, T, D) matrix-memory mixer built from a ``MemoryConfig``."""

    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        _validate(cfg)
        self.cfg = cfg
        D, H, K, V = cfg.d_model, cfg.heads, cfg.key_dim, cfg.value_dim
        self.q_proj = _linear(D, H * K)
        self.k_proj = _linear(D, H * K)
        self.v_proj = _linear(D, H * V)
        self.use_conv = cfg.short_conv > 0
        if self.use_conv:
            self.q_conv = ShortConv(H * K, cfg.short_conv)
            self.k_conv = ShortConv(H * K, cfg.short_conv)
            self.v_conv = ShortConv(H * V, cfg.short_conv)

        if cfg.retention == "constant":
            self.register_buffer("log_gamma", retnet_log_decay(H), persistent=False)
        else:
            self.log_gamma = None
        add_gate_params(self, cfg)
        self.log_linear = cfg.hierarchy == "log_linear"
        if self.log_linear:
            add_level_params(self, cfg)
        if cfg.norm == "rmsnorm":
            self.o_norm = GroupRMSNorm(H, V)
        if cfg.output_gate:
            self.g_proj = _linear(D, H * V)
        self.o_proj = _linear(H * V, D)

    # ------------------------------------------------------------------ accounting
    @staticmethod
    def cost(cfg: MemoryConfig, seq_len: int) -> Cost:
        """Analytic Cost of one mixer at sequence length ``seq_len`` (see the module docstring)."""
        _validate(cfg)
        D, H, K, V = cfg.d_model, cfg.heads, cfg.key_dim, cfg.value_dim
        linears = [(D, 2 * H * K + H * V), (H * V, D)]  # q,k,v fused as one count; o_proj
        params = 0
        extra = 0
        if cfg.retention == "scalar":
            linears.append((D, H))
            extra += 2 * H  # A_log, dt_bias
        elif cfg.retention == "vector":
            linears += [(D, cfg.gate_rank), (cfg.gate_rank, H * K)]
            extra += H * K  # gate bias
        if cfg.bias == "l2":
            linears.append((D, H))
        if cfg.output_gate:
            linears.append((D, H * V))
        if cfg.norm == "rmsnorm":
            extra += H * V
        log_linear = cfg.hierarchy == "log_linear"
        if log_linear:
            linears.append((D, H * cfg.levels))
            extra += H * cfg.levels  # level_proj bias
        conv_channels = 2 * H * K + H * V
        state = H * K * V * (levels_in_use(seq_len, cfg.levels) if log_linear else 1)
        flops = 0.0
        if cfg.short_conv > 0:
            extra += ShortConv.params(conv_channels, cfg.short_conv)
            state += ShortConv.state_size(conv_channels, cfg.short_conv)
            flops += 2 * cfg.short_conv * conv_channels
        params = sum(i * o for i, o in linears) + extra
        flops += sum(2 * i * o for i, o in linears)
        decay = K * V if cfg.retention != "none" else 0
        read = 2 * K * V
        if log_linear:
            n = _mean_levels_in_use(seq_len, cfg.levels)
            transition = 4 * K * V if cfg.bias == "l2" else 0
            flops += H * (2 * K * V + n * (transition + decay + read))
        else:
            write = 2 * K * V if cfg.bias == "dot" else 4 * K * V
            flops += H * (write + decay + read)
        return Cost(params=params, state=state, flops_per_token=float(flops))

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None) -> dict:
        cfg = self.cfg
        device = device if device is not None else self.q_proj.weight.device
        if self.log_linear:  # no level in use before the first token
            state = {"levels": torch.zeros(batch_size, cfg.heads, 0, cfg.key_dim, cfg.value_dim,
                                           device=device, dtype=torch.float32), "pos": 0}
        else:
            state = {"memory": torch.zeros(batch_size, cfg.heads, cfg.key_dim, cfg.value_dim,
                                           device=device, dtype=torch.float32)}
        if self.use_conv:
            dtype = self.q_proj.weight.dtype
            state["conv_q"] = self.q_conv.init_state(batch_size, device, dtype)
            state["conv_k"] = self.k_conv.init_state(batch_size, device, dtype)
            state["conv_v"] = self.v_conv.init_state(batch_size, device, dtype)
        return state

    # ------------------------------------------------------------------ shared pieces
    def _inputs(self, x: torch.Tensor, state: Optional[dict], step: bool):
        """Projections, conv, feature map, key norm, gates. Works on [B,T,D] or (step) [B,D]."""
        cfg = self.cfg
        H, K, V = cfg.heads, cfg.key_dim, cfg.value_dim
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        new_conv = {}
        if self.use_conv:
            get = (lambda n: None) if state is None else state.get
            fn = "step" if step else "forward"
            q, new_conv["conv_q"] = getattr(self.q_conv, fn)(q, get("conv_q"))
            k, new_conv["conv_k"] = getattr(self.k_conv, fn)(k, get("conv_k"))
            v, new_conv["conv_v"] = getattr(self.v_conv, fn)(v, get("conv_v"))
        lead = x.shape[:-1]
        q = feature_map(q.view(*lead, H, K), cfg.feature_map)
        k = feature_map(k.view(*lead, H, K), cfg.feature_map)
        v = v.view(*lead, H, V)
        if cfg.key_norm == "l2":
            q = F.normalize(q, p=2.0, dim=-1, eps=1e-6)
            k = F.normalize(k, p=2.0, dim=-1, eps=1e-6)

        g, beta = gates(self, cfg, x, self.log_gamma)
        if self.log_linear:
            lam = level_weights(self, cfg, x)
            return q, k, v, g, beta, lam, new_conv
        return q, k, v, g, beta, new_conv

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [..., H, V] (memory read) -> [..., D]."""
        cfg = self.cfg
        o = o.to(x.dtype)
        if cfg.norm == "rmsnorm":
            o = self.o_norm(o)
        o = o.reshape(*o.shape[:-2], cfg.heads * cfg.value_dim)
        if cfg.output_gate:
            o = o * F.silu(self.g_proj(x))
        return self.o_proj(o)

    # ------------------------------------------------------------------ forward / step
    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False):
        """x [B, T, D] -> y [B, T, D] (or (y, state) when return_state).

        ``state`` (optional) continues a sequence: its "memory" is the initial memory and its conv
        entries the last k-1 inputs of each convolved stream.
        """
        cfg = self.cfg
        if self.log_linear:
            return self._forward_log_linear(x, state, return_state)
        q, k, v, g, beta, new_conv = self._inputs(x, state, step=False)
        init = None if state is None else state.get("memory")
        chunk = cfg.path == "chunk"
        if cfg.bias == "dot":
            if chunk:
                o, mem = chunk_gla(q, k, v, g, initial_state=init, output_final_state=return_state,
                                   chunk_size=cfg.chunk_size)
            else:
                o, mem = naive_recurrent_gla(q, k, v, g, initial_state=init, output_final_state=return_state)
        else:
            if chunk:
                o, mem = chunk_delta_rule(q, k, v, beta, g, initial_state=init,
                                          output_final_state=return_state, chunk_size=cfg.chunk_size)
            else:
                o, mem = naive_recurrent_delta_rule(q, k, v, beta, g, initial_state=init,
                                                    output_final_state=return_state)
        y = self._output(o, x)
        if not return_state:
            return y
        new_state = {"memory": mem, **new_conv}
        return y, new_state

    def _forward_log_linear(self, x: torch.Tensor, state: Optional[dict], return_state: bool):
        q, k, v, g, beta, lam, new_conv = self._inputs(x, state, step=False)
        init = None if state is None else {"levels": state["levels"], "pos": state["pos"]}
        if self.cfg.path == "chunk":
            o, mem = chunk_log_linear(q, k, v, g, lam, beta, initial_state=init, output_final_state=return_state,
                                      chunk_size=self.cfg.chunk_size)
        else:
            o, mem = naive_recurrent_log_linear(q, k, v, g, lam, beta, initial_state=init,
                                                output_final_state=return_state)
        y = self._output(o, x)
        if not return_state:
            return y
        return y, {"levels": mem["levels"], "pos": mem["pos"], **new_conv}

    def step(self, x: torch.Tensor, state: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
        """One decoding step: x [B, D], state dict (or None = fresh) -> (y [B, D], new state)."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        if self.log_linear:
            q, k, v, g, beta, lam, new_conv = self._inputs(x, state, step=True)
            o, mem = log_linear_step(q, k, v, g, lam, beta, {"levels": state["levels"], "pos": state["pos"]})
            return self._output(o, x), {"levels": mem["levels"], "pos": mem["pos"], **new_conv}
        q, k, v, g, beta, new_conv = self._inputs(x, state, step=True)
        if self.cfg.bias == "dot":
            o, mem = gla_step(q, k, v, g, state["memory"])
        else:
            o, mem = delta_rule_step(q, k, v, beta, g, state["memory"])
        return self._output(o, x), {"memory": mem, **new_conv}

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"bias={c.bias}, retention={c.retention}, feature_map={c.feature_map}, key_norm={c.key_norm}, "
                f"short_conv={c.short_conv}, path={c.path}, chunk_size={c.chunk_size}"
                + (f", hierarchy={c.hierarchy}, levels={c.levels}" if c.hierarchy != "none" else ""))
