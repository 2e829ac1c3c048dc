"""Causal softmax attention with rotary position embeddings and an optional sliding window.

forward(x [B,T,D]) -> [B,T,D]: q, k, v = W_q x, W_k x, W_v x (no bias, H*head_dim each), RoPE
(Su et al. 2021, rotate-half layout, base cfg.rope_base) on q and k at their absolute positions,
softmax(q k^T / sqrt(head_dim) + mask) v via F.scaled_dot_product_attention, then W_o.
The mask is an explicit boolean: query at position t sees key positions s with t - w < s <= t
(the w most recent positions, itself included) when cfg.window = w, or s <= t when global.

Optional short convolution (cfg.short_conv = k > 0): a depthwise causal conv + SiLU on each of q, k, v
after the projections and before RoPE, as on the memory mixers' q, k, v; it gives attention the
previous-token mixing that memory mixers get from their conv.

State = KV cache dict {"k": [B,H,L,hd], "v": [B,H,L,hd], "pos": int (tokens seen)}; keys are
cached after RoPE. With a window w only the last w keys are kept. With a short conv the state also
holds "conv_q", "conv_k", "conv_v" [B, H*hd, k-1].

Accounting (``Attention.cost(cfg, seq_len)``):
    params = 4 * D * H * head_dim (+ 3 * H * hd * k for a short conv of size k);
    state  = 2 * H * head_dim * min(T, w or T) (the KV cache) (+ 3 * H * hd * (k-1) conv state);
    flops_per_token = 4 projections (2 * D * H * hd each) + scores and values
        2 * 2 * H * hd * avg_context with avg_context = mean_{t=1..T} min(t, w or t)
        (+ 2 * k * 3 * H * hd for the conv).
    RoPE, softmax and masking are ignored.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .axis import INIT_STD
from .config import AttentionConfig, Cost
from .short_conv import ShortConv

__all__ = ["Attention", "apply_rope", "rope_cos_sin", "average_context"]


def rope_cos_sin(positions: torch.Tensor, dim: int, base: float, dtype=torch.float32):
    """cos, sin of shape [T, dim] for integer positions [T] (rotate-half layout)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # [T, dim/2]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, dim] rotated by cos/sin [T, dim]."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


def average_context(seq_len: int, window: Optional[int]) -> float:
    """mean over t = 1..T of min(t, window) (window None = t)."""
    T = seq_len
    if T <= 0:
        return 0.0
    if window is None or window >= T:
        return (T + 1) / 2
    w = window
    return (w * (w + 1) / 2 + (T - w) * w) / T


class Attention(nn.Module):
    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        D, HD = cfg.d_model, cfg.heads * cfg.head_dim
        self.q_proj = nn.Linear(D, HD, bias=False)
        self.k_proj = nn.Linear(D, HD, bias=False)
        self.v_proj = nn.Linear(D, HD, bias=False)
        self.o_proj = nn.Linear(HD, D, bias=False)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            nn.init.normal_(lin.weight, 0.0, INIT_STD)
        self.use_conv = cfg.short_conv > 0
        if self.use_conv:
            self.q_conv = ShortConv(HD, cfg.short_conv)
            self.k_conv = ShortConv(HD, cfg.short_conv)
            self.v_conv = ShortConv(HD, cfg.short_conv)

    @staticmethod
    def cost(cfg: AttentionConfig, seq_len: int) -> Cost:
        D, H, hd = cfg.d_model, cfg.heads, cfg.head_dim
        ctx = seq_len if cfg.window is None else min(seq_len, cfg.window)
        params = 4 * D * H * hd
        state = 2 * H * hd * ctx
        flops = 4 * 2 * D * H * hd + 2 * 2 * H * hd * average_context(seq_len, cfg.window)
        if cfg.short_conv > 0:
            params += 3 * ShortConv.params(H * hd, cfg.short_conv)
            state += 3 * ShortConv.state_size(H * hd, cfg.short_conv)
            flops += 2 * cfg.short_conv * 3 * H * hd
        return Cost(params=params, state=state, flops_per_token=float(flops))

    def init_state(self, batch_size: int, device=None) -> dict:
        cfg = self.cfg
        device = device if device is not None else self.q_proj.weight.device
        dtype = self.q_proj.weight.dtype
        empty = torch.zeros(batch_size, cfg.heads, 0, cfg.head_dim, device=device, dtype=dtype)
        state = {"k": empty, "v": empty.clone(), "pos": 0}
        if self.use_conv:
            for name in ("q", "k", "v"):
                state[f"conv_{name}"] = getattr(self, f"{name}_conv").init_state(batch_size, device, dtype)
        return state

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B,T,H*hd] -> [B,H,T,hd]
        B, T, _ = t.shape
        return t.view(B, T, self.cfg.heads, self.cfg.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False):
        """x [B, T, D] -> y [B, T, D] (or (y, cache) when return_state); ``state`` = KV cache to extend."""
        cfg = self.cfg
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B, x.device)
        start = int(state["pos"])
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        convs = {}
        if self.use_conv:
            q, convs["conv_q"] = self.q_conv(q, state.get("conv_q"))
            k, convs["conv_k"] = self.k_conv(k, state.get("conv_k"))
            v, convs["conv_v"] = self.v_conv(v, state.get("conv_v"))
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        q_pos = torch.arange(start, start + T, device=x.device)
        cos, sin = rope_cos_sin(q_pos, cfg.head_dim, cfg.rope_base, dtype=q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_all = torch.cat([state["k"].to(k.dtype), k], dim=2)
        v_all = torch.cat([state["v"].to(v.dtype), v], dim=2)
        L = k_all.shape[2]
        k_pos = torch.arange(start + T - L, start + T, device=x.device)
        rel = q_pos[:, None] - k_pos[None, :]  # [T, L], distance back from the query
        mask = rel >= 0
        if cfg.window is not None:
            mask = mask & (rel < cfg.window)
        o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        y = self.o_proj(o.transpose(1, 2).reshape(B, T, cfg.heads * cfg.head_dim))
        if not return_state:
            return y
        if cfg.window is not None:
            k_all, v_all = k_all[:, :, -cfg.window:], v_all[:, :, -cfg.window:]
        return y, {"k": k_all, "v": v_all, "pos": start + T, **convs}

    def step(self, x: torch.Tensor, state: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
        """One decoding step: x [B, D] -> (y [B, D], new cache)."""
        y, state = self.forward(x.unsqueeze(1), state, return_state=True)
        return y.squeeze(1), state

    def extra_repr(self) -> str:
        c = self.cfg
        return f"heads={c.heads}, head_dim={c.head_dim}, window={c.window}, rope_base={c.rope_base}"
