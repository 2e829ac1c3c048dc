"""Retention gate axis (``retention:``): how the memory forgets. See blocks/axis.py for what a value owns.

A gate is a log-decay g <= 0 that multiplies the state by exp(g) at every write (the kernels take it as
``g=``): one number per head ([..., H], "scalar") or one per key channel ([..., H, K], "vector").

    none      no decay                                              (linear attention, DeltaNet)
    constant  g_h = log(1 - 2^(-5-h)), fixed per head              (RetNet)
    scalar    g = -exp(A_log) * softplus(W_dt x + dt_bias)         (Mamba2 / SSD)
    vector    g = logsigmoid(W_up W_down x + b) / temperature      (GLA, low-rank gate)
    forget    g = logsigmoid(W_f x + b_f)                          (FoX's data-dependent forget gate)
    kda       g = -exp(A_log) * softplus(W_up W_down x + dt_bias)  (KDA: Mamba2's gate per key channel)
    hgrn2     g = log(l + (1 - l) sigmoid(W_f x)), key k = 1 - exp(g)   (HGRN2: lower bound l, key tied to the gate)
    rwkv7     g = -exp(-1/2) sigmoid(w0 + tanh(x W_1) W_2)         (RWKV-7: w in (0.545, 1) per key channel)

How fast a gate forgets at the start of training is set by its initialisation, and that is a design choice
with measurable effects (a gate that keeps under 10% of a write after 16 tokens cannot recall a key 60
tokens back until training slows it), so each data-dependent gate's initialisation is an option of its value,
in the resolved config and the design hash, defaulting to its paper's code:

    scalar    A_init_min, A_init_max    A ~ U(min, max) per head (Mamba2 [1, 16]; Gated DeltaNet [0, 16])
              dt_init_min, dt_init_max  softplus(dt_bias) ~ logU(min, max) per head (both [1e-3, 1e-1])
              dt_init_floor             ... clamped below at the floor (1e-4)
    vector    gate_bias_init            b (GLA: 0), with gate_rank and gate_temperature
    forget    forget_bias_init          b_f (FoX: 0, every head starts at a = 1/2)

``initial_decay(host, cfg)`` gives the per-token decay each head (or channel) starts from, at W x = 0.

Negative eigenvalues (``decay_range: [-1, 1]``, scalar, vector and forget): the decay a in (0, 1) above becomes
a' = 2a - 1 in (-1, 1), so the transition Diag(a') of a Hebbian write (and a' (I - b k k^T) of the delta rule) can
flip the sign of what it keeps, as Grazzi et al. 2024 (https://arxiv.org/abs/2411.12537, Sec. 4) extend Mamba's
[0, 1] range to [-1, 1]; the kernels, written for log-decays, receive g = log|a'| and the sign of a' per token
(``signed_log_decay``; blocks/dispatch.py runs them on sign-flipped inputs, ``signed_forward``).

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
from typing import Literal, Optional

from .axis import Axis, AxisValue, F, Option, linear, nn, torch


DEFAULT_DECAY_RANGE = (0.0, 1.0)
DECAY_RANGE = Option(
    "decay_range", list[float], DEFAULT_DECAY_RANGE,
    "[0, 1] or [-1, 1]: the decay a of this gate, or a' = 2a - 1 (negative eigenvalues, Grazzi et al. 2024, "
    "https://arxiv.org/abs/2411.12537: Mamba's diagonal transition extended to [-1, 1])", omit_default=True)


def _decay_range(cfg) -> tuple:
    return tuple(float(x) for x in cfg.decay_range)


def decay_range_problem(cfg):
    """(key, reason) for a decay_range other than [0, 1] and [-1, 1], else None."""
    if _decay_range(cfg) not in (DEFAULT_DECAY_RANGE, (-1.0, 1.0)):
        return "decay_range", f"decay_range must be [0, 1] or [-1, 1] (a' = 2a - 1), got {list(cfg.decay_range)}"
    return None


def signed_decay(cfg) -> bool:
    return _decay_range(cfg) == (-1.0, 1.0)


def signed_log_decay(g):
    """g = log a (a in (0, 1]) -> (log|a'|, sign(a')) for a' = 2a - 1 = 1 + 2 expm1(g): log1p where a' > 0 (exact
    near a' = 1, the long memories), log(-a') where a' < 0; |a'| under 1e-30 is held at 1e-30 (a' = 0 exactly,
    a = 1/2, would make the kernels' log-decays -inf); sign(0) = +1. Both branches see clamped inputs, so the one
    not taken never puts a NaN into the gradient."""
    u = 2.0 * torch.expm1(g)  # a' - 1, in (-2, 0]
    tiny = 1e-30
    a = 1.0 + u
    pos, big = a >= 0, a.abs() > tiny
    log_abs = torch.where(pos, torch.log1p(torch.where(pos & big, u, torch.zeros_like(u))),
                          torch.log(torch.where(~pos & big, -a, torch.ones_like(a))))
    log_abs = torch.where(big, log_abs, torch.full_like(u, math.log(tiny)))
    return log_abs, torch.where(pos, torch.ones_like(u), -torch.ones_like(u)).detach()


class Retention(AxisValue):
    """A retention gate: its parameters and the log-decay it gives each token."""

    gate: Optional[str] = None  # what the kernels receive: None, "scalar" [..., H] or "vector" [..., H, K]
    ties_key = False  # the write's key is 1 - exp(g), not a projection (HGRN2): the mixer has no W_k
    kernel: Optional[str] = None  # an op family of blocks/dispatch.py that replaces the bias' (None: the bias decides)
    phi: str = "identity"  # the map W = Phi(A) of the mini-batch engine (identity: the exact kernels can run)

    def log_decay(self, host, cfg, x):
        """Log-decay g of tokens x [..., D] (None, [..., H] or [..., H, K]) from the parameters on ``host``."""
        return None

    def decay_flops(self, cfg) -> int:
        """FLOPs of decaying one head's memory for one token (exact kernels)."""
        return 0 if self.gate is None else cfg.axes.structure.cells(cfg)

    def write_scale(self, host, cfg, x):
        """A per-head factor [..., H] on the write of tokens x [..., D] (None: none)."""
        return None

    def initial_decay(self, host, cfg):
        """The decay per token a head (or channel) starts from, at W x = 0: [H] or [H, K] (None: no decay)."""
        return None


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

    def initial_decay(self, host, cfg):
        return host.log_gamma.exp()


def _mamba_dt_bias(n: int):
    """Mamba2's dt_bias init: softplus(dt_bias) = dt ~ logU(1e-3, 1e-1), clamped >= 1e-4 (inverse softplus)."""
    dt_min, dt_max = 1e-3, 1e-1
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


class Scalar(Retention):
    """Mamba2's data-dependent scalar decay per head (Dao & Gu 2024, https://arxiv.org/abs/2405.21060)"""

    gate = "scalar"
    options = (
        Option("A_init_min", float, 1.0, "scalar gate init: A ~ U(A_init_min, A_init_max) per head, "
               "g = -A softplus(W_dt x + dt_bias) (Mamba2 1; Gated DeltaNet 0)", {"ge": 0}, hash_default=False),
        Option("A_init_max", float, 16.0, "scalar gate init: upper end of A's range (Mamba2, Gated DeltaNet 16)",
               {"gt": 0}, hash_default=False),
        Option("dt_init_min", float, 1e-3, "scalar gate init: softplus(dt_bias) ~ logU(dt_init_min, dt_init_max) "
               "per head (Mamba2, Gated DeltaNet 1e-3)", {"gt": 0}, hash_default=False),
        Option("dt_init_max", float, 1e-1, "scalar gate init: upper end of the dt range (Mamba2, Gated DeltaNet "
               "1e-1)", {"gt": 0}, hash_default=False),
        Option("dt_init_floor", float, 1e-4, "scalar gate init: the drawn dt is clamped below at this floor",
               {"ge": 0}, hash_default=False),
        Option("write_scale", Literal["none", "dt"], "none", "dt: the write is dt k v^T, Mamba2's discretisation "
               "of its input (B x dt); none: k v^T (the dot bias only)", hash_default=False),
        DECAY_RANGE,
    )

    def check(self, cfg):
        if problem := decay_range_problem(cfg):
            return problem
        if cfg.A_init_min > cfg.A_init_max:
            return "A_init_min", f"A_init_min {cfg.A_init_min} exceeds A_init_max {cfg.A_init_max}"
        if cfg.dt_init_min > cfg.dt_init_max:
            return "dt_init_min", f"dt_init_min {cfg.dt_init_min} exceeds dt_init_max {cfg.dt_init_max}"
        if cfg.write_scale == "dt" and cfg.bias != "dot":
            return "write_scale", (f"write_scale 'dt' scales a Hebbian write (bias: dot); the {cfg.bias} bias "
                                   "sets its own step size")
        return None

    def add_params(self, host, cfg) -> None:
        D, H = cfg.d_model, cfg.heads
        # Mamba2 (mamba_ssm/modules/mamba2.py): A = -exp(A_log), A ~ U(A_init_min, A_init_max);
        # softplus(dt_bias) ~ logU(dt_init_min, dt_init_max), clamped at dt_init_floor.
        host.dt_proj = linear(D, H)
        host.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(cfg.A_init_min, cfg.A_init_max)))
        dt_min, dt_max = cfg.dt_init_min, cfg.dt_init_max
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        host.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads)]

    def extra_params(self, cfg) -> int:
        return 2 * cfg.heads  # A_log, dt_bias

    def log_decay(self, host, cfg, x):
        return -torch.exp(host.A_log) * F.softplus(host.dt_proj(x) + host.dt_bias)

    def write_scale(self, host, cfg, x):
        return F.softplus(host.dt_proj(x) + host.dt_bias) if cfg.write_scale == "dt" else None

    def initial_decay(self, host, cfg):
        return torch.exp(-torch.exp(host.A_log) * F.softplus(host.dt_bias))


