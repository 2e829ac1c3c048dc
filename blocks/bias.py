"""Attentional bias axis (``bias:``): the inner loss whose gradient step is the memory's write (Miras,
Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, Sec. 3). See blocks/axis.py for what a value owns.

r = M(k) - v is the memory's error on a key, psi = dl/dM(k) what the write back-propagates:

dot    -<M(k), v>, psi = -v (Hebbian):  S <- S + k v^T                    (linear attention, GLA, Mamba2, HGRN2)
l2     ||r||^2 / 2, psi = r (delta rule, one step of size b = sigmoid(W_b x), or b in ``beta_range``):
                                        S <- (I - b k k^T) S + b k v^T    (DeltaNet, Gated DeltaNet, KDA, TTT,
                                                                           DeltaProduct with update householder)
rwkv7  the generalised delta rule of RWKV-7 (Peng et al. 2025, https://arxiv.org/abs/2503.14456): remove what is
       stored under the unit key kh = normalize(k * k_k) at a per-channel rate a = sigmoid(a0 + LoRA(x)), then write
       the replacement key k~ = k * (1 + (a - 1) * k_a):
                                S <- (Diag(w) - (a * kh) kh^T) S + k~ v^T       (kernels/dplr.py, read with scale 1)
       with RWKV-7's token shift (x_c = x + (x_{t-1} - x_t) * mu_c per stream) and its bonus (r . (rho * k~)) v
       added after the output norm, as the options ``token_shift`` and ``bonus``
mlstm  Hebbian write scaled by an exponential input gate, with a normaliser and a max-stabiliser (xLSTM's mLSTM,
       Beck et al. 2024, https://arxiv.org/abs/2405.04517; kernels/mlstm.py):
                                S <- f S + exp(i~) k v^T,  n <- f n + exp(i~) k,  read S^T q / max(|n^T q|, 1)
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

dot and l2 on a vector or matrix memory, rwkv7 and mlstm on a matrix memory have exact online kernels; the others
run on the mini-batch engine (kernels/minibatch.py). Every bias but dot, rwkv7 and mlstm has a step size
b_t = lr_max * sigmoid(W_b x_t) per head (the update's learning rate theta_t).
"""
from __future__ import annotations

import math
from typing import Literal

from .axis import Axis, AxisValue, F, Option, linear, nn, torch


class Bias(AxisValue):
    """An attentional bias: its write, the step size it needs, and the kernel family of a flat memory."""

    kernel: str = ""  # op family of blocks/dispatch.py that computes a flat memory with this bias
    state_keys: tuple = ("memory",)  # a memory's entries in a mixer's state dict (kernels take a dict when > 1)

    def step_size(self, host, cfg, x) -> dict:
        """Keyword inputs of the kernels from tokens x [..., D] (e.g. {"beta": [..., H]}), from ``add_params``."""
        return {}

    def finish_write(self, host, cfg, k, gates: dict):
        """The write's key and the kernels' keyword inputs once the key k [..., H, K] exists (default: as they are)."""
        return k, gates

    def token_shift(self, cfg) -> bool:
        """Whether the streams read a token-shifted input (RWKV): see blocks/memory.py's ``stream_inputs``."""
        return False

    def bonus(self, host, cfg, q, k, v):
        """A term added to the read after the output norm, [..., H, V], or None."""
        return None

    def write_flops(self, cfg) -> int:
        """FLOPs of one token's write into one head's memory (the transition included); exact kernels only."""
        raise NotImplementedError

    def transition_flops(self, cfg) -> int:
        """FLOPs of the state-dependent part of the transition alone (applied to every log-linear level)."""
        return 0

    def init_memory(self, cfg, batch_size: int, device=None, host=None) -> dict:
        """One memory's state entries before the first token (``host``: the module whose parameters hold a
        mini-batch memory's learned initial weights)."""
        return {"memory": cfg.axes.structure.init_state(cfg, batch_size, device, host)}

    def extra_state_numel(self, cfg) -> int:
        """Numbers one memory holds beside its structure's state (mLSTM's normaliser and stabiliser)."""
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


DEFAULT_BETA_RANGE = (0.0, 1.0)


