"""Gated short convolution token mixer: Zoology's BaseConv (Arora et al. 2023, "Zoology: Measuring and Improving
Recall in Efficient Language Models", https://arxiv.org/abs/2312.04927, Sec. 4 and its code
zoology/mixers/base_conv.py), with the short-kernel convolution of its ICLR baselines.

    y_t = conv_k(u)_t * (W u_t + b) + u_t        u, y [B, T, D]

conv_k is a depthwise causal convolution of kernel size k (``short_conv``) with a bias per channel (``conv_bias``)
and no activation, W a D x D projection with a bias. The inner residual ``+ u`` is Zoology's (the layer's own
residual comes on top). Zoology's BaseConv can also take an implicit long convolution (a filter over the whole
sequence); that form is not in this grammar: a conv mixer sees the last k tokens.

State: the last k-1 inputs [B, D, k-1] ("conv"). Accounting: params D*k (+ D bias) + D*D + D; state D*(k-1);
FLOPs per token 2*k*D (conv) + 2*D*D (projection); the product and residual are not counted.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .axis import linear
from .config import ConvConfig, Cost
from .short_conv import ShortConv

__all__ = ["ConvMixer"]


class ConvMixer(nn.Module):
    """(B, T, D) -> (B, T, D) gated short convolution (Zoology's BaseConv) built from a ``ConvConfig``."""

    def __init__(self, cfg: ConvConfig):
        super().__init__()
        self.cfg = cfg
        self.conv = ShortConv(cfg.d_model, cfg.short_conv, bias=cfg.conv_bias, activation=False)
        self.proj = linear(cfg.d_model, cfg.d_model, bias=True)

    @staticmethod
    def cost(cfg: ConvConfig, seq_len: int) -> Cost:
        D, k = cfg.d_model, cfg.short_conv
        return Cost(params=ShortConv.params(D, k, cfg.conv_bias) + D * D + D, state=ShortConv.state_size(D, k),
                    flops_per_token=float(2 * k * D + 2 * D * D))

    def init_state(self, batch_size: int, device=None) -> dict:
        device = device if device is not None else self.proj.weight.device
        return {"conv": self.conv.init_state(batch_size, device, self.proj.weight.dtype)}

    def forward(self, x: torch.Tensor, state: Optional[dict] = None, return_state: bool = False):
        """x [B, T, D] -> y [B, T, D] (or (y, state) when return_state); ``state`` continues a sequence."""
        u, conv = self.conv(x, None if state is None else state["conv"])
        y = u * self.proj(x) + x
        return (y, {"conv": conv}) if return_state else y

    def step(self, x: torch.Tensor, state: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
        """One decoding step: x [B, D] -> (y [B, D], new state)."""
        u, conv = self.conv.step(x, None if state is None else state["conv"])
        return u * self.proj(x) + x, {"conv": conv}

    def extra_repr(self) -> str:
        return f"d_model={self.cfg.d_model}, kernel_size={self.cfg.short_conv}, conv_bias={self.cfg.conv_bias}"
