"""Attentional bias axis (``bias:``): the inner loss whose one gradient step is the memory's write (Miras,
Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, Sec. 3). See blocks/axis.py for what a value owns.

dot  <S^T k, v> (Hebbian):    S <- S + k v^T                                    (linear attention, GLA, Mamba2)
l2   ||S^T k - v||^2 / 2 (delta rule, one step of size b = sigmoid(W_b x)):
                              S <- (I - b k k^T) S + b k v^T                    (DeltaNet, Gated DeltaNet)
"""
from __future__ import annotations

from .axis import Axis, AxisValue, linear, torch


class Bias(AxisValue):
    """An attentional bias: its write, the step size it needs, and the kernel family of a flat memory."""

    kernel: str = ""  # op family of blocks/dispatch.py that computes a flat memory with this bias

    def step_size(self, host, cfg, x) -> dict:
        """Keyword inputs of the kernels from tokens x [..., D] (e.g. {"beta": [..., H]}), from ``add_params``."""
        return {}

    def write_flops(self, cfg) -> int:
        """FLOPs of one token's write into one head's memory (the transition included)."""
        raise NotImplementedError

    def transition_flops(self, cfg) -> int:
        """FLOPs of the state-dependent part of the transition alone (applied to every log-linear level)."""
        return 0


class Dot(Bias):
    """Hebbian write S += k v^T"""

    kernel = "gla"

    def write_flops(self, cfg) -> int:
        return 2 * cfg.state_key_dim * cfg.state_value_dim


class L2(Bias):
    """delta rule S = (I - b k k^T) S + b k v^T, b = sigmoid(W_b x)"""

    kernel = "delta_rule"

    def add_params(self, host, cfg) -> None:
        host.b_proj = linear(cfg.d_model, cfg.heads)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads)]

    def step_size(self, host, cfg, x) -> dict:
        return {"beta": torch.sigmoid(host.b_proj(x))}

    def write_flops(self, cfg) -> int:
        return 4 * cfg.state_key_dim * cfg.state_value_dim  # S^T k, then the rank-one write

    def transition_flops(self, cfg) -> int:
        return 4 * cfg.state_key_dim * cfg.state_value_dim  # (I - b k k^T) S: k^T S and the rank-one update


BIAS = Axis("bias", "attentional bias", "dot", {
    "dot": Dot(),
    "l2": L2(),
})
