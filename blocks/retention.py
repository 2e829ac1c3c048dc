"""Retention gate axis (``retention:``): how the memory forgets. See blocks/axis.py for what a value owns.

A gate is a log-decay g <= 0 that multiplies the state by exp(g) at every write (the kernels take it as
``g=``): one number per head ([..., H], "scalar") or one per key channel ([..., H, K], "vector").

    none      no decay                                              (linear attention, DeltaNet)
    constant  g_h = log(1 - 2^(-5-h)), fixed per head              (RetNet)
    scalar    g = -exp(A_log) * softplus(W_dt x + dt_bias)         (Mamba2 / SSD)
    vector    g = logsigmoid(W_up W_down x + b) / temperature      (GLA, low-rank gate)
    forget    g = logsigmoid(W_f x + b_f)                          (FoX's data-dependent forget gate)

The Miras retentions (Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, Sec. 4): each has Titans' data-
dependent forgetting a_t = 1 - alpha_t, alpha_t = sigmoid(W_a x + b_a) per head (b_a from ``decay_init``; the
papers give no initial value), and the ones without an identity map keep the memory's weights as
W = Phi(A) of a state A that follows the linear recurrence A_t = a_t A_{t-1} - theta_t grad (the FTRL /
mirror-descent form of their learning-retaining objective), so they run on the mini-batch engine:

    weight_decay  W_t = (1 - alpha_t) W_{t-1} + ...: l2 weight decay, the global term of Titans' retention
                  (Eq. 13; the local, proximal term is the step size theta_t)
    lq            W = A / ||A||_q^(q-2) per weight tensor, q = ``q`` (Moneta, Miras Sec. 5.3, Eq. 24)
    kl            W = c softmax(A) over each weight's input axis, c = ``kl_scale``: the memory as a distribution,
                  the KL-regularised step is linear in the logits A (Memora, Miras Eq. 21 and 27)
    elastic_net   W = sign(A) max(|A| - lam, 0), lam = softplus(.) learned per head from ``shrink_init``
                  (l2 + l1 retention, FTRL form of Miras Eq. 22-23)
"""
from __future__ import annotations

import math
from typing import Optional

from .axis import Axis, AxisValue, F, Option, linear, nn, torch


class Retention(AxisValue):
    """A retention gate: its parameters and the log-decay it gives each token."""

    gate: Optional[str] = None  # what the kernels receive: None, "scalar" [..., H] or "vector" [..., H, K]
    phi: str = "identity"  # the map W = Phi(A) of the mini-batch engine (identity: the exact kernels can run)

    def log_decay(self, host, cfg, x):
        """Log-decay g of tokens x [..., D] (None, [..., H] or [..., H, K]) from the parameters on ``host``."""
        return None

    def decay_flops(self, cfg) -> int:
        """FLOPs of decaying one head's memory for one token (exact kernels)."""
        return 0 if self.gate is None else cfg.axes.structure.cells(cfg)


class NoRetention(Retention):
    """no decay"""


def retnet_log_decay(heads: int):
    """log gamma_h with gamma_h = 1 - 2**(-5-h), h = 0..H-1 (Sun et al. 2023)."""
    h = torch.arange(heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h)).float()


class Constant(Retention):
    """RetNet's fixed decay 1 - 2^(-5-h) per head (Sun et al. 2023, https://arxiv.org/abs/2307.08621)"""

    gate = "scalar"

    def add_params(self, host, cfg) -> None:
        self.add_buffers(host, cfg)

    def add_buffers(self, host, cfg, device=None) -> None:
        # a fixed, non-persistent buffer: not trained, not in the weights file
        log_gamma = retnet_log_decay(cfg.heads)
        host.register_buffer("log_gamma", log_gamma if device is None else log_gamma.to(device), persistent=False)

    def log_decay(self, host, cfg, x):
        return host.log_gamma.to(x.dtype).expand(*x.shape[:-1], cfg.heads)


class Scalar(Retention):
    """Mamba2's data-dependent scalar decay per head (Dao & Gu 2024, https://arxiv.org/abs/2405.21060)"""

    gate = "scalar"

    def add_params(self, host, cfg) -> None:
        D, H = cfg.d_model, cfg.heads
        # Mamba2: A = -exp(A_log), A ~ U(1, 16); softplus(dt_bias) ~ logU(1e-3, 1e-1).
        host.dt_proj = linear(D, H)
        host.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        dt_min, dt_max = 1e-3, 1e-1
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        host.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads)]

    def extra_params(self, cfg) -> int:
        return 2 * cfg.heads  # A_log, dt_bias

    def log_decay(self, host, cfg, x):
        return -torch.exp(host.A_log) * F.softplus(host.dt_proj(x) + host.dt_bias)


