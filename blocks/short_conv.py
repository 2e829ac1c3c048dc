"""Depthwise causal short convolution + SiLU (as used on q/k/v in Mamba2, GDN, ...).

Parallel form: y[t, c] = silu(b[c] + sum_{j=0}^{k-1} w[c, j] * x[t - (k-1) + j, c]) with x[<0] taken from
the state (zeros for a fresh sequence). The recurrent state is the last k-1 inputs, [B, C, k-1].
Parameters: C * k, plus C with a bias (Mamba2's conv1d has one; FLA's ShortConvolution, DeltaNet's and Gated
DeltaNet's, does not). The SiLU is always on: it is DeltaNet's and Gated DeltaNet's q/k/v activation and
Mamba2's x/B/C activation. Zoology's BaseConv (blocks/conv.py) convolves without it (``activation=False``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ShortConv"]


class ShortConv(nn.Module):
    def __init__(self, channels: int, kernel_size: int, bias: bool = False, activation: bool = True):
        super().__init__()
        self.activation = activation
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default for a depthwise kernel: U(-1/sqrt(k), 1/sqrt(k)), for the bias too (fan-in k).
        bound = 1.0 / math.sqrt(self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @staticmethod
    def params(channels: int, kernel_size: int, bias: bool = False) -> int:
        return channels * kernel_size + (channels if bias else 0)

    @staticmethod
    def state_size(channels: int, kernel_size: int) -> int:
        return channels * (kernel_size - 1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        dtype = dtype or self.weight.dtype
        return torch.zeros(batch_size, self.channels, self.kernel_size - 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], state [B, C, k-1] or None -> (y [B, T, C], new state [B, C, k-1])."""
        B, T, C = x.shape
        xt = x.transpose(1, 2)  # [B, C, T]
        if state is None:
            state = xt.new_zeros(B, C, self.kernel_size - 1)
        xp = torch.cat([state.to(xt.dtype), xt], dim=-1)  # [B, C, k-1+T]
        bias = None if self.bias is None else self.bias.to(xt.dtype)
        y = F.conv1d(xp, self.weight.to(xt.dtype), bias, groups=C)  # [B, C, T]
        new_state = xp[..., xp.shape[-1] - (self.kernel_size - 1):]
        return (F.silu(y) if self.activation else y).transpose(1, 2), new_state

    def step(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C], state [B, C, k-1] or None -> (y [B, C], new state)."""
        if state is None:
            state = x.new_zeros(x.shape[0], self.channels, self.kernel_size - 1)
        window = torch.cat([state.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # [B, C, k]
        y = (window * self.weight[:, 0, :].to(x.dtype)).sum(-1)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return (F.silu(y) if self.activation else y), window[..., 1:]
