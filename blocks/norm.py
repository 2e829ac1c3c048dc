"""Normalisation layers.

RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (fp64 for fp64
inputs) and cast back to the input dtype. ``group_rms_norm`` normalises each head's slice independently
(used on the read-out of the matrix memory, shape [..., H, V]). ``GroupLayerNorm`` is a LayerNorm per head
(mean and variance of each head's slice, a gain and a bias per channel): torch's GroupNorm with one group per
head, as RWKV-7 normalises its read-out.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm", "GroupRMSNorm", "GroupLayerNorm", "GROUPNORM_EPS", "rms_norm", "group_rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """RMS-normalise over the last dimension; ``weight`` broadcasts against it (or None)."""
    dt = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dt)
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(dt)
    return y.to(x.dtype)


def group_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """Per-head RMSNorm.

    x: [..., H, V]; each head's V values are normalised on their own.
    weight: None, [V] (shared by the heads) or [H, V] / [H*V] (one gain per channel).
    """
    if weight is not None and weight.dim() == 1 and weight.numel() == x.shape[-2] * x.shape[-1]:
        weight = weight.view(x.shape[-2], x.shape[-1])
    return rms_norm(x, weight, eps)


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned gain (``dim`` parameters)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class GroupRMSNorm(nn.Module):
    """Per-head RMSNorm on [..., H, V] with one gain per channel (``heads * dim`` parameters)."""

    def __init__(self, heads: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.heads, self.dim, self.eps = heads, dim, eps
        self.weight = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, dim={self.dim}, eps={self.eps}"


GROUPNORM_EPS = 64e-5  # RWKV-7's GroupNorm epsilon (RWKV-LM x070: 1e-5 * head_size_divisor^2 = 64e-5)


class GroupLayerNorm(nn.Module):
    """LayerNorm per head on [..., H, V] with a gain and a bias per channel (``2 * heads * dim`` parameters), in
    fp32: nn.GroupNorm(H, H*V) applied to the heads of one token."""

    def __init__(self, heads: int, dim: int, eps: float = 1e-5):
        super().__init__()
        self.heads, self.dim, self.eps = heads, dim, eps
        self.weight = nn.Parameter(torch.ones(heads, dim))
        self.bias = nn.Parameter(torch.zeros(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = torch.nn.functional.layer_norm(xf, (self.dim,), eps=self.eps)
        return (y * self.weight.float() + self.bias.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, dim={self.dim}, eps={self.eps}"
