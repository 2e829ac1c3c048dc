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
    per memory m ("write path", ``_Writer``, the write path of blocks/memory.py): W_k^m, W_v^m, the
        short conv on k and v, the beta projection (delta rule) and the retention gate's parameters
        (Mamba2 dt_proj / A_log / dt_bias, GLA gk_down / gk_up; the RetNet decay, a fixed buffer).
        With ``share_kv`` all M memories use ONE write path (k, v, conv weights, beta and gates),
        so they differ only in the tokens they see.
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

Paths (the kernels of blocks/dispatch.py for the memory config; how a memory in its own time keeps
its state: its hierarchy, blocks/hierarchy.py):
    chunk      no loop over tokens: for every (sequence, memory) the kept tokens are listed in
               time order by a stable sort and right-padded to L; the M memories are stacked
               along the batch ([B*M, L, ...]) and run through ONE call of the chunked kernel
               (chunk_gla / chunk_delta_rule), and the reads are gathered back to their tokens.
               Padding uses k = v = 0 and every write gate 0 (beta = 0, log-decay g = 0), so the
               final states are exact. Log-linear: chunk_log_linear once per group of lists that
               start at the same position (one group without a state) and, when final states are
               returned, have the same length (trailing padding would merge old tokens into higher
               levels).
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
from torch import nn

from .axis import linear
from .config import Cost, MemoryConfig, MoMConfig
from .dispatch import memory_ops, memory_statics
from .memory import (add_gate_params, add_output_params, add_projections, output, output_cost, query, query_cost,
                     stream_widths, with_statics, write_cost, write_finish, write_project)
from .short_conv import ShortConv

__all__ = ["MoMMixer"]


def _capacity(cfg: MoMConfig, seq_len: int) -> Optional[int]:
    """Tokens one memory may take per sequence in a call of seq_len tokens (None = unlimited)."""
    if cfg.capacity is None:
        return None
    return math.ceil(cfg.capacity * seq_len * cfg.top_k / cfg.memories)