class Vector(Retention):
    """GLA's data-dependent decay per key channel (Yang et al. 2023, https://arxiv.org/abs/2312.06635)"""

    gate = "vector"
    options = (
        Option("gate_rank", int, 16, "rank of the low-rank vector gate projection (GLA; also KDA's and RWKV-7's "
               "decay)", {"ge": 1, "le": 1024}, always=True),
        Option("gate_temperature", float, 16.0, "GLA gate: log a = logsigmoid(.) / temperature", {"gt": 0},
               always=True),
        Option("gate_bias_init", float, 0.0, "GLA gate init: the bias b of logsigmoid(W_up W_down x + b) (GLA 0: "
               "every channel starts at a = 2^(-1/temperature))", hash_default=False),
        DECAY_RANGE,
    )

    def check(self, cfg):
        if problem := decay_range_problem(cfg):
            return problem
        if cfg.gate_rank < 1:
            return "gate_rank", "gate_rank must be >= 1 for vector retention"
        return None

    def add_params(self, host, cfg) -> None:
        # low-rank gate W_up W_down x + b
        # (one decay per channel of the memory's keys, after the feature map)
        host.gk_down = linear(cfg.d_model, cfg.gate_rank)
        host.gk_up = linear(cfg.gate_rank, cfg.heads * cfg.state_key_dim, bias=True)
        if cfg.gate_bias_init:
            nn.init.constant_(host.gk_up.bias, cfg.gate_bias_init)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.gate_rank), (cfg.gate_rank, cfg.heads * cfg.state_key_dim)]

    def extra_params(self, cfg) -> int:
        return cfg.heads * cfg.state_key_dim  # gk_up's bias

    def log_decay(self, host, cfg, x):
        g = F.logsigmoid(host.gk_up(host.gk_down(x)))
        return g.view(*x.shape[:-1], cfg.heads, cfg.state_key_dim) / cfg.gate_temperature

    def initial_decay(self, host, cfg):
        return torch.exp(F.logsigmoid(host.gk_up.bias) / cfg.gate_temperature).view(cfg.heads, cfg.state_key_dim)


