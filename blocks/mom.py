"""Mixture-of-Memories token mixer (MoM, Du et al. 2025, https://arxiv.org/abs/2502.13685).

Several matrix memories (any ``MemoryConfig`` of blocks/memory.py: bias, retention, and the
log-linear hierarchy) behind a token router. Shape legend: B batch, T length, D model width, M memories, H heads, K key dim,
V value dim, L longest per-memory token list in the batch, k top_k.

Routing, per token x_t [D]:
    p_t = softmax(W_r x_t)                          W_r: D -> M, no bias (``router``)
    E_t = topk(p_t, k);  w_{t,m} = p_{t,m} / sum_{n in E_t} p_{t,n}  for m in E_t, else 0
    capacity c (optional): memory m keeps, per sequence and per call, only its first
        ceil(c * T * k / M) routed tokens in time order; for a dropped token w_{t,m} := 0 and
        the token does not reach m (the other weights are NOT renormalised again).

Memories. What is shared and what each memory owns:
    shared by all memories: the query path q_t = norm(phi(conv(W_q x)_t)) (conv and feature map
        phi run on the full sequence: a query is a property of the token, and every memory is
        read with it), the per-head RMSNorm, the output gate and o_proj;
    per memory m ("write path", ``_Writer``): W_k^m, W_v^m, the short conv on k and v, the beta
        projection (delta rule) and the data-dependent retention parameters (Mamba2 dt_proj /
        A_log / dt_bias, GLA gk_down / gk_up). With ``share_kv`` all M memories use ONE write
        path (k, v, conv weights, beta and gates), so they differ only in the tokens they see.
        The RetNet constant decay is a fixed buffer shared by all.
    Memory m lives in its own time: it decays and writes only at its kept tokens; at any other
    token its state S^m (and its conv state) is left unchanged, without decay. Its short conv on
    k and v runs over the subsequence of tokens routed to m (memory time), so its conv state
    holds the last (conv-1) inputs that m received. With k_t, v_t, g_t, b_t from m's write path
    at a kept token t (the recurrences of blocks/memory.py):
        dot:  S^m <- Diag(exp(g_t)) S^m + k_t v_t^T
        l2:   S^m <- exp(g_t) (I - b_t k_t k_t^T) S^m + b_t k_t v_t^T
        read_m(t) = K**-0.5 (S^m)^T q_t            (after m's write at t)
    shared memory (``shared_memory``): one more memory with its own write path that sees every
        token, i.e. a plain MemoryMixer recurrence on the full sequence, read with weight 1.

Output (mix the raw reads, then normalise: per-memory norms would cancel the router weights):
    o_t = sum_{m in E_t} w_{t,m} read_m(t)  (+ read_shared(t))      [H, V]
    y_t = W_o (RMSNorm_heads(o_t) * silu(W_g x_t))                   (norm / gate as configured)
Log-linear memories (``hierarchy: log_linear``, kernels/log_linear.py): memory m keeps Fenwick
    level states over ITS OWN time (the i-th token routed to m sits at position i of m's list), so
    its levels merge only when it is written; the level weights lambda_t = softplus(W_l x_t + b_l)
    [H, levels] belong to the shared query path (``level_proj``) like q_t, and read_m(t) =
    K**-0.5 sum_l lambda_t[l] (S^{m,l})^T q_t. The shared memory is a plain log-linear memory over
    the full sequence.
With M = 1, k = 1 and no shared memory this is exactly ``MemoryMixer`` (w = 1). Note that with
k = 1 the renormalised weight is identically 1, so the router learns only from the aux loss.

Load balancing (Switch Transformer, Fedus et al. 2021, https://arxiv.org/abs/2101.03961, with k
slots): aux = M * sum_m f_m P_m, f_m = fraction of the B*T*k (token, slot) routings that chose m
(before capacity drops: it measures the router), P_m = mean over B, T of p_{t,m}. Every forward
sets ``self.aux_loss = aux_loss_weight * aux`` (0-dim tensor; None when the weight is 0) and
``self.aux_loss_raw = float(aux)``.

Paths:
    chunk      no loop over tokens: for every (sequence, memory) the kept tokens are listed in
               time order by a stable sort and right-padded to L; the M memories are stacked
               along the batch ([B*M, L, ...]) and run through ONE call of chunk_gla /
               chunk_delta_rule, and the reads are gathered back to their tokens. Padding uses
               k = v = 0, beta = 0, log-decay g = 0, so the final states are exact.
               Log-linear: chunk_log_linear once per group of lists that start at the same
               position (one group without a state) and, when final states are returned, have
               the same length (trailing padding would merge old tokens into higher levels).
    reference  straight from the formulas: a Python loop over tokens and memories with the
               one-token kernels (gla_step / delta_rule_step / log_linear_step_slots, each
               memory at its own position), capacity by a running counter,
               and each memory's state replaced only where the token is kept.

State (dict), fp32 memories:
    "memory" [B, M, H, K, V]; "shared" [B, H, K, V] (shared_memory); with a short conv of size c > 1:
    "conv_q" [B, H*K, c-1], "conv_k" [B, M, H*K, c-1], "conv_v" [B, M, H*V, c-1] (one per memory,
    also with share_kv: the conv state follows the memory's own tokens), and
    "shared_conv_k", "shared_conv_v" for the shared memory. Log-linear memories replace "memory" by
    "levels" [B, M, H, levels, K, V] (every slot; those beyond levels_in_use(pos) hold zeros) and
    "pos" [B, M] int64 (tokens each memory has received), and "shared" by "shared_levels"
    [B, H, levels_in_use(shared_pos), K, V] and the int "shared_pos".
``step`` is a call of length 1: capacity (per call) never drops its token, so step-by-step
decoding matches a forward without capacity. A forward given ``state`` continues the sequence
(capacity then counts the tokens of that call only).

Accounting (``MoMMixer.cost``), conventions of ``MemoryMixer.cost`` (2 FLOPs per multiply-add,
conv 2*c per convolved channel, recurrence in its token-by-token form, nonlinearities / norms /
softmax / top-k ignored):
    params: everything in the module (router D*M, query path, norm, gate, o_proj, 1 or M write
        paths, the shared memory's write path);
    active_params: router + query path + norm/gate/o_proj + the write paths one token uses
        (top_k of them, or the single one with share_kv) + the shared memory's;
    state: M*H*K*V (+ H*K*V shared) + conv states as listed above; log-linear: H*K*V times the
        level slots in use, M * levels_in_use(ceil(T*k/M)) (balanced routing) + levels_in_use(T)
        for the shared memory;
    flops_per_token: router 2*D*M; query / gate / o_proj linears and the q conv once; write-path
        linears top_k times (once with share_kv: they are computed on the full sequence and
        gathered); per routed memory (top_k times) the k/v conv, the recurrence and the mixing
        2*H*V (w * read accumulated); the shared memory's linears, conv and recurrence once
        (log-linear recurrences as in ``MemoryMixer.cost``, over ceil(T*k/M) tokens for a routed
        memory); log-linear adds the level projection 2*D*H*levels.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.delta_rule import chunk_delta_rule, delta_rule_step
from ..kernels.gla import chunk_gla, gla_step
from ..kernels.log_linear import chunk_log_linear, levels_in_use, log_linear_step, log_linear_step_slots
from .config import Cost, MemoryConfig, MoMConfig
from .memory import (_mean_levels_in_use, add_gate_params, add_level_params, feature_map, gates, level_weights,
                     retnet_log_decay)
from .memory import _validate as _validate_memory
from .norm import GroupRMSNorm
from .short_conv import ShortConv

__all__ = ["MoMMixer"]

_INIT_STD = 0.02


def _linear(d_in: int, d_out: int, bias: bool = False) -> nn.Linear:
    lin = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(lin.weight, 0.0, _INIT_STD)
    if bias:
        nn.init.zeros_(lin.bias)
    return lin


def _validate(cfg: MoMConfig) -> None:
    _validate_memory(cfg.memory)
    if cfg.memories < 1:
        raise ValueError(f"mom: memories must be >= 1, got {cfg.memories}")
    if not 1 <= cfg.top_k <= cfg.memories:
        raise ValueError(f"mom: top_k must be in [1, memories={cfg.memories}], got {cfg.top_k}")
    if cfg.capacity is not None and not cfg.capacity > 0:
        raise ValueError(f"mom: capacity must be None or > 0, got {cfg.capacity}")
    if cfg.aux_loss_weight < 0:
        raise ValueError(f"mom: aux_loss_weight must be >= 0, got {cfg.aux_loss_weight}")


def _capacity(cfg: MoMConfig, seq_len: int) -> Optional[int]:
    """Tokens one memory may take per sequence in a call of seq_len tokens (None = unlimited)."""
    if cfg.capacity is None:
        return None
    return math.ceil(cfg.capacity * seq_len * cfg.top_k / cfg.memories)


class _Writer(nn.Module):
    """The write path of one memory: k, v projections (+ short conv), beta and retention-gate
    parameters. Attribute names match ``MemoryMixer`` so weights map one to one."""

    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        D, H, K, V = cfg.d_model, cfg.heads, cfg.key_dim, cfg.value_dim
        self.k_proj = _linear(D, H * K)
        self.v_proj = _linear(D, H * V)
        self.use_conv = cfg.short_conv > 0
        if self.use_conv:
            self.k_conv = ShortConv(H * K, cfg.short_conv)
            self.v_conv = ShortConv(H * V, cfg.short_conv)
        add_gate_params(self, cfg)

    @staticmethod
    def params(cfg: MemoryConfig) -> int:
        D, H, K, V = cfg.d_model, cfg.heads, cfg.key_dim, cfg.value_dim
        n = D * H * K + D * H * V
        if cfg.short_conv > 0:
            n += ShortConv.params(H * K + H * V, cfg.short_conv)
        if cfg.retention == "scalar":
            n += D * H + 2 * H
        elif cfg.retention == "vector":
            n += D * cfg.gate_rank + cfg.gate_rank * H * K + H * K
        if cfg.bias == "l2":
            n += D * H
        return n

    @staticmethod
    def linear_flops(cfg: MemoryConfig) -> int:
        D, H, K, V = cfg.d_model, cfg.heads, cfg.key_dim, cfg.value_dim
        n = D * H * K + D * H * V
        if cfg.retention == "scalar":
            n += D * H
        elif cfg.retention == "vector":
            n += D * cfg.gate_rank + cfg.gate_rank * H * K
        if cfg.bias == "l2":
            n += D * H
        return 2 * n

    def project(self, x: torch.Tensor, log_gamma: Optional[torch.Tensor]):
        """Pointwise part, x [..., D] -> k_raw [..., H*K], v_raw [..., H*V], g ([..., H] | [..., H, K]
        | None), beta ([..., H] | None). Commutes with gathering tokens."""
        g, beta = gates(self, self.cfg, x, log_gamma)
        return self.k_proj(x), self.v_proj(x), g, beta

    def finish(self, k: torch.Tensor, v: torch.Tensor):
        """After the conv: k [..., H*K] -> phi, key norm, [..., H, K]; v -> [..., H, V]."""
        cfg = self.cfg
        lead = k.shape[:-1]
        k = feature_map(k.view(*lead, cfg.heads, cfg.key_dim), cfg.feature_map)
        if cfg.key_norm == "l2":
            k = F.normalize(k, p=2.0, dim=-1, eps=1e-6)
        return k, v.view(*lead, cfg.heads, cfg.value_dim)


def _conv_packed(conv: ShortConv, x: torch.Tensor, state: torch.Tensor, n: torch.Tensor):
    """Causal conv over right-padded token lists. x [B, L, C], state [B, C, c-1], n [B] valid lengths
    -> (y [B, L, C], new state [B, C, c-1] = the last c-1 inputs before the padding)."""
    y, _ = conv(x, state)
    c1 = conv.kernel_size - 1
    xp = torch.cat([state.to(x.dtype), x.transpose(1, 2)], dim=-1)  # [B, C, c-1+L]
    idx = (n[:, None] + torch.arange(c1, device=x.device))[:, None, :].expand(-1, x.shape[-1], -1)
    return y, xp.gather(-1, idx)


class MoMMixer(nn.Module):
    """(B, T, D) -> (B, T, D) Mixture-of-Memories mixer built from a ``MoMConfig``."""

    def __init__(self, cfg: MoMConfig):
        super().__init__()
        _validate(cfg)
        self.cfg = cfg
        mem = cfg.memory
        D, H, K, V = mem.d_model, mem.heads, mem.key_dim, mem.value_dim
        self.router = _linear(D, cfg.memories)
        self.q_proj = _linear(D, H * K)
        self.use_conv = mem.short_conv > 0
        if self.use_conv:
            self.q_conv = ShortConv(H * K, mem.short_conv)
        if mem.retention == "constant":
            self.register_buffer("log_gamma", retnet_log_decay(H), persistent=False)
        else:
            self.log_gamma = None
        self.log_linear = mem.hierarchy == "log_linear"
        if self.log_linear:  # level weights belong to the query path, as in MemoryMixer
            add_level_params(self, mem)
        self.writers = nn.ModuleList(_Writer(mem) for _ in range(1 if cfg.share_kv else cfg.memories))
        self.shared = _Writer(mem) if cfg.shared_memory else None
        if mem.norm == "rmsnorm":
            self.o_norm = GroupRMSNorm(H, V)
        if mem.output_gate:
            self.g_proj = _linear(D, H * V)
        self.o_proj = _linear(H * V, D)
        self.aux_loss: Optional[torch.Tensor] = None
        self.aux_loss_raw: Optional[float] = None

    def _writer(self, m: int) -> _Writer:
        return self.writers[0 if self.cfg.share_kv else m]

    # ------------------------------------------------------------------ accounting
    @staticmethod
    def cost(cfg: MoMConfig, seq_len: int) -> Cost:
        """Analytic Cost at sequence length ``seq_len`` (see the module docstring; independent of it)."""
        _validate(cfg)
        mem = cfg.memory
        D, H, K, V, M, k = mem.d_model, mem.heads, mem.key_dim, mem.value_dim, cfg.memories, cfg.top_k
        c = mem.short_conv
        log_linear = mem.hierarchy == "log_linear"
        Lv = mem.levels if log_linear else 0
        shared_linears = D * M + D * H * K + H * V * D + (D * H * V if mem.output_gate else 0) + D * H * Lv
        shared_params = shared_linears + (H * V if mem.norm == "rmsnorm" else 0) + H * Lv
        if c > 0:
            shared_params += ShortConv.params(H * K, c)
        writer = _Writer.params(mem)
        n_writers = 1 if cfg.share_kv else M
        extra = writer if cfg.shared_memory else 0
        params = shared_params + n_writers * writer + extra
        active = shared_params + (1 if cfg.share_kv else k) * writer + extra

        n_mem = M + (1 if cfg.shared_memory else 0)
        routed_len = math.ceil(seq_len * k / M)  # tokens one memory sees under balanced routing
        if log_linear:  # level slots in use after routed_len (seq_len for the shared memory) tokens
            state = H * K * V * (M * levels_in_use(routed_len, Lv)
                                 + (levels_in_use(seq_len, Lv) if cfg.shared_memory else 0))
        else:
            state = n_mem * H * K * V
        if c > 0:
            state += ShortConv.state_size(H * K + n_mem * (H * K + H * V), c)

        decay = K * V if mem.retention != "none" else 0

        def recurrence(length: int) -> float:  # one token's update and read, as MemoryMixer.cost
            if log_linear:
                transition = 4 * K * V if mem.bias == "l2" else 0
                return H * (2 * K * V + _mean_levels_in_use(length, Lv) * (transition + decay + 2 * K * V))
            write = 2 * K * V if mem.bias == "dot" else 4 * K * V
            return H * (write + decay + 2 * K * V)

        kv_conv = 2 * c * (H * K + H * V)  # 0 when c == 0
        flops = 2 * shared_linears + 2 * c * H * K
        flops += (1 if cfg.share_kv else k) * _Writer.linear_flops(mem)
        flops += k * (kv_conv + recurrence(routed_len) + 2 * H * V)
        if cfg.shared_memory:
            flops += _Writer.linear_flops(mem) + kv_conv + recurrence(seq_len)
        return Cost(params=params, state=state, flops_per_token=float(flops), active_params=active)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None) -> dict:
        mem, M = self.cfg.memory, self.cfg.memories
        H, K, V = mem.heads, mem.key_dim, mem.value_dim
        device = device if device is not None else self.q_proj.weight.device
        dtype = self.q_proj.weight.dtype
        if self.log_linear:  # every level slot stored: the memories sit at different positions
            f32 = dict(device=device, dtype=torch.float32)
            state = {"levels": torch.zeros(batch_size, M, H, mem.levels, K, V, **f32),
                     "pos": torch.zeros(batch_size, M, device=device, dtype=torch.long)}
            if self.shared is not None:  # sees every token: the plain log-linear state
                state["shared_levels"] = torch.zeros(batch_size, H, 0, K, V, **f32)
                state["shared_pos"] = 0
        else:
            state = {"memory": torch.zeros(batch_size, M, H, K, V, device=device, dtype=torch.float32)}
            if self.shared is not None:
                state["shared"] = torch.zeros(batch_size, H, K, V, device=device, dtype=torch.float32)
        if self.use_conv:
            c1 = mem.short_conv - 1
            state["conv_q"] = torch.zeros(batch_size, H * K, c1, device=device, dtype=dtype)
            state["conv_k"] = torch.zeros(batch_size, M, H * K, c1, device=device, dtype=dtype)
            state["conv_v"] = torch.zeros(batch_size, M, H * V, c1, device=device, dtype=dtype)
            if self.shared is not None:
                state["shared_conv_k"] = torch.zeros(batch_size, H * K, c1, device=device, dtype=dtype)
                state["shared_conv_v"] = torch.zeros(batch_size, H * V, c1, device=device, dtype=dtype)
        return state

    # ------------------------------------------------------------------ shared pieces
    def _route(self, x: torch.Tensor):
        """x [B, T, D] -> probs [B, T, M] fp32, weights w [B, T, M] (renormalised over the top_k,
        0 elsewhere), routed [B, T, M] bool (before capacity)."""
        probs = torch.softmax(self.router(x).float(), dim=-1)
        top_p, top_i = probs.topk(self.cfg.top_k, dim=-1)  # [B, T, k]
        # top_k = 1: the renormalised weight is identically 1; writing it as p / p would only feed
        # the router rounding noise instead of its exact zero gradient
        w_top = torch.ones_like(top_p) if self.cfg.top_k == 1 else top_p / top_p.sum(-1, keepdim=True)
        w = torch.zeros_like(probs).scatter(-1, top_i, w_top)
        routed = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top_i, True)
        return probs, w, routed

    def _set_aux_loss(self, probs: torch.Tensor, routed: torch.Tensor) -> None:
        M = self.cfg.memories
        f = routed.float().mean(dim=(0, 1)) / self.cfg.top_k  # fraction of (token, slot) routings per memory
        P = probs.mean(dim=(0, 1))  # mean router probability per memory
        raw = M * (f * P).sum()
        self.aux_loss_raw = float(raw.detach())
        self.aux_loss = raw * self.cfg.aux_loss_weight if self.cfg.aux_loss_weight > 0 else None

    def _query(self, x: torch.Tensor, conv_state: Optional[torch.Tensor], step: bool):
        """Shared query path on [B, T, D] or (step) [B, D] -> q [..., H, K], new conv state."""
        mem = self.cfg.memory
        q = self.q_proj(x)
        new = None
        if self.use_conv:
            q, new = (self.q_conv.step if step else self.q_conv)(q, conv_state)
        q = feature_map(q.view(*x.shape[:-1], mem.heads, mem.key_dim), mem.feature_map)
        if mem.key_norm == "l2":
            q = F.normalize(q, p=2.0, dim=-1, eps=1e-6)
        return q, new

    def _log_linear_lists(self, q, k, v, g, beta, lam, state: Optional[dict], n: torch.Tensor, final: bool):
        """The chunked log-linear kernel over R = B*M padded token lists [R, L, ...] whose memories
        sit at different positions. A Fenwick level depends on the absolute position in the memory's
        own time, so lists are grouped by their starting position (one group when there is no state)
        and, when the final states are wanted, by their length as well (trailing padding would move
        old tokens up a level); one kernel call per group. Returns o [R, L, H, V] and, when ``final``,
        levels [R, H, levels, K, V] (every slot) and positions [R]."""
        mem = self.cfg.memory
        R, L = q.shape[:2]
        H, K, V, Lv = mem.heads, mem.key_dim, mem.value_dim, mem.levels
        if state is None:
            pos0, levels0 = torch.zeros(R, dtype=torch.long, device=q.device), None
        else:
            pos0, levels0 = state["pos"].reshape(R), state["levels"].reshape(R, H, Lv, K, V)
        key = pos0 * (L + 1) + (n if final else 0)
        rows_all, outs, levels = [], [], []
        for u in torch.unique(key).tolist():
            rows = (key == u).nonzero().flatten()
            p0 = int(pos0[rows[0]])
            length = int(n[rows[0]]) if final else int(n[rows].max())
            init = None
            if levels0 is not None:
                init = {"levels": levels0[rows][:, :, :levels_in_use(p0, Lv)], "pos": p0}

            def sel(t):
                return None if t is None else t[rows, :length]

            o, st = chunk_log_linear(sel(q), sel(k), sel(v), sel(g), sel(lam), sel(beta), initial_state=init,
                                     output_final_state=final, chunk_size=mem.chunk_size)
            rows_all.append(rows)
            outs.append(F.pad(o, (0, 0, 0, 0, 0, L - length)))
            if final:
                levels.append(F.pad(st["levels"], (0, 0, 0, 0, 0, Lv - st["levels"].shape[2])))
        order = torch.cat(rows_all)
        inv = torch.empty_like(order)
        inv[order] = torch.arange(R, device=order.device)
        o = torch.cat(outs)[inv]
        if not final:
            return o, None, None
        return o, torch.cat(levels)[inv], pos0 + n

    def _kernel(self, q, k, v, g, beta, init, final: bool):
        mem = self.cfg.memory
        if mem.bias == "dot":
            return chunk_gla(q, k, v, g, initial_state=init, output_final_state=final, chunk_size=mem.chunk_size)
        return chunk_delta_rule(q, k, v, beta, g, initial_state=init, output_final_state=final,
                                chunk_size=mem.chunk_size)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mixed read o [..., H, V] -> [..., D]: shared per-head norm, output gate, o_proj."""
        mem = self.cfg.memory
        o = o.to(x.dtype)
        if mem.norm == "rmsnorm":
            o = self.o_norm(o)
        o = o.reshape(*o.shape[:-2], mem.heads * mem.value_dim)
        if mem.output_gate:
            o = o * F.silu(self.g_proj(x))
        return self.o_proj(o)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False):
        """x [B, T, D] -> y [B, T, D] (or (y, state) when return_state); ``state`` continues a sequence."""
        probs, w, routed = self._route(x)
        self._set_aux_loss(probs, routed)
        if self.cfg.memory.path == "chunk":
            y, new_state = self._forward_chunk(x, w, routed, state, return_state)
        else:
            y, new_state = self._forward_reference(x, w, routed, state)
        return (y, new_state) if return_state else y

    def _forward_chunk(self, x, w, routed, state, return_state: bool):
        cfg, mem = self.cfg, self.cfg.memory
        B, T, D = x.shape
        M, H, K, V = cfg.memories, mem.heads, mem.key_dim, mem.value_dim
        dev = x.device
        if state is None and (return_state or self.use_conv):
            state = self.init_state(B, dev)
        new_state = {}

        q, conv_q = self._query(x, None if state is None else state.get("conv_q"), step=False)  # [B, T, H, K]
        if self.use_conv:
            new_state["conv_q"] = conv_q
        lam = level_weights(self, mem, x) if self.log_linear else None  # [B, T, H, levels]

        # 1. keep mask after capacity (first come, first served), weights of dropped tokens -> 0
        keep = routed
        cap = _capacity(cfg, T)
        if cap is not None:
            keep = routed & (routed.cumsum(dim=1) <= cap)
        w = w * keep
        # 2. per (sequence, memory) token lists in time order: a stable sort puts kept tokens first
        keep_m = keep.transpose(1, 2)  # [B, M, T]
        n = keep_m.sum(-1)  # [B, M] tokens kept by each memory
        L = int(n.max())
        o = x.new_zeros(B, T, H, V, dtype=torch.float32) if L == 0 else None
        if L > 0:
            order = torch.sort((~keep_m).to(torch.int8), dim=-1, stable=True).indices[..., :L]  # [B, M, L]
            valid = torch.arange(L, device=dev) < n[..., None]  # [B, M, L]
            # 3. write inputs of each memory on its own token list
            if cfg.share_kv:  # pointwise projections once on the full sequence, then gathered
                full = self.writers[0].project(x, self.log_gamma)
            ks, vs, gs, bs, ck, cv = [], [], [], [], [], []
            for m in range(M):
                idx = order[:, m]  # [B, L]
                if cfg.share_kv:
                    k, v, g, beta = (None if t is None else _gather_time(t, idx) for t in full)
                else:
                    k, v, g, beta = self.writers[m].project(_gather_time(x, idx), self.log_gamma)
                writer = self._writer(m)
                if self.use_conv:
                    k, s_k = _conv_packed(writer.k_conv, k, state["conv_k"][:, m], n[:, m])
                    v, s_v = _conv_packed(writer.v_conv, v, state["conv_v"][:, m], n[:, m])
                    ck.append(s_k)
                    cv.append(s_v)
                k, v = writer.finish(k, v)
                mask = valid[:, m]  # [B, L]; padding: k = v = 0, beta = 0, g = 0 leaves S unchanged
                ks.append(k * mask[..., None, None])
                vs.append(v * mask[..., None, None])
                if g is not None:
                    gs.append(torch.where(mask.view(B, L, *([1] * (g.dim() - 2))), g, 0.0))
                if beta is not None:
                    bs.append(beta * mask[..., None])
            if self.use_conv:
                new_state["conv_k"] = torch.stack(ck, 1)
                new_state["conv_v"] = torch.stack(cv, 1)

            def stack(ts):  # M tensors [B, L, ...] -> [B*M, L, ...]
                return torch.stack(ts, 1).flatten(0, 1) if ts else None

            qm = q[:, None].expand(B, M, T, H, K).gather(2, order[..., None, None].expand(B, M, L, H, K))
            if self.log_linear:  # the query's level weights travel with it into each memory's list
                Lv = mem.levels
                lamm = lam[:, None].expand(B, M, T, H, Lv).gather(2, order[..., None, None].expand(B, M, L, H, Lv))
                om, S, pos = self._log_linear_lists(qm.flatten(0, 1), stack(ks), stack(vs), stack(gs), stack(bs),
                                                    lamm.flatten(0, 1), state, n.flatten(), return_state)
                if return_state:
                    new_state["levels"], new_state["pos"] = S.view(B, M, H, Lv, K, V), pos.view(B, M)
            else:
                init = None if state is None else state["memory"].reshape(B * M, H, K, V)
                om, S = self._kernel(qm.flatten(0, 1), stack(ks), stack(vs), stack(gs), stack(bs), init,
                                     return_state)
                if return_state:
                    new_state["memory"] = S.view(B, M, H, K, V)
            # 4. reads back to their tokens: position of token t in m's list (L = a zero row)
            om = torch.cat([om.view(B, M, L, H, V), om.new_zeros(B, M, 1, H, V)], dim=2)
            pos = torch.where(keep_m, keep_m.cumsum(-1) - 1, L)  # [B, M, T]
            reads = om.gather(2, pos[..., None, None].expand(B, M, T, H, V))  # [B, M, T, H, V]
            o = torch.einsum("bmthv,btm->bthv", reads, w.to(reads.dtype))
        elif return_state:
            for key in ("levels", "pos") if self.log_linear else ("memory",):
                new_state[key] = state[key]
            if self.use_conv:
                new_state["conv_k"], new_state["conv_v"] = state["conv_k"], state["conv_v"]

        if self.shared is not None:  # always-on memory: a plain recurrence over the full sequence
            k, v, g, beta = self.shared.project(x, self.log_gamma)
            if self.use_conv:
                k, new_state["shared_conv_k"] = self.shared.k_conv(k, state["shared_conv_k"])
                v, new_state["shared_conv_v"] = self.shared.v_conv(v, state["shared_conv_v"])
            k, v = self.shared.finish(k, v)
            if self.log_linear:
                init = None if state is None else {"levels": state["shared_levels"], "pos": state["shared_pos"]}
                os_, S = chunk_log_linear(q, k, v, g, lam, beta, initial_state=init, output_final_state=return_state,
                                          chunk_size=mem.chunk_size)
                if return_state:
                    new_state["shared_levels"], new_state["shared_pos"] = S["levels"], S["pos"]
            else:
                os_, S = self._kernel(q, k, v, g, beta, None if state is None else state["shared"], return_state)
                if return_state:
                    new_state["shared"] = S
            o = o + os_
        return self._output(o, x), (new_state if return_state else None)

    def _forward_reference(self, x, w, routed, state):
        """Token loop: capacity by a running counter, then ``_token`` at every t."""
        B, T, _ = x.shape
        cap = _capacity(self.cfg, T)
        if state is None:
            state = self.init_state(B, x.device)
        count = torch.zeros(B, self.cfg.memories, dtype=torch.long, device=x.device)
        ys = []
        for t in range(T):
            keep = routed[:, t]
            if cap is not None:
                keep = keep & (count < cap)
                count = count + keep.long()
            y_t, state = self._token(x[:, t], w[:, t] * keep, keep, state)
            ys.append(y_t)
        return torch.stack(ys, dim=1), state

    # ------------------------------------------------------------------ one token
    def _token(self, x: torch.Tensor, w: torch.Tensor, keep: torch.Tensor, state: dict):
        """x [B, D], w [B, M] (0 where not kept), keep [B, M] bool -> (y [B, D], new state).
        Every memory's update is computed and kept only where the token is routed to it."""
        mem = self.cfg.memory
        q, conv_q = self._query(x, state.get("conv_q"), step=True)  # [B, H, K]
        new_state = {}
        if self.use_conv:
            new_state["conv_q"] = conv_q
        proj = [wr.project(x, self.log_gamma) for wr in self.writers]
        lam = level_weights(self, mem, x) if self.log_linear else None  # [B, H, levels]
        S_all, ck, cv = [], [], []
        o = 0.0
        for m in range(self.cfg.memories):
            writer = self._writer(m)
            k, v, g, beta = proj[0 if self.cfg.share_kv else m]
            sel = keep[:, m]
            if self.use_conv:
                k, s_k = writer.k_conv.step(k, state["conv_k"][:, m])
                v, s_v = writer.v_conv.step(v, state["conv_v"][:, m])
                ck.append(torch.where(sel[:, None, None], s_k, state["conv_k"][:, m]))
                cv.append(torch.where(sel[:, None, None], s_v, state["conv_v"][:, m]))
            k, v = writer.finish(k, v)
            if self.log_linear:  # memory m at its own position state["pos"][:, m]
                S_old = state["levels"][:, m]
                o_m, S_new = log_linear_step_slots(q, k, v, g, lam, beta, S_old, state["pos"][:, m])
                sel_s = sel[:, None, None, None, None]
            else:
                S_old = state["memory"][:, m]
                if mem.bias == "dot":
                    o_m, S_new = gla_step(q, k, v, g, S_old)
                else:
                    o_m, S_new = delta_rule_step(q, k, v, beta, g, S_old)
                sel_s = sel[:, None, None, None]
            S_all.append(torch.where(sel_s, S_new, S_old))  # no decay when not routed
            o = o + w[:, m, None, None].to(o_m.dtype) * o_m
        if self.log_linear:
            new_state["levels"], new_state["pos"] = torch.stack(S_all, 1), state["pos"] + keep.long()
        else:
            new_state["memory"] = torch.stack(S_all, 1)
        if self.use_conv:
            new_state["conv_k"], new_state["conv_v"] = torch.stack(ck, 1), torch.stack(cv, 1)
        if self.shared is not None:
            k, v, g, beta = self.shared.project(x, self.log_gamma)
            if self.use_conv:
                k, new_state["shared_conv_k"] = self.shared.k_conv.step(k, state["shared_conv_k"])
                v, new_state["shared_conv_v"] = self.shared.v_conv.step(v, state["shared_conv_v"])
            k, v = self.shared.finish(k, v)
            if self.log_linear:
                o_s, st = log_linear_step(q, k, v, g, lam, beta, {"levels": state["shared_levels"],
                                                                  "pos": state["shared_pos"]})
                new_state["shared_levels"], new_state["shared_pos"] = st["levels"], st["pos"]
            elif mem.bias == "dot":
                o_s, new_state["shared"] = gla_step(q, k, v, g, state["shared"])
            else:
                o_s, new_state["shared"] = delta_rule_step(q, k, v, beta, g, state["shared"])
            o = o + o_s
        return self._output(o, x), new_state

    def step(self, x: torch.Tensor, state: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
        """One decoding step: x [B, D], state (or None = fresh) -> (y [B, D], new state).
        Only the routed memories (and the shared one) change; aux_loss is left as it was."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        _, w, routed = self._route(x[:, None])  # capacity of a 1-token call never binds
        return self._token(x, w[:, 0], routed[:, 0], state)

    def extra_repr(self) -> str:
        c, m = self.cfg, self.cfg.memory
        return (f"memories={c.memories}, top_k={c.top_k}, shared_memory={c.shared_memory}, share_kv={c.share_kv}, "
                f"capacity={c.capacity}, bias={m.bias}, retention={m.retention}, path={m.path}"
                + (f", hierarchy={m.hierarchy}, levels={m.levels}" if m.hierarchy != "none" else ""))


def _gather_time(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, T, *rest], idx [B, L] -> t[b, idx[b, l]] as [B, L, *rest]."""
    rest = t.shape[2:]
    return t.gather(1, idx.view(*idx.shape, *([1] * len(rest))).expand(*idx.shape, *rest))