class L2(Bias):
    """delta rule S = (I - b k k^T) S + b k v^T, b = sigmoid(W_b x) (scaled into beta_range)"""

    kernel = "delta_rule"
    options = (
        Option("beta_range", list[float], DEFAULT_BETA_RANGE,
               "[lo, hi]: the delta rule's step size b = lo + (hi - lo) sigmoid(W_b x); [0, 2] lets the transition "
               "I - b k k^T reach eigenvalue -1 (negative eigenvalues, Grazzi et al. 2024, "
               "https://arxiv.org/abs/2411.12537)", omit_default=True),
    )

    def check(self, cfg):
        r = cfg.beta_range
        if len(r) != 2 or not 0.0 <= r[0] < r[1] <= 2.0:
            return "beta_range", (f"beta_range must be [lo, hi] with 0 <= lo < hi <= 2 (the transition I - b k k^T of "
                                  f"a unit key has eigenvalue 1 - b, in [-1, 1]), got {list(r)}")
        return None

    def add_params(self, host, cfg) -> None:
        if not cfg.axes.update.owns_step:
            host.b_proj = linear(cfg.d_model, cfg.heads * cfg.axes.update.steps(cfg))

    def linears(self, cfg) -> list:
        return [] if cfg.axes.update.owns_step else [(cfg.d_model, cfg.heads * cfg.axes.update.steps(cfg))]

    def step_size(self, host, cfg, x) -> dict:
        if cfg.axes.update.owns_step:
            return {}
        b = torch.sigmoid(host.b_proj(x))
        lo, hi = cfg.beta_range
        if (lo, hi) != DEFAULT_BETA_RANGE:
            b = lo + (hi - lo) * b
        if cfg.lr_max != 1.0:
            b = cfg.lr_max * b  # a mini-batch memory's step size theta_t
        if cfg.axes.update.step_axis:
            b = b.view(*x.shape[:-1], cfg.axes.update.steps(cfg), cfg.heads)
        return {"beta": b}

    def spec(self, cfg) -> dict:
        return {"loss": "l2"}

    def write_flops(self, cfg) -> int:
        # S^T k, then the rank-one write, per step
        return 4 * cfg.axes.structure.cells(cfg) * cfg.axes.update.steps(cfg)

    def transition_flops(self, cfg) -> int:
        return 4 * cfg.state_key_dim * cfg.state_value_dim  # (I - b k k^T) S: k^T S and the rank-one update


def _rwkv_profile(channels: int, per_head: int):
    """RWKV-7's init profiles over channels i = 0..C-1 (RWKV-LM x070): lin_i = i/(C-1) - 1/2 and the signed-square
    zigzag zz within each head (in [-1, 1])."""
    i = torch.arange(channels, dtype=torch.float32)
    lin = i / max(channels - 1, 1) - 0.5
    half = max((per_head - 1) / 2, 0.5)
    zig = ((i % per_head) - (per_head - 1) / 2) / half
    return lin, zig * zig.abs()


def _lora(host, name: str, d_in: int, rank: int, d_out: int, bias: bool):
    """RWKV's low-rank projection: down (zeros) then up (orthogonal * 0.1), as RWKV-LM initialises its LoRAs."""
    down, up = linear(d_in, rank), linear(rank, d_out, bias=bias)
    with torch.no_grad():
        down.weight.zero_()
        nn.init.orthogonal_(up.weight, gain=0.1)
    setattr(host, f"{name}_down", down)
    setattr(host, f"{name}_up", up)
    return up


# the token-shifted streams of RWKV-7, and the exponent p of each one's mu_c = 1 - (i / D)^p (RWKV-LM x070, layer 0)
SHIFT_STREAMS = {"q": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}