class Forget(Retention):
    """FoX's data-dependent forget gate per head, a = sigmoid(W_f x + b_f) (Lin et al. 2025, arXiv:2503.02130)"""

    gate = "scalar"
    options = (
        Option("forget_bias_init", float, 0.0, "forget gate init: the bias b_f of sigmoid(W_f x + b_f) (FoX 0: every "
               "head starts at a = 1/2)", hash_default=False),
        DECAY_RANGE,
    )

    def check(self, cfg):
        return decay_range_problem(cfg)

    def add_params(self, host, cfg) -> None:
        # The Forgetting Transformer initialises its data-dependent gate like every projection (weights
        # N(0, 0.02^2), bias 0), so each head starts at a = 1/2; its decay-time bias initialisation is for its
        # data-independent gates.
        host.f_proj = linear(cfg.d_model, cfg.heads, bias=True)
        if cfg.forget_bias_init:
            nn.init.constant_(host.f_proj.bias, cfg.forget_bias_init)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads)]

    def extra_params(self, cfg) -> int:
        return cfg.heads  # f_proj's bias

    def log_decay(self, host, cfg, x):
        return F.logsigmoid(host.f_proj(x))

    def initial_decay(self, host, cfg):
        return torch.sigmoid(host.f_proj.bias)


class KDA(Retention):
    """Kimi Delta Attention's decay per key channel -exp(A_log) softplus(W_up W_down x + dt_bias) (Kimi Linear,
    Moonshot AI 2025, https://arxiv.org/abs/2510.26692)"""

    gate = "vector"

    def add_params(self, host, cfg) -> None:
        # fla's KDA layer (layers/kda.py): a low-rank projection (rank gate_rank; fla: the head's value dim) to one
        # pre-activation per (head, key channel); A_log per head ~ log U(1, 16) and dt_bias per (head, key channel)
        # initialised as Mamba2's (softplus(dt_bias) ~ logU(1e-3, 1e-1))
        H, HK = cfg.heads, cfg.heads * cfg.state_key_dim
        host.f_down = linear(cfg.d_model, cfg.gate_rank)
        host.f_up = linear(cfg.gate_rank, HK)
        host.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1.0, 16.0)))
        host.dt_bias = nn.Parameter(_mamba_dt_bias(HK))

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.gate_rank), (cfg.gate_rank, cfg.heads * cfg.state_key_dim)]

    def extra_params(self, cfg) -> int:
        return cfg.heads + cfg.heads * cfg.state_key_dim  # A_log, dt_bias

    def log_decay(self, host, cfg, x):
        H, K = cfg.heads, cfg.state_key_dim
        f = host.f_up(host.f_down(x)).view(*x.shape[:-1], H, K)
        return -torch.exp(host.A_log)[:, None] * F.softplus(f + host.dt_bias.view(H, K))


