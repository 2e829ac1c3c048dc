"""Attentional bias axis (``bias:``): the inner loss whose gradient step is the memory's write (Miras,
Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, Sec. 3). See blocks/axis.py for what a value owns.
r = M(k) - v is the memory's error on a key, psi = dl/dM(k) what the write back-propagates:

dot    -<M(k), v>, psi = -v (Hebbian):  S <- S + k v^T                       (linear attention, GLA, Mamba2)
l2     ||r||^2 / 2, psi = r (delta rule, one step of size b = sigmoid(W_b x)):
                                        S <- (I - b k k^T) S + b k v^T       (DeltaNet, Gated DeltaNet, TTT)
lp     ||r||_p^p with |r| = sqrt(r^2 + eps): psi = p r (r^2 + eps)^((p-2)/2)  (Moneta: p = 3; Miras Sec. 3.1,
       Eq. 10-11; the smooth |.| makes p < 2 differentiable at 0)
l1     lp with p = 1: psi = r / sqrt(r^2 + eps), a smooth sign                 (Miras Sec. 3.1)
huber  the Huber loss with threshold d, fixed or data-dependent d_t = softplus(W_d x + b_d) (Yaad; Miras
       Sec. 3.1, Eq. 13-16): huber_form yaad (psi = r inside ||r|| <= d, else d r/|r|_eps: the paper's mixture of
       l2 and l1, discontinuous at the threshold), coordinate (sum_j H_d(r_j): clamp(r, -d, d)) or norm
       (H_d(||r||): r min(1, d/||r||))
omega  the Omega rule (ATLAS, Behrouz et al. 2025, https://arxiv.org/abs/2505.23735, Sec. 3): the l2 loss summed
       over the last `omega_window` tokens with data-dependent weights gamma_i = sigmoid(W_g x_i + b_g)
       (or 1), every term's gradient at the memory of the mini-batch start

dot and l2 on a vector or matrix memory have exact online kernels; the others run on the mini-batch engine
(kernels/minibatch.py). Every bias but dot has a step size b_t = lr_max * sigmoid(W_b x_t) per head (the
update's learning rate theta_t).
"""
from __future__ import annotations

import math
from typing import Literal

from .axis import Axis, AxisValue, F, Option, linear, nn, torch


class Bias(AxisValue):
    """An attentional bias: its write, the step size it needs, and the kernel family of a flat memory."""

    kernel: str = ""  # op family of blocks/dispatch.py that computes a flat memory with this bias

    def step_size(self, host, cfg, x) -> dict:
        """Keyword inputs of the kernels from tokens x [..., D] (e.g. {"beta": [..., H]}), from ``add_params``."""
        return {}

    def write_flops(self, cfg) -> int:
        """FLOPs of one token's write into one head's memory (the transition included); exact kernels only."""
        raise NotImplementedError

    def transition_flops(self, cfg) -> int:
        """FLOPs of the state-dependent part of the transition alone (applied to every log-linear level)."""
        return 0


class Dot(Bias):
    """Hebbian write S += k v^T"""

    kernel = "gla"

    def step_size(self, host, cfg, x) -> dict:
        if cfg.lr_max == 1.0:
            return {}
        return {"beta": x.new_full((*x.shape[:-1], cfg.heads), cfg.lr_max)}  # a mini-batch memory's constant step

    def spec(self, cfg) -> dict:
        return {"loss": "dot"}

    def write_flops(self, cfg) -> int:
        return 2 * cfg.axes.structure.cells(cfg)


class L2(Bias):
    """delta rule S = (I - b k k^T) S + b k v^T, b = sigmoid(W_b x)"""

    kernel = "delta_rule"

    def add_params(self, host, cfg) -> None:
        if not cfg.axes.update.owns_step:
            host.b_proj = linear(cfg.d_model, cfg.heads)

    def linears(self, cfg) -> list:
        return [] if cfg.axes.update.owns_step else [(cfg.d_model, cfg.heads)]

    def step_size(self, host, cfg, x) -> dict:
        if cfg.axes.update.owns_step:
            return {}
        beta = torch.sigmoid(host.b_proj(x))
        return {"beta": beta if cfg.lr_max == 1.0 else cfg.lr_max * beta}

    def spec(self, cfg) -> dict:
        return {"loss": "l2"}

    def write_flops(self, cfg) -> int:
        return 4 * cfg.axes.structure.cells(cfg)  # S^T k, then the rank-one write

    def transition_flops(self, cfg) -> int:
        return 4 * cfg.key_dim * cfg.value_dim  # (I - b k k^T) S: k^T S and the rank-one update