class Vector(Retention):
    """GLA's data-dependent decay per key channel (Yang et al. 2023, https://arxiv.org/abs/2312.06635)"""

    gate = "vector"
    options = (
        Option("gate_rank", int, 16, "rank of the vector (GLA) gate projection", {"ge": 1, "le": 1024}, always=True),
        Option("gate_temperature", float, 16.0, "GLA gate: log a = logsigmoid(.) / temperature", {"gt": 0},
               always=True),
    )

    def check(self, cfg):
        if cfg.gate_rank < 1:
            return "gate_rank", "gate_rank must be >= 1 for vector retention"
        return None

    def add_params(self, host, cfg) -> None:
        # low-rank gate W_up W_down x + b
        host.gk_down = linear(cfg.d_model, cfg.gate_rank)
        host.gk_up = linear(cfg.gate_rank, cfg.heads * cfg.key_dim, bias=True)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.gate_rank), (cfg.gate_rank, cfg.heads * cfg.key_dim)]

    def extra_params(self, cfg) -> int:
        return cfg.heads * cfg.key_dim  # gk_up's bias

    def log_decay(self, host, cfg, x):
        g = F.logsigmoid(host.gk_up(host.gk_down(x)))
        return g.view(*x.shape[:-1], cfg.heads, cfg.key_dim) / cfg.gate_temperature


class Forget(Retention):
    """FoX's data-dependent forget gate per head, a = sigmoid(W_f x + b_f) (Lin et al. 2025, arXiv:2503.02130)"""

    gate = "scalar"

    def add_params(self, host, cfg) -> None:
        # The Forgetting Transformer initialises its data-dependent gate like every projection (weights
        # N(0, 0.02^2), bias 0), so each head starts at a = 1/2; its decay-time bias initialisation is for its
        # data-independent gates.
        host.f_proj = linear(cfg.d_model, cfg.heads, bias=True)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads)]

    def extra_params(self, cfg) -> int:
        return cfg.heads  # f_proj's bias

    def log_decay(self, host, cfg, x):
        return F.logsigmoid(host.f_proj(x))


class WeightDecay(Retention):
    """Titans' data-dependent weight decay, W_t = (1 - alpha_t) W_{t-1} + ..., alpha_t = sigmoid(W_a x + b_a)"""

    gate = "scalar"
    options = (Option("decay_init", float, 0.01, "the forgetting alpha = sigmoid(W_a x + b_a) at zero input "
                      "(b_a = logit of it; archspace's choice, the papers give none)", {"gt": 0, "lt": 1}),)

    def add_params(self, host, cfg) -> None:
        host.a_proj = linear(cfg.d_model, cfg.heads, bias=True)
        nn.init.constant_(host.a_proj.bias, math.log(cfg.decay_init / (1.0 - cfg.decay_init)))

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads)]

    def extra_params(self, cfg) -> int:
        return cfg.heads  # a_proj's bias

    def log_decay(self, host, cfg, x):
        return -F.softplus(host.a_proj(x))  # log(1 - sigmoid(z))

    def spec(self, cfg) -> dict:
        return {"phi": self.phi}


class LQ(WeightDecay):
    """Moneta's l_q retention: W = A / ||A||_q^(q-2) per weight tensor, with weight decay on A"""

    online = False
    phi = "lq"
    options = WeightDecay.options + (
        Option("q", float, 4.0, "the q of the l_q retention (Moneta: 4; q = 2 is plain weight decay)", {"ge": 1, "le": 16}),)

    def spec(self, cfg) -> dict:
        return {"phi": "lq", "q": float(cfg.q)}


class KL(WeightDecay):
    """Memora's KL retention: W = c softmax(A) over each weight's input axis, with decay on the logits A"""

    online = False
    phi = "kl"
    options = WeightDecay.options + (
        Option("kl_scale", float, 1.0, "c: every input slice of a weight sums to c (Memora)", {"gt": 0}),)

    def spec(self, cfg) -> dict:
        return {"phi": "kl", "kl_scale": float(cfg.kl_scale)}


class ElasticNet(WeightDecay):
    """elastic-net retention: W = soft-threshold(A, lam) with weight decay on A (FTRL form)"""

    online = False
    phi = "shrink"
    options = WeightDecay.options + (
        Option("shrink_init", float, 1e-3, "the l1 threshold lam = softplus(raw) learned per head, at init "
               "(archspace's choice)", {"gt": 0}),)

    def add_params(self, host, cfg) -> None:
        super().add_params(host, cfg)
        host.shrink_raw = nn.Parameter(torch.full((cfg.heads,), math.log(math.expm1(cfg.shrink_init))))

    def extra_params(self, cfg) -> int:
        return 2 * cfg.heads

    def statics(self, host, cfg) -> dict:
        return {"shrink": F.softplus(host.shrink_raw)}


RETENTION = Axis("retention", "retention gate", "none", {
    "none": NoRetention(),
    "constant": Constant(),
    "scalar": Scalar(),
    "vector": Vector(),
    "forget": Forget(),
    "weight_decay": WeightDecay(),
    "lq": LQ(),
    "kl": KL(),
    "elastic_net": ElasticNet(),
})