class HGRN2(Retention):
    """HGRN2's forget gate per key channel f = l + (1 - l) sigmoid(W_f x) with the key tied to it, k = 1 - f (Qin
    et al. 2024, https://arxiv.org/abs/2404.07904)"""

    gate = "vector"
    ties_key = True
    kernel = "hgrn2"  # GLA's maths, its intra-chunk scores block-factored for HGRN2's strong gates
    options = (
        Option("lower_bound", float, 0.0, "the forget gate's lower bound l: f in (l, 1), one fixed value for this "
               "mixer (0: none); see learned_lower_bounds for HGRN's bounds rising with depth", {"ge": 0.0, "le": 1.0}),
        Option("learned_lower_bounds", bool, False,
               "HGRN's lower bounds, learned and shared across layers (HGRN2 Sec. 3, from HGRN: the bound rises "
               "with depth): the model holds G [n_layers, H*K] (zeros at init, so the bounds start evenly spaced: "
               "i / n_layers) and layer i's bound is l_i = cumsum(softmax(G, 0))_i - softmax(G, 0)_0, 0 at layer "
               "0; a mixer built alone (no model) has none. Replaces lower_bound", omit_default=True),
    )

    def check(self, cfg):
        if not 0.0 <= cfg.lower_bound < 1.0:
            return "lower_bound", f"lower_bound must be in [0, 1) (f in (l, 1)), got {cfg.lower_bound}"
        if cfg.learned_lower_bounds and cfg.lower_bound != 0.0:
            return "lower_bound", (f"lower_bound {cfg.lower_bound} is a fixed bound, and learned_lower_bounds: true "
                                   "(the hgrn2 preset's) learns one per layer instead: for a fixed bound add "
                                   "learned_lower_bounds: false")
        return None

    def add_params(self, host, cfg) -> None:
        host.f_proj = linear(cfg.d_model, cfg.heads * cfg.state_key_dim)  # no bias (fla's HGRN2)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads * cfg.state_key_dim)]

    def log_decay(self, host, cfg, x, lower_bound=None):
        """``lower_bound`` [H*K] in (0, 1): this layer's learned bound (learned_lower_bounds; the model passes it
        to every layer but the first), used instead of cfg.lower_bound."""
        g = F.logsigmoid(host.f_proj(x)).view(*x.shape[:-1], cfg.heads, cfg.state_key_dim)
        if lower_bound is not None:
            lb = lower_bound.view(cfg.heads, cfg.state_key_dim).to(g.dtype)
            return torch.logaddexp(torch.log(lb), torch.log1p(-lb) + g)
        lb = cfg.lower_bound
        if lb == 0.0:
            return g
        # log(l + (1 - l) sigmoid(z)) without leaving log space
        return torch.logaddexp(torch.full_like(g, math.log(lb)), math.log1p(-lb) + g)


