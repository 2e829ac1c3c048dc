"""Feature map axis (``feature_map:``): phi applied to queries and keys before the memory (after the short
conv, before the key norm). See blocks/axis.py for what a value owns.

identity  phi(x) = x
elu1      phi(x) = elu(x) + 1 > 0   (linear attention, Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236)
silu      phi(x) = x sigmoid(x)
relu      phi(x) = max(x, 0)
taylor2   phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))] in R^{1 + d + d^2}, d = key_dim: the
          second-order Taylor expansion of exp(q.k / sqrt(d)), phi(q).phi(k) = 1 + u + u^2 / 2 with
          u = q.k / sqrt(d) (Based, Arora et al. 2024, https://arxiv.org/abs/2402.18668, Sec. 3.1; the map of
          the Based and Zoology training code, full outer product, no symmetric compression)
poly      phi(x) = [c_0, c_1 x, c_2 vec(x (x) x), ..., c_p vec(x^(x)p)] in R^{1 + d + ... + d^p}, p = poly_degree,
          with coefficients c_i learned per head and stream: phi(q).phi(k) = sum_i a_i (q.k)^i, a_i = c_i^q c_i^k,
          the Taylor coefficients of exp at init (a_i = 1/i!, c_i = 1/sqrt(i!)). ATLAS' polynomial feature map
          (Behrouz et al. 2025, https://arxiv.org/abs/2505.23735, Sec. 3.1: phi_p(x) = [x^b]_{|b| <= p}, all
          monomials up to degree p, which the full tensor powers span with repeats; its coefficients learned,
          starting from exp's Taylor series); widens the keys of a deep memory's first layer as of a matrix
hedgehog  phi(x) = [softmax(x W_h), softmax(-x W_h)] in R^{2 f}, W_h in R^{d x f} learned per head, one map
          for queries and one for keys, W_h = I at init (f = feature_dim, default d) (Hedgehog, Zhang et al.
          2024, https://arxiv.org/abs/2402.04347, Sec. 4: a trainable single-layer MLP with a softmax, the
          "spiky" monotone map; the split softmax is the authors' code, lolcats and zoology; trained end to end
          here, without Hedgehog's attention-distillation loss)

A map may change the width the memory sees (``out_dim``: the K of the state S in R^{K x V}, the kernels' q and
k width) and may own parameters per stream (``add_stream_params``: one map for q, one for k), so a Mixture-of-
Memories' shared query path and each memory's write path carry their own.
"""
from __future__ import annotations

import math

from .axis import Axis, AxisValue, F, Option, nn, torch


class FeatureMap(AxisValue):
    """A map on queries and keys [..., H, K]."""

    positive: bool = False  # phi(q).phi(k) > 0 for all q, k: a sum normaliser never divides by ~0

    def __call__(self, x):
        raise NotImplementedError

    def apply(self, host, cfg, x, stream: str):
        """phi of stream ``stream`` ("q" or "k") of [..., H, K], with the parameters ``add_stream_params``
        registered on ``host`` (parameter-free maps: ``self(x)``)."""
        return self(x)

    def out_dim(self, cfg) -> int:
        """Width of phi(x) per head: the memory's key dim."""
        return cfg.key_dim

    def add_stream_params(self, host, cfg, stream: str) -> None:
        """Register the parameters of stream ``stream``'s map on ``host`` (the module holding its projection)."""

    def stream_params(self, cfg) -> int:
        """Parameters of one stream's map."""
        return 0

    def stream_flops(self, cfg) -> int:
        """FLOPs per token of one stream's map (its matmuls; elementwise work is not counted, as elsewhere)."""
        return 0


class Identity(FeatureMap):
    """phi(x) = x"""

    def __call__(self, x):
        return x


class Elu1(FeatureMap):
    """phi(x) = elu(x) + 1"""

    positive = True

    def __call__(self, x):
        return F.elu(x) + 1.0


class Silu(FeatureMap):
    """phi(x) = silu(x)"""

    def __call__(self, x):
        return F.silu(x)


class Relu(FeatureMap):
    """phi(x) = relu(x)"""

    def __call__(self, x):
        return F.relu(x)


