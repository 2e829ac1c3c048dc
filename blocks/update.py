"""Update algorithm axis (``update:``): how the inner loss is minimised at each token. See blocks/axis.py for
what a value owns. u_t is the gradient of the attentional bias (blocks/bias.py), theta_t its step size.

gd             one gradient step per token, W_t = a_t W_{t-1} - theta_t u_t, the step size from the attentional bias
               (delta rule: b) or 1 (Hebbian); ``token_scale`` adds TTT's in-mini-batch scale (Sun et al. 2024,
               https://arxiv.org/abs/2407.04620, code: learnable token idx): W_i = W_0 + c_i (W~_i - W_0),
               c_i = max(0, 1/i + delta_i), delta learned per position (zeros)
householder    n_householder delta-rule steps per token, each with its own key, value and step size (DeltaProduct,
               Siems et al. 2025, https://arxiv.org/abs/2502.10297): the token's transition is a product of n
               generalised Householder matrices, identity plus rank n; the decay (if any) acts once, before the
               first step. The write streams k, v and the step size are n times as wide.
momentum       Titans' surprise (Behrouz et al. 2024, https://arxiv.org/abs/2501.00663, Eq. 13-14):
               S_t = eta_t S_{t-1} - theta_t u_t, W_t = a_t W_{t-1} + S_t, eta_t = sigmoid(W_m x + b_m)
newton_schulz  Muon-style orthogonalised momentum (ATLAS, Behrouz et al. 2025, https://arxiv.org/abs/2505.23735,
               Sec. 4): S_t = eta_t S_{t-1} + u_t, W_t = a_t W_{t-1} - theta_t NS_k(S_t), NS_k Muon's quintic
               Newton-Schulz iteration (k = ``ns_steps``) on every weight matrix (biases: plain momentum)
implicit       Longhorn's closed-form implicit step (Liu et al. 2024, https://arxiv.org/abs/2407.14207): per
               value channel d the proximal step argmin_s ||s - s_{t-1}||^2 + eps_d (s^T k - v_d)^2, i.e. the
               delta rule with step Delta_d = eps_d / (1 + eps_d ||k||^2), eps = sigmoid(W_e x + b_e) per head
               and value channel; l2 bias, vector or matrix memory; stable for any key norm

gd, householder and implicit have exact online kernels; momentum and newton_schulz run on the mini-batch engine.
"""
from __future__ import annotations

import math

from .axis import Axis, AxisValue, F, Option, linear, nn, torch


class Update(AxisValue):
    """An update algorithm."""

    kernel = None  # an op family of blocks/dispatch.py that replaces the bias' (None: the bias decides)
    step_axis = False  # the write streams carry a step axis: k [..., n, H, K], v [..., n, H, V], beta [..., n, H]
    owns_step = False  # True: the update computes the step size (the bias adds no step-size projection)

    def steps(self, cfg) -> int:
        """Write steps per token: the write streams (k, v, step size) carry this many entries per token."""
        return 1

class GD(Update):
    """one gradient step per token"""

    options = (Option("token_scale", bool, False, "TTT's learned scale of the in-mini-batch gradient sum "
                      "(c_i = max(0, 1/i + delta_i)); mini-batch memories without retention decay", omit_default=True),)

    def is_online(self, memory: dict) -> bool:
        return not memory.get("token_scale", False)

    def check(self, cfg):
        if cfg.token_scale and cfg.chunk_size < 2:
            return "token_scale", "token_scale rescales the sum inside a mini-batch: it needs chunk_size >= 2"
        return None

    def add_params(self, host, cfg) -> None:
        if cfg.token_scale:
            host.token_offset = nn.Parameter(torch.zeros(cfg.chunk_size))

    def extra_params(self, cfg) -> int:
        return cfg.chunk_size if cfg.token_scale else 0

    def statics(self, host, cfg) -> dict:
        return {"token_offset": host.token_offset.expand(cfg.heads, cfg.chunk_size)} if cfg.token_scale else {}

    def spec(self, cfg) -> dict:
        return {"update": "gd", "token_scale": bool(cfg.token_scale)}


MOMENTUM_INIT = Option("momentum_init", float, 0.9, "the momentum eta = sigmoid(W_m x + b_m) at zero input (b_m = "
                       "logit of it; archspace's choice, the papers give none)", {"gt": 0, "lt": 1})


class Momentum(Update):
    """Titans' momentum (surprise): S = eta S - theta u, W = a W + S"""

    online = False
    options = (MOMENTUM_INIT,)

    def add_params(self, host, cfg) -> None:
        host.m_proj = linear(cfg.d_model, cfg.heads, bias=True)
        nn.init.constant_(host.m_proj.bias, math.log(cfg.momentum_init / (1.0 - cfg.momentum_init)))

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads)]

    def extra_params(self, cfg) -> int:
        return cfg.heads

    def gates(self, host, cfg, x) -> dict:
        return {"log_eta": F.logsigmoid(host.m_proj(x))}

    def spec(self, cfg) -> dict:
        return {"update": "momentum"}


class NewtonSchulz(Momentum):
    """Muon-style orthogonalised momentum: S = eta S + u, W = a W - theta NS(S) (ATLAS)"""

    options = (MOMENTUM_INIT, Option("ns_steps", int, 5, "Newton-Schulz iterations (Muon, ATLAS: 5)",
                                     {"ge": 1, "le": 20}))

    def spec(self, cfg) -> dict:
        return {"update": "newton_schulz", "ns_steps": cfg.ns_steps}


class Implicit(Update):
    """Longhorn's closed-form implicit step, Delta = eps / (1 + eps ||k||^2) per value channel"""

    kernel = "implicit"
    owns_step = True

    def add_params(self, host, cfg) -> None:
        # Longhorn: eps = sigmoid(W x + b) per channel, bias 0 at init (eps = 1/2)
        host.eps_proj = linear(cfg.d_model, cfg.heads * cfg.value_dim, bias=True)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads * cfg.value_dim)]

    def extra_params(self, cfg) -> int:
        return cfg.heads * cfg.value_dim

    def gates(self, host, cfg, x) -> dict:
        eps = torch.sigmoid(host.eps_proj(x))
        return {"eps": eps.view(*x.shape[:-1], cfg.heads, cfg.value_dim)}


class Householder(Update):
    """n_householder delta-rule steps per token with their own keys, values and step sizes (DeltaProduct)"""

    kernel = "delta_product"
    step_axis = True
    options = (
        Option("n_householder", int, 2, "delta-rule (Householder) steps per token, each with its own k, v and step "
               "size", {"ge": 1, "le": 16}),
    )

    def check(self, cfg):
        if cfg.n_householder < 1:
            return "n_householder", f"n_householder must be >= 1, got {cfg.n_householder}"
        return None

    def steps(self, cfg) -> int:
        return cfg.n_householder


UPDATE = Axis("update", "update algorithm", "gd", {
    "gd": GD(),
    "householder": Householder(),
    "momentum": Momentum(),
    "newton_schulz": NewtonSchulz(),
    "implicit": Implicit(),
})