class _Writer(nn.Module):
    """The write path of one memory (blocks/memory.py's): k, v projections (+ short conv) and the gates'
    parameters, under the names ``MemoryMixer`` gives them so weights map one to one."""

    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        add_projections(self, cfg, "kv")
        add_gate_params(self, cfg)

    def project(self, x: torch.Tensor):
        """Pointwise part, x [..., D] -> k [..., H*K], v [..., H*V], gates. Commutes with gathering tokens."""
        return write_project(self, self.cfg, x)


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
        self.cfg = cfg
        mem = cfg.memory
        self.hier = mem.axes.hierarchy
        self.ops = memory_ops(mem)
        self.router = linear(mem.d_model, cfg.memories)
        add_projections(self, mem, "q")
        self.use_conv = mem.short_conv > 0
        self.hier.add_params(self, mem)  # level weights belong to the query path, as in MemoryMixer
        self.writers = nn.ModuleList(_Writer(mem) for _ in range(1 if cfg.share_kv else cfg.memories))
        self.shared = _Writer(mem) if cfg.shared_memory else None
        add_output_params(self, mem)
        self.aux_loss: Optional[torch.Tensor] = None
        self.aux_loss_raw: Optional[float] = None

    def _writer(self, m: int) -> _Writer:
        return self.writers[0 if self.cfg.share_kv else m]

    # ------------------------------------------------------------------ accounting
    @staticmethod
    def cost(cfg: MoMConfig, seq_len: int) -> Cost:
        """Analytic Cost at sequence length ``seq_len`` (see the module docstring)."""
        mem = cfg.memory
        H, K, V, M, k = mem.heads, mem.key_dim, mem.value_dim, cfg.memories, cfg.top_k
        c = mem.short_conv
        width = stream_widths(mem)
        hier = mem.axes.hierarchy
        read, out, write = query_cost(mem), output_cost(mem), write_cost(mem)
        router = mem.d_model * M
        shared_params = router + read.params + out.params
        n_writers = 1 if cfg.share_kv else M
        extra = write.params if cfg.shared_memory else 0
        params = shared_params + n_writers * write.params + extra
        active = shared_params + (1 if cfg.share_kv else k) * write.params + extra

        n_mem = M + (1 if cfg.shared_memory else 0)
        routed_len = math.ceil(seq_len * k / M)  # tokens one memory sees under balanced routing
        state = M * hier.state_numel(mem, routed_len) + (hier.state_numel(mem, seq_len) if cfg.shared_memory else 0)
        if c > 0:
            state += ShortConv.state_size(width["q"] + n_mem * (width.get("k", 0) + width["v"]), c)

        write_linear = write.flops - write.conv_flops  # the k/v convs run per routed memory, on its own tokens
        flops = 2 * router + read.flops + out.flops
        flops += (1 if cfg.share_kv else k) * write_linear
        flops += k * (write.conv_flops + hier.recurrence_flops(mem, routed_len) + 2 * H * V)  # + mixing w * read
        if cfg.shared_memory:
            flops += write_linear + write.conv_flops + hier.recurrence_flops(mem, seq_len)
        return Cost(params=params, state=state, flops_per_token=float(flops), active_params=active)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None) -> dict:
        mem, M = self.cfg.memory, self.cfg.memories
        H, K, V = mem.heads, mem.key_dim, mem.value_dim
        device = device if device is not None else self.q_proj.weight.device
        dtype = self.q_proj.weight.dtype
        state = self.hier.init_rows(mem, batch_size, M, device, hosts=[self._writer(m) for m in range(M)])
        if self.shared is not None:  # sees every token: the state of a plain memory
            state.update(self.hier.init_state(mem, batch_size, device, prefix="shared", host=self.shared))
        if self.use_conv:
            c1 = mem.short_conv - 1
            width = stream_widths(mem)  # n*H*K, n*H*V; no k when the key is tied to the gate (HGRN2)
            state["conv_q"] = torch.zeros(batch_size, width["q"], c1, device=device, dtype=dtype)
            for s in ("k", "v"):
                if s in width:
                    state[f"conv_{s}"] = torch.zeros(batch_size, M, width[s], c1, device=device, dtype=dtype)
                    if self.shared is not None:
                        state[f"shared_conv_{s}"] = torch.zeros(batch_size, width[s], c1, device=device, dtype=dtype)
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

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False):
        """x [B, T, D] -> y [B, T, D] (or (y, state) when return_state); ``state`` continues a sequence."""
        probs, w, routed = self._route(x)
        self._set_aux_loss(probs, routed)
        if self.cfg.memory.path == "reference":
            y, new_state = self._forward_reference(x, w, routed, state)
        else:
            y, new_state = self._forward_lists(x, w, routed, state, return_state)
        return (y, new_state) if return_state else y

    def _forward_lists(self, x, w, routed, state, return_state: bool):
        cfg, mem = self.cfg, self.cfg.memory
        B, T, _ = x.shape
        M, H, V = cfg.memories, mem.heads, mem.state_value_dim  # V of a read (the normaliser's column included)
        dev = x.device
        if state is None and (return_state or self.use_conv):
            state = self.init_state(B, dev)
        new_state = {}

        q, conv_q = query(self, mem, x, None if state is None else state.get("conv_q"), step=False)  # [B, T, H, K]
        if self.use_conv:
            new_state["conv_q"] = conv_q
        read = self.hier.read_inputs(self, mem, x)  # the query's level weights (log-linear) [B, T, H, levels]

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
                full = self.writers[0].project(x)
            ks, vs, gates, ck, cv = [], [], {}, [], []
            for m in range(M):
                idx = order[:, m]  # [B, L]
                if cfg.share_kv:
                    k, v = _gather_time(full[0], idx) if full[0] is not None else None, _gather_time(full[1], idx)
                    g_m = {name: None if t is None else _gather_time(t, idx) for name, t in full[2].items()}
                else:
                    k, v, g_m = self.writers[m].project(_gather_time(x, idx))
                writer = self._writer(m)
                if self.use_conv:
                    if k is not None:
                        k, s_k = _conv_packed(writer.k_conv, k, state["conv_k"][:, m], n[:, m])
                        ck.append(s_k)
                    v, s_v = _conv_packed(writer.v_conv, v, state["conv_v"][:, m], n[:, m])
                    cv.append(s_v)
                k, v = write_finish(writer, mem, k, v, g_m)
                mask = valid[:, m]  # [B, L]; padding: k = v = 0 and every gate 0 leave S unchanged
                ks.append(k * _mask_like(mask, k))
                vs.append(v * _mask_like(mask, v))
                for name, t in g_m.items():
                    gates.setdefault(name, []).append(None if t is None else _pad_gate(name, t, mask))
            if self.use_conv:
                if ck:
                    new_state["conv_k"] = torch.stack(ck, 1)
                new_state["conv_v"] = torch.stack(cv, 1)

            def stack(ts):  # M tensors [B, L, ...] -> [B*M, L, ...]
                return torch.stack(ts, 1).flatten(0, 1)

            def lists(t):  # a query-side tensor [B, T, ...] -> each memory's list [B*M, L, ...]
                rest = t.shape[2:]
                gathered = t[:, None].expand(B, M, T, *rest).gather(2, order.view(B, M, L, *([1] * len(rest)))
                                                                    .expand(B, M, L, *rest))
                return gathered.flatten(0, 1)

            gates = {name: None if ts[0] is None else stack(ts) for name, ts in gates.items()}
            gates.update({name: lists(t) for name, t in read.items()})  # the query's level weights travel with it
            if mem.minibatch:  # each memory's learned tensors (initial weights, its LayerNorm), per row
                per_m = [memory_statics(self._writer(m), mem, B) for m in range(M)]
                gates["statics"] = {name: stack([st[name] for st in per_m]) for name in per_m[0]}
            om, rows = self.hier.run_rows(self.ops, mem, lists(q), stack(ks), stack(vs), gates, state, n.flatten(),
                                          return_state)
            new_state.update({key: t.view(B, M, *t.shape[1:]) for key, t in rows.items()})
            # 4. reads back to their tokens: position of token t in m's list (L = a zero row)
            om = torch.cat([om.view(B, M, L, H, V), om.new_zeros(B, M, 1, H, V)], dim=2)
            pos = torch.where(keep_m, keep_m.cumsum(-1) - 1, L)  # [B, M, T]
            reads = om.gather(2, pos[..., None, None].expand(B, M, T, H, V))  # [B, M, T, H, V]
            o = torch.einsum("bmthv,btm->bthv", reads, w.to(reads.dtype))
        elif return_state:
            for key in self.hier.row_entries(mem):
                new_state[key] = state[key]
            if self.use_conv:
                new_state.update({key: state[key] for key in ("conv_k", "conv_v") if key in state})

        if self.shared is not None:  # always-on memory: a plain recurrence over the full sequence
            k, v, g_s = self.shared.project(x)
            if self.use_conv:
                if k is not None:
                    k, new_state["shared_conv_k"] = self.shared.k_conv(k, state["shared_conv_k"])
                v, new_state["shared_conv_v"] = self.shared.v_conv(v, state["shared_conv_v"])
            k, v = write_finish(self.shared, mem, k, v, g_s)
            init = None if state is None else self.hier.kernel_state(state, "shared")
            os_, S = self.ops.forward(mem.path, q, k, v, with_statics({**g_s, **read}, self.shared, mem, B),
                                      initial_state=init, output_final_state=return_state, chunk_size=mem.chunk_size)
            if return_state:
                new_state.update(self.hier.state_entries(S, "shared"))
            o = o + os_
        return output(self, mem, o, x), (new_state if return_state else None)

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
        q, conv_q = query(self, mem, x, state.get("conv_q"), step=True)  # [B, H, K]
        new_state = {}
        if self.use_conv:
            new_state["conv_q"] = conv_q
        proj = [wr.project(x) for wr in self.writers]
        read = self.hier.read_inputs(self, mem, x)  # [B, H, levels] (log-linear)
        S_all, ck, cv = [], [], []
        o = 0.0
        for m in range(self.cfg.memories):
            writer = self._writer(m)
            k, v, g_m = proj[0 if self.cfg.share_kv else m]
            g_m = dict(g_m)  # write_finish takes the write's scale out; with share_kv the memories share proj[0]
            sel = keep[:, m]
            if self.use_conv:
                if k is not None:
                    k, s_k = writer.k_conv.step(k, state["conv_k"][:, m])
                    ck.append(torch.where(sel[:, None, None], s_k, state["conv_k"][:, m]))
                v, s_v = writer.v_conv.step(v, state["conv_v"][:, m])
                cv.append(torch.where(sel[:, None, None], s_v, state["conv_v"][:, m]))
            k, v = write_finish(writer, mem, k, v, g_m)
            o_m, S_new, S_old = self.hier.step_row(self.ops, q, k, v, with_statics({**g_m, **read}, writer, mem,
                                                                                 x.shape[0]), state, m)
            S_all.append(torch.where(sel.view(-1, *([1] * (S_new.dim() - 1))), S_new, S_old))  # no decay if not routed
            o = o + w[:, m, None, None].to(o_m.dtype) * o_m
        new_state.update(self.hier.finish_rows(S_all, state, keep))
        if self.use_conv:
            if ck:
                new_state["conv_k"] = torch.stack(ck, 1)
            new_state["conv_v"] = torch.stack(cv, 1)
        if self.shared is not None:
            k, v, g_s = self.shared.project(x)
            if self.use_conv:
                if k is not None:
                    k, new_state["shared_conv_k"] = self.shared.k_conv.step(k, state["shared_conv_k"])
                v, new_state["shared_conv_v"] = self.shared.v_conv.step(v, state["shared_conv_v"])
            k, v = write_finish(self.shared, mem, k, v, g_s)
            o_s, S = self.ops.step(q, k, v, **with_statics({**g_s, **read}, self.shared, mem, x.shape[0]),
                                   state=self.hier.kernel_state(state, "shared"))
            new_state.update(self.hier.state_entries(S, "shared"))
            o = o + o_s
        return output(self, mem, o, x), new_state

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
                f"capacity={c.capacity}, bias={m.bias}, retention={m.retention}, path={m.path}, "
                f"kernels={self.ops.family}" + (f", hierarchy={m.hierarchy}, levels={m.levels}"
                                                if m.hierarchy != "none" else ""))


def _pad_gate(name: str, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A write gate [B, L, H(, K)] with its padding positions (mask False) set to 0: beta = 0 (no write, no
    transition) and log-decay g = 0 (decay 1) leave the state unchanged."""
    if name == "beta":
        return t * _mask_like(mask, t)
    return torch.where(_mask_like(mask, t), t, 0.0)


def _mask_like(mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A [B, L] token mask viewed to broadcast against t [B, L, ...] (a write step axis n included)."""
    return mask.view(*mask.shape, *([1] * (t.dim() - 2)))


def _gather_time(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t [B, T, *rest], idx [B, L] -> t[b, idx[b, l]] as [B, L, *rest]."""
    rest = t.shape[2:]
    return t.gather(1, idx.view(*idx.shape, *([1] * len(rest))).expand(*idx.shape, *rest))
