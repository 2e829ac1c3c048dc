"""SwiGLU channel mixer: y = W2 (silu(W1 x) * W3 x), no biases.

Accounting: params = 3 * D * hidden, state = 0, flops_per_token = 3 linears = 6 * D * hidden
(the SiLU and the elementwise product are ignored).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from .axis import INIT_STD
from .config import Cost, SwiGLUConfig

__all__ = ["SwiGLU"]


class SwiGLU(nn.Module):
    def __init__(self, cfg: SwiGLUConfig):
        super().__init__()
        self.cfg = cfg
        self.w1 = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.hidden, cfg.d_model, bias=False)
        for lin in (self.w1, self.w3, self.w2):
            nn.init.normal_(lin.weight, 0.0, INIT_STD)

    @staticmethod
    def cost(cfg: SwiGLUConfig, seq_len: int) -> Cost:
        return Cost(params=3 * cfg.d_model * cfg.hidden, state=0, flops_per_token=float(6 * cfg.d_model * cfg.hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> [..., D] (position-wise, so it also serves decoding steps)."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
