"""Titans: a long-term memory mixer and short-term softmax attention in one block
(Behrouz et al. 2024, "Titans: Learning to Memorize at Test Time", https://arxiv.org/abs/2501.00663).

Pieces: the long-term memory is any ``MemoryMixer`` (cfg.memory; for mag and mal also a Mixture-of-Memories,
``MoMMixer``, whose state and decode step take the memory's place below), the short-term memory is softmax
attention with RoPE (cfg.attention: its projections and its window), and Np = cfg.persistent_tokens
learned persistent tokens P in R^{Np x D} (init N(0, 0.02^2)), prepended to what the attention sees.

Shape legend: B batch, T sequence length, D model width, H attention heads, hd attention head dim,
Np persistent tokens, s = cfg.segment (mac), n tokens of the current segment already seen (mac).

Attention with prefix ("SW-Attn*" in the paper, Fig. 3b) used by mal and mag: the sequence is
[P ; z] with P at RoPE positions 0..Np-1 and z_t at Np + t; the query at z_t sees every persistent
token and z_u for t - w < u <= t (window w = cfg.attention.window) or u <= t when the window is None.
The persistent tokens never slide out of the window.

Variants (o is the block output, only at the positions of x):
    mal  memory as layer:   m = Memory([P ; x]);  o = SW-Attn*(m)              (attention reads m)
    mag  memory as gate:    m = Memory([P ; x]);  y = SW-Attn*([P ; x]);  o = gate(y, m)
    mac  memory as context: per segment X of s tokens (the last may be shorter), S = memory state
         written by the previous segments (zero at start):
             h_j = Memory-read of x_j against S, no write: o_proj-path(scale * S^T q(x_j))
                   (the memory's own q path, per-head norm, output gate and W_o)
             y   = Attn over [P ; h_1..h_L ; x_1..x_L], outputs at the x positions; query x_j sees
                   all of P, h_1..h_j and x_1..x_j (h_j depends on x_j, so h is causal as well)
             m, S' = Memory(y, state=S)       (the memory writes y, read after write)
             o   = gate(y, m)
         RoPE positions are slots of the segment window, independent of the segment's actual
         length: P at 0..Np-1, h_j at Np + j, x_j at Np + s + j (j = 0..s-1), so a decoding step,
         which sees a partial segment, rotates exactly as the full forward does.
         The segment bounds mac's attention context; cfg.attention.window is not used by mac.
    gate(y, m) = RMSNorm_y(y) * sigmoid(RMSNorm_m(m)) with learned gains (D each): the paper
         normalises both branches with learnable vector-valued weights before the non-linear
         gating; we put the sigmoid on the memory branch. No extra output projection (both branches
         already end in their own W_o).
The memory and the x-stream short conv of mac's read keep their own state: the memory's q/k/v
convs run over the y stream (what it writes), the read's q conv over the x stream.

Decoding / continuation (``forward(x, state, return_state=True)``, ``step``): one code path.
    mal/mag state: {"memory": memory state after [P ; x so far], "k"/"v": [B, H, Np + min(t, w), hd]
        KV cache (persistent tokens prefilled at init_state, rotated keys), "pos": t}.
    mac state: {"memory": running memory state (incl. its conv state), "segment_memory": S at the
        current segment's start [B, H, K, V], "read_conv": x-stream q conv [B, H*K, k-1] (if any),
        "k_p"/"v_p": P's keys/values [B, H, Np, hd], "k_h"/"v_h"/"k_x"/"v_x": the current segment's
        h and x keys/values [B, H, n, hd], "pos": t}. A step is O(Np + s) attention plus one memory
        step; when a segment completes, S <- running memory and the segment caches empty.

Accounting (``TitansMixer.cost(cfg, seq_len)``), conventions of blocks/memory.py and attention.py:
    params = Np*D + memory params + attention params (+ 2*D gate gains for mag/mac); exact.
    state  = what the state dict above holds after T tokens: mal/mag memory state +
             2*H*hd*(Np + min(T, w or T)); mac memory state + H*K*V (S) + the read conv
             (k-1)*H*K + 2*H*hd*(Np + 2*(T mod s)).
    flops_per_token: memory flops per token (recurrent form) + attention: every linear 2*in*out;
        scores and values 4*H*hd per visible key, averaged over the T positions (mal/mag:
        Np + average_context(T, w); mac: Np + 2*j at in-segment index j = 1..s). mac adds the read
        path per token (q projection, q conv, 2*H*K*V read, output gate, W_o) and K/V of h.
        The persistent tokens' own work (memory over P for mal/mag and K/V of P or of Memory(P)),
        done once per sequence, is included divided by T. Norms, the gate, RoPE, softmax ignored.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, apply_rope, average_context, rope_cos_sin
from .axis import INIT_STD
from .config import Cost, MoMConfig, TitansConfig
from .memory import MemoryMixer, output, output_cost, query, query_cost
from .mom import MoMMixer
from .norm import RMSNorm
from .short_conv import ShortConv

__all__ = ["TitansMixer"]


class TitansMixer(nn.Module):
    """(B, T, D) -> (B, T, D) Titans block (mac | mag | mal) built from a ``TitansConfig``."""

    def __init__(self, cfg: TitansConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.d_model
        self.memory = MoMMixer(cfg.memory) if isinstance(cfg.memory, MoMConfig) else MemoryMixer(cfg.memory)
        self.attn = Attention(cfg.attention)
        self.persistent = nn.Parameter(torch.randn(cfg.persistent_tokens, D) * INIT_STD)  # P [Np, D]
        if cfg.variant in ("mag", "mac"):
            self.norm_y = RMSNorm(D)
            self.norm_m = RMSNorm(D)

    # ------------------------------------------------------------------ accounting
    @staticmethod
    def cost(cfg: TitansConfig, seq_len: int) -> Cost:
        """Analytic Cost at sequence length ``seq_len`` (see the module docstring)."""
        m, a = cfg.memory, cfg.attention
        D, Np, T = cfg.d_model, cfg.persistent_tokens, seq_len
        H, hd, w = a.heads, a.head_dim, a.window
        mem = (MoMMixer if isinstance(m, MoMConfig) else MemoryMixer).cost(m, T)
        att = Attention.cost(a, T)
        params = Np * D + mem.params + att.params + (2 * D if cfg.variant in ("mag", "mac") else 0)
        kv = 2 * H * hd  # numbers per cached key + value
        proj = 2 * D * H * hd  # FLOPs of one attention projection for one token
        per_seq = 1.0 / max(T, 1)
        if cfg.variant in ("mal", "mag"):
            state = mem.state + kv * (Np + min(T, T if w is None else w))
            flops = mem.flops_per_token + 4 * proj + 2 * kv * (Np + average_context(T, w))
            flops += Np * (mem.flops_per_token + 2 * proj) * per_seq  # Memory(P) and K/V of the prefix
        else:
            s = cfg.segment
            structure = m.axes.structure
            read_conv = ShortConv.state_size(m.heads * m.key_dim, m.short_conv) if m.short_conv > 0 else 0
            state = mem.state + structure.state_numel(m) + read_conv + kv * (Np + 2 * (T % s))
            # the read path: the memory's query path, one read of S per head, its output path
            read = query_cost(m).flops + m.heads * structure.read_flops(m) + output_cost(m).flops
            full, r = divmod(T, s)
            sum_j = full * s * (s + 1) / 2 + r * (r + 1) / 2  # sum over positions of the in-segment index j
            ctx = Np + 2 * sum_j * per_seq
            flops = mem.flops_per_token + read + 6 * proj + 2 * kv * ctx  # q, k/v of x and of h, o
            flops += Np * 2 * proj * per_seq  # K/V of the persistent tokens
        return Cost(params=params, state=state, flops_per_token=float(flops))

    # ------------------------------------------------------------------ attention pieces
    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H*hd] -> [B, H, L, hd]
        B, L, _ = t.shape
        return t.view(B, L, self.cfg.attention.heads, self.cfg.attention.head_dim).transpose(1, 2)

    def _rope(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        a = self.cfg.attention
        cos, sin = rope_cos_sin(positions, a.head_dim, a.rope_base, dtype=t.dtype)
        return apply_rope(t, cos, sin)

    def _kv(self, z: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [B, L, D] -> rotated keys, values [B, H, L, hd]."""
        return self._rope(self._heads(self.attn.k_proj(z)), positions), self._heads(self.attn.v_proj(z))

    def _attend(self, q, k, v, mask) -> torch.Tensor:
        """q [B,H,L,hd], k/v [B,H,S,hd], mask [L,S] (True = visible) -> W_o(softmax attention) [B, L, D]."""
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        B, _, L, _ = o.shape
        return self.attn.o_proj(o.transpose(1, 2).reshape(B, L, -1))

    def _gate(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.norm_y(y) * torch.sigmoid(self.norm_m(m))

    def _memory(self, z: torch.Tensor, state: dict):
        """Memory over z [B, L, D] continuing ``state`` -> (m [B, L, D], new state); one token = memory.step."""
        if z.shape[1] == 1:
            m, st = self.memory.step(z[:, 0], state)
            return m.unsqueeze(1), st
        return self.memory(z, state, return_state=True)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None) -> dict:
        """State before the first token (persistent tokens prefilled; see the module docstring)."""
        cfg = self.cfg
        device = device if device is not None else self.persistent.device
        B, Np = batch_size, cfg.persistent_tokens
        P = self.persistent.to(device).unsqueeze(0).expand(B, Np, cfg.d_model)
        p_pos = torch.arange(Np, device=device)
        mem = self.memory.init_state(B, device)
        if cfg.variant == "mac":
            k_p, v_p = self._kv(P, p_pos)
            empty = k_p.new_zeros(B, cfg.attention.heads, 0, cfg.attention.head_dim)
            state = {"memory": mem, "segment_memory": mem["memory"].clone(), "k_p": k_p, "v_p": v_p,
                     "k_h": empty, "v_h": empty, "k_x": empty, "v_x": empty, "pos": 0}
            if self.memory.use_conv:
                state["read_conv"] = self.memory.q_conv.init_state(B, device, self.persistent.dtype)
            return state
        src = P
        if Np > 0:
            m_p, mem = self.memory(P, mem, return_state=True)
            if cfg.variant == "mal":
                src = m_p
        k, v = self._kv(src, p_pos)
        return {"memory": mem, "k": k, "v": v, "pos": 0}

    # ------------------------------------------------------------------ forward / step
    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False):
        """x [B, T, D] -> o [B, T, D] (or (o, state) when return_state); ``state`` continues a sequence."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        if self.cfg.variant == "mac":
            outs = []
            t, T = 0, x.shape[1]
            while t < T:
                L = min(self.cfg.segment - state["k_x"].shape[2], T - t)
                o, state = self._mac_piece(x[:, t:t + L], state)
                outs.append(o)
                t += L
            o = torch.cat(outs, dim=1) if outs else x[:, :0]
        else:
            o, state = self._prefix_window(x, state)
        return (o, state) if return_state else o

    def step(self, x: torch.Tensor, state: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
        """One decoding step: x [B, D] -> (o [B, D], new state)."""
        o, state = self.forward(x.unsqueeze(1), state, return_state=True)
        return o.squeeze(1), state

    def _prefix_window(self, x: torch.Tensor, state: dict):
        """mal / mag on x [B, T, D] continuing ``state``."""
        cfg = self.cfg
        Np, w = cfg.persistent_tokens, cfg.attention.window
        T, pos = x.shape[1], int(state["pos"])
        m, mem = self._memory(x, state["memory"])
        z = m if cfg.variant == "mal" else x  # what the attention reads
        q_pos = torch.arange(Np + pos, Np + pos + T, device=x.device)
        q = self._rope(self._heads(self.attn.q_proj(z)), q_pos)
        k, v = self._kv(z, q_pos)
        k_all = torch.cat([state["k"].to(k.dtype), k], dim=2)  # [B, H, Np + cached + T, hd]
        v_all = torch.cat([state["v"].to(v.dtype), v], dim=2)
        Lx = k_all.shape[2] - Np  # x keys held: cached + new
        k_pos = torch.arange(Np + pos + T - Lx, Np + pos + T, device=x.device)
        rel = q_pos[:, None] - k_pos[None, :]  # [T, Lx]
        seen = rel >= 0
        if w is not None:
            seen = seen & (rel < w)
        mask = torch.cat([seen.new_ones(T, Np), seen], dim=1)  # persistent tokens always visible
        y = self._attend(q, k_all, v_all, mask)
        o = y if cfg.variant == "mal" else self._gate(y, m)
        if w is not None and Lx > w:
            keep = torch.cat([torch.arange(Np, device=x.device), torch.arange(Np + Lx - w, Np + Lx, device=x.device)])
            k_all, v_all = k_all[:, :, keep], v_all[:, :, keep]
        return o, {"memory": mem, "k": k_all, "v": v_all, "pos": pos + T}

    def _mac_piece(self, x: torch.Tensor, state: dict):
        """mac on x [B, L, D], L <= s - n tokens that stay inside the current segment."""
        cfg = self.cfg
        Np, s = cfg.persistent_tokens, cfg.segment
        B, L, _ = x.shape
        n = state["k_x"].shape[2]
        dev = x.device
        # 1. read the memory S of the segment start with the queries of x (the memory's query path on the x
        #    stream, no write) through its output path
        m_cfg = cfg.memory
        qm, read_conv = query(self.memory, m_cfg, x, state.get("read_conv"), step=False)  # [B, L, H, K]
        r = m_cfg.axes.structure.read(m_cfg, state["segment_memory"], qm, host=self.memory)  # [B, L, H, V]
        h = output(self.memory, m_cfg, r, x)  # [B, L, D]
        # 2. attention over [P ; h_1..h_{n+L} ; x_1..x_{n+L}] at slot positions
        j = torch.arange(n, n + L, device=dev)  # in-segment indices of the new tokens
        q = self._rope(self._heads(self.attn.q_proj(x)), Np + s + j)
        k_x, v_x = self._kv(x, Np + s + j)
        k_h, v_h = self._kv(h, Np + j)
        k_h = torch.cat([state["k_h"], k_h], dim=2)
        v_h = torch.cat([state["v_h"], v_h], dim=2)
        k_x = torch.cat([state["k_x"], k_x], dim=2)
        v_x = torch.cat([state["v_x"], v_x], dim=2)
        causal = torch.arange(n + L, device=dev)[None, :] <= j[:, None]  # [L, n+L]
        mask = torch.cat([causal.new_ones(L, Np), causal, causal], dim=1)
        y = self._attend(q, torch.cat([state["k_p"], k_h, k_x], dim=2),
                         torch.cat([state["v_p"], v_h, v_x], dim=2), mask)
        # 3. the memory writes y and is read after the write
        m, mem = self._memory(y, state["memory"])
        o = self._gate(y, m)
        new = dict(state, memory=mem, pos=int(state["pos"]) + L, k_h=k_h, v_h=v_h, k_x=k_x, v_x=v_x)
        if read_conv is not None:
            new["read_conv"] = read_conv
        if n + L == s:  # segment complete: its writes become the S of the next segment
            empty = k_x[:, :, :0]
            new.update(segment_memory=mem["memory"], k_h=empty, v_h=empty, k_x=empty, v_x=empty)
        return o, new

    def extra_repr(self) -> str:
        c = self.cfg
        return f"variant={c.variant}, segment={c.segment}, persistent_tokens={c.persistent_tokens}"