def learned_lower_bounds(G):
    """HGRN's per-layer bounds from G [n_layers, C]: l = cumsum(softmax(G, 0)) - softmax(G, 0)[0], so l_0 = 0 and
    l_i rises with i, below 1 (computed in fp32)."""
    p = torch.softmax(G.float(), dim=0)
    return p.cumsum(0) - p[0]


class RWKV7Decay(Retention):
    """RWKV-7's decay per key channel w = exp(-exp(-1/2) sigmoid(w0 + tanh(x W_1) W_2)), w in (0.545, 1) (Peng et
    al. 2025, https://arxiv.org/abs/2503.14456)"""

    gate = "vector"

    def add_params(self, host, cfg) -> None:
        # RWKV-LM x070: LoRA down 0, up orthogonal * 0.1, w0 = -6 + 6 (i / (C-1)) + 0.5 + 2.5 zz (its layer-0 profile)
        from .bias import _lora, _rwkv_profile

        HK = cfg.heads * cfg.state_key_dim
        lin, zz = _rwkv_profile(HK, cfg.state_key_dim)
        up = _lora(host, "w", cfg.d_model, cfg.gate_rank, HK, bias=True)
        with torch.no_grad():
            up.bias.copy_(-6.0 + 6.0 * (lin + 0.5) + 0.5 + 2.5 * zz)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.gate_rank), (cfg.gate_rank, cfg.heads * cfg.state_key_dim)]

    def extra_params(self, cfg) -> int:
        return cfg.heads * cfg.state_key_dim  # w0 (w_up's bias)

    def log_decay(self, host, cfg, x):
        d = host.w_up(torch.tanh(host.w_down(x)))
        return (-math.exp(-0.5) * torch.sigmoid(d)).view(*x.shape[:-1], cfg.heads, cfg.state_key_dim)


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

    def initial_decay(self, host, cfg):
        return torch.sigmoid(-host.a_proj.bias)  # 1 - alpha at zero input

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
    "kda": KDA(),
    "hgrn2": HGRN2(),
    "rwkv7": RWKV7Decay(),
    "weight_decay": WeightDecay(),
    "lq": LQ(),
    "kl": KL(),
    "elastic_net": ElasticNet(),
})