class Taylor2(FeatureMap):
    """Based's second-order Taylor map [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))], d = key_dim"""

    # phi(q).phi(k) = 1 + u + u^2/2 = ((1 + u)^2 + 1) / 2 >= 1/2 for every u = q.k / sqrt(d)
    positive = True

    def __call__(self, x):
        d = x.shape[-1]
        outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # [..., d*d], x_i x_j
        return torch.cat([torch.ones_like(x[..., :1]), x * d ** -0.25, outer * (2.0 * d) ** -0.5], dim=-1)

    def out_dim(self, cfg) -> int:
        return 1 + cfg.key_dim + cfg.key_dim ** 2


class Poly(FeatureMap):
    """ATLAS' polynomial map [c_0, c_1 x, c_2 vec(x (x) x), ...] with learned per-degree coefficients"""

    options = (
        Option("poly_degree", int, 2, "poly: degree p of the polynomial map (width 1 + d + ... + d^p, d = key_dim; "
               "ATLAS Sec. 3.1)", {"ge": 1, "le": 3}),
    )

    def out_dim(self, cfg) -> int:
        return sum(cfg.key_dim ** i for i in range(cfg.poly_degree + 1))

    def add_stream_params(self, host, cfg, stream: str) -> None:
        # c_i = 1/sqrt(i!) for both streams: phi(q).phi(k) = sum_i (q.k)^i / i!, exp's Taylor series, at init
        c = torch.tensor([math.factorial(i) ** -0.5 for i in range(cfg.poly_degree + 1)])
        setattr(host, f"{stream}_poly", nn.Parameter(c.repeat(cfg.heads, 1)))

    def stream_params(self, cfg) -> int:
        return cfg.heads * (cfg.poly_degree + 1)

    def apply(self, host, cfg, x, stream: str):
        c = getattr(host, f"{stream}_poly").to(x.dtype)  # [H, p + 1]
        terms, power = [torch.ones_like(x[..., :1])], x
        for i in range(1, cfg.poly_degree + 1):
            terms.append(power)
            if i < cfg.poly_degree:
                power = (power.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # vec(x^(x)(i+1)), x^(x)i's entries times x_j
        return torch.cat([t * c[:, i, None] for i, t in enumerate(terms)], dim=-1)


class Hedgehog(FeatureMap):
    """Hedgehog's learned map [softmax(x W_h), softmax(-x W_h)] per head, W_h = I at init"""

    positive = True
    options = (
        Option("feature_dim", int, 0, "hedgehog: width f of x W_h per head, phi has 2f features (0 = key_dim; "
               "W_h starts as the identity when f = key_dim, else as its first f columns or padded with zeros)",
               {"ge": 0, "le": 4096}),
    )

    @staticmethod
    def width(cfg) -> int:
        return cfg.feature_dim or cfg.key_dim

    def out_dim(self, cfg) -> int:
        return 2 * self.width(cfg)

    def add_stream_params(self, host, cfg, stream: str) -> None:
        # One map per head and stream (queries and keys differ), starting as the identity: phi(x) is then the
        # softmax of x itself over its channels, the map Hedgehog's training moves from.
        w = torch.zeros(cfg.heads, cfg.key_dim, self.width(cfg))
        n = min(cfg.key_dim, self.width(cfg))
        w[:, range(n), range(n)] = 1.0
        setattr(host, f"{stream}_fmap", nn.Parameter(w))

    def stream_params(self, cfg) -> int:
        return cfg.heads * cfg.key_dim * self.width(cfg)

    def stream_flops(self, cfg) -> int:
        return 2 * cfg.heads * cfg.key_dim * self.width(cfg)

    def apply(self, host, cfg, x, stream: str):
        z = torch.einsum("...hk,hkf->...hf", x, getattr(host, f"{stream}_fmap").to(x.dtype))
        # each half sums to 1; the floor keeps every feature (and a sum normaliser) away from 0, as the authors'
        # code does
        return torch.cat([z.softmax(-1), (-z).softmax(-1)], dim=-1).clamp(min=1e-12)


FEATURE_MAP = Axis("feature_map", "map on q and k", "identity", {
    "identity": Identity(),
    "elu1": Elu1(),
    "silu": Silu(),
    "relu": Relu(),
    "taylor2": Taylor2(),
    "poly": Poly(),
    "hedgehog": Hedgehog(),
})