ABS_EPS = Option("abs_eps", float, 1e-6, "eps of the smooth |r| = sqrt(r^2 + eps) in the lp / l1 / huber "
                 "gradients (Miras' smooth approximation; 0 = the exact, non-smooth form)", {"ge": 0})


class LP(L2):
    """l_p regression ||M(k) - v||_p^p, smooth |r| (Moneta)"""

    kernel = None
    online = False
    options = (Option("p", float, 3.0, "the p of the l_p attentional bias (Moneta: 3)", {"ge": 1, "le": 16}),
               ABS_EPS)

    def spec(self, cfg) -> dict:
        return {"loss": "lp", "p": float(cfg.p), "abs_eps": float(cfg.abs_eps)}


class L1(LP):
    """l_1 regression ||M(k) - v||_1, smooth |r| (lp with p = 1)"""

    options = (ABS_EPS,)

    def spec(self, cfg) -> dict:
        return {"loss": "lp", "p": 1.0, "abs_eps": float(cfg.abs_eps)}


class Huber(L2):
    """Huber regression with a fixed or data-dependent threshold (Yaad)"""

    kernel = None
    online = False
    options = (
        Option("huber_form", Literal["yaad", "coordinate", "norm"], "yaad",
               "yaad: l2 inside ||r|| <= d, d * l1 outside (Miras Eq. 16, Yaad); coordinate: per-entry Huber; "
               "norm: Huber of ||r||"),
        Option("huber_threshold", Literal["data", "fixed"], "data",
               "the threshold d: data-dependent softplus(W_d x + b_d) per head (Yaad) or the constant huber_delta"),
        Option("huber_delta", float, 1.0, "the fixed threshold, or the initial data-dependent one (b_d = "
               "softplus^-1 of it; archspace's choice, the paper gives none)", {"gt": 0}),
        ABS_EPS,
    )

    def add_params(self, host, cfg) -> None:
        super().add_params(host, cfg)
        if cfg.huber_threshold == "data":
            host.delta_proj = linear(cfg.d_model, cfg.heads, bias=True)
            nn.init.constant_(host.delta_proj.bias, math.log(math.expm1(cfg.huber_delta)))

    def linears(self, cfg) -> list:
        return super().linears(cfg) + ([(cfg.d_model, cfg.heads)] if cfg.huber_threshold == "data" else [])

    def extra_params(self, cfg) -> int:
        return cfg.heads if cfg.huber_threshold == "data" else 0

    def step_size(self, host, cfg, x) -> dict:
        if cfg.huber_threshold == "data":
            delta = F.softplus(host.delta_proj(x))
        else:
            delta = x.new_full((*x.shape[:-1], cfg.heads), cfg.huber_delta)
        return {**super().step_size(host, cfg, x), "delta": delta}

    def spec(self, cfg) -> dict:
        return {"loss": "huber", "huber_form": cfg.huber_form, "abs_eps": float(cfg.abs_eps)}


class Omega(L2):
    """the Omega rule: l2 over a sliding window of tokens with learned weights (ATLAS)"""

    kernel = None
    online = False
    options = (
        Option("omega_window", int, 4, "Omega rule: tokens c whose l2 losses each write sums (1 = l2; ATLAS Eq. 9)",
               {"ge": 1, "le": 256}),
        Option("omega_gamma", Literal["learned", "ones"], "learned",
               "Omega rule: the weight of each token in the window, sigmoid(W_g x + b_g) per head (b_g = 3, "
               "archspace's choice: weights near 1 at the start) or 1"),
    )

    def add_params(self, host, cfg) -> None:
        super().add_params(host, cfg)
        if cfg.omega_gamma == "learned":
            host.gamma_proj = linear(cfg.d_model, cfg.heads, bias=True)
            nn.init.constant_(host.gamma_proj.bias, 3.0)

    def linears(self, cfg) -> list:
        return super().linears(cfg) + ([(cfg.d_model, cfg.heads)] if cfg.omega_gamma == "learned" else [])

    def extra_params(self, cfg) -> int:
        return cfg.heads if cfg.omega_gamma == "learned" else 0

    def step_size(self, host, cfg, x) -> dict:
        out = super().step_size(host, cfg, x)
        if cfg.omega_gamma == "learned":
            out["gamma"] = torch.sigmoid(host.gamma_proj(x))
        return out

    def spec(self, cfg) -> dict:
        return {"loss": "l2", "window": cfg.omega_window}


BIAS = Axis("bias", "attentional bias", "dot", {
    "dot": Dot(),
    "l2": L2(),
    "l1": L1(),
    "lp": LP(),
    "huber": Huber(),
    "omega": Omega(),
})