class RWKV7(Bias):
    """RWKV-7's generalised delta rule (Diag(w) - (a * kh) kh^T) S + k~ v^T with a per-channel in-context learning
    rate (Peng et al. 2025, https://arxiv.org/abs/2503.14456)"""

    kernel = "dplr"
    options = (
        Option("iclr_rank", int, 32, "rank of the in-context learning rate's LoRA a = sigmoid(a0 + LoRA(x))",
               {"ge": 1, "le": 1024}),
        Option("token_shift", bool, True, "RWKV's token shift: every stream (r, w, k, v, a, g) reads x + (x_{t-1} - "
               "x_t) * mu_c with its own learned mu_c"),
        Option("bonus", bool, True, "RWKV-7's bonus: add (r . (rho * k~)) v per head to the read after the output "
               "norm (the current token's own value, weighted)"),
        Option("value_residual", bool, False,
               "RWKV-7's value residual (Peng et al. 2025, Sec. 4): the first layer with it keeps its values v_1; "
               "every later one mixes them in, v = lerp(v, v_1, sigmoid(v0 + LoRA(x_v))) (v0 = 1, the LoRA's "
               "down zeros, as RWKV-LM x070); the model passes v_1 along (blocks/model.py)", omit_default=True),
        Option("value_rank", int, 32, "rank of the value residual's LoRA (RWKV-LM: 32 at these widths)",
               {"ge": 1, "le": 1024}, omit_default=True),
    )

    def add_params(self, host, cfg) -> None:
        D, H, K = cfg.d_model, cfg.heads, cfg.key_dim
        lin, zz = _rwkv_profile(H * K, K)
        up = _lora(host, "a", D, cfg.iclr_rank, H * K, bias=True)
        with torch.no_grad():
            up.bias.copy_(-0.19 + 0.3 * zz + 0.4 * lin)  # a0
        host.k_k = nn.Parameter(0.71 - 0.1 * lin)  # removal-key gain [H*K]
        host.k_a = nn.Parameter(torch.full((H * K,), 1.02))  # replacement-key mix [H*K]
        if cfg.bonus:
            host.r_k = nn.Parameter(torch.full((H, K), -0.04))  # rho
        if cfg.token_shift:
            frac = torch.arange(D, dtype=torch.float32) / D
            host.shift_mu = nn.Parameter(torch.stack([1.0 - frac ** p for p in SHIFT_STREAMS.values()]))  # [6, D]

    def add_value_residual(self, host, cfg) -> None:
        """The value residual's mix on a layer after the first (the model calls this; the first layer has none)."""
        up = _lora(host, "vres", cfg.d_model, cfg.value_rank, cfg.heads * cfg.value_dim, bias=True)
        with torch.no_grad():
            up.bias.fill_(1.0)  # v0 (RWKV-LM x070)

    def value_residual_cost(self, cfg) -> tuple[int, int]:
        """(params, FLOPs per token) of ``add_value_residual``'s mix."""
        D, r, HV = cfg.d_model, cfg.value_rank, cfg.heads * cfg.value_dim
        return D * r + r * HV + HV, 2 * (D * r + r * HV)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.iclr_rank), (cfg.iclr_rank, cfg.heads * cfg.key_dim)]

    def extra_params(self, cfg) -> int:
        HK = cfg.heads * cfg.key_dim
        return 3 * HK + (HK if cfg.bonus else 0) + (len(SHIFT_STREAMS) * cfg.d_model if cfg.token_shift else 0)

    def token_shift(self, cfg) -> bool:
        return cfg.token_shift

    def step_size(self, host, cfg, x) -> dict:
        a = torch.sigmoid(host.a_up(host.a_down(x)))  # in-context learning rate, per key channel
        return {"iclr": a.view(*x.shape[:-1], cfg.heads, cfg.key_dim)}

    def finish_write(self, host, cfg, k, gates: dict):
        H, K = cfg.heads, cfg.key_dim
        gates = dict(gates)
        a = gates.pop("iclr")
        kh = F.normalize(k * host.k_k.view(H, K), p=2.0, dim=-1, eps=1e-12)  # unit removal key (from the raw k)
        k_new = k * (1.0 + (a - 1.0) * host.k_a.view(H, K))  # replacement key k~ = k * lerp(1, a, k_a)
        g = gates.get("g")
        if g is not None and g.dim() == k.dim() - 1:  # a scalar decay per head, as a vector for the DPLR kernel
            gates["g"] = g[..., None].expand_as(k)
        gates.update(a=-kh, b=kh * a, scale=1.0)  # kernels/dplr.py: (Diag(w) + b a^T), RWKV-7 reads with scale 1
        return k_new, gates

    def bonus(self, host, cfg, q, k, v):
        if not cfg.bonus:
            return None
        return (q * k * host.r_k).sum(-1, keepdim=True) * v  # (r . (rho * k~)) v  [..., H, V]

    def write_flops(self, cfg) -> int:
        # the low-rank read a^T S (2KV) and update b (.) (2KV), the write k v^T (2KV); the bonus 2K + 2V is counted
        # here too (it reads the current token's write)
        K, V = cfg.key_dim, cfg.value_dim
        return 6 * K * V + (2 * K + 2 * V if cfg.bonus else 0)


class MLSTM(Bias):
    """Hebbian write with an exponential input gate, a normaliser and a max-stabiliser, read S^T q / max(|n^T q|, 1)
    (xLSTM's mLSTM, Beck et al. 2024, https://arxiv.org/abs/2405.04517)"""

    kernel = "mlstm"
    state_keys = ("memory", "normalizer", "stabilizer")
    options = (
        Option("gate_soft_cap", float, 15.0, "soft cap c * tanh(x / c) on the input gate's pre-activation (xLSTM "
               "7B, Beck et al. 2025, https://arxiv.org/abs/2503.13427); 0 = off", {"ge": 0}),
    )

    def add_params(self, host, cfg) -> None:
        # xLSTM 7B initialises the input gate's bias to -10 (its weights to 0; here the projections' N(0, 0.02^2))
        host.i_proj = linear(cfg.d_model, cfg.heads, bias=True)
        nn.init.constant_(host.i_proj.bias, -10.0)

    def linears(self, cfg) -> list:
        return [(cfg.d_model, cfg.heads)]

    def extra_params(self, cfg) -> int:
        return cfg.heads  # i_proj's bias

    def step_size(self, host, cfg, x) -> dict:
        i = host.i_proj(x)
        c = cfg.gate_soft_cap
        return {"i": c * torch.tanh(i / c) if c > 0 else i}

    def write_flops(self, cfg) -> int:
        # S += i k v^T (2KV); the normaliser: decay (K), write (2K), read n^T q (2K)
        return 2 * cfg.key_dim * cfg.value_dim + 5 * cfg.key_dim

    def init_memory(self, cfg, batch_size: int, device=None, host=None) -> dict:
        from ..kernels.mlstm import mlstm_init_state

        return mlstm_init_state(batch_size, cfg.heads, cfg.key_dim, cfg.value_dim, device)

    def extra_state_numel(self, cfg) -> int:
        return cfg.heads * cfg.key_dim + cfg.heads  # n [H, K], m [H]


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
    "rwkv7": RWKV7(),
    "mlstm": MLSTM(),
    "l1": L1(),
    "lp": LP(),
    "huber": Huber(),
    "omega": Omega(),
})
