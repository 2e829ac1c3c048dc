"""Update algorithm axis (``update:``): how the inner loss is minimised at each token. See blocks/axis.py for
what a value owns.

gd           one gradient step per token, the step size from the attentional bias (delta rule: b) or 1 (Hebbian).
householder  n_householder delta-rule steps per token, each with its own key, value and step size (DeltaProduct,
             Siems et al. 2025, https://arxiv.org/abs/2502.10297): the token's transition is a product of n
             generalised Householder matrices, identity plus rank n; the decay (if any) acts once, before the
             first step. The write streams k, v and the step size are n times as wide.
"""
from __future__ import annotations

from .axis import Axis, AxisValue, Option


class Update(AxisValue):
    """An update algorithm."""

    kernel = None  # an op family of blocks/dispatch.py that replaces the bias' (None: the bias decides)
    step_axis = False  # the write streams carry a step axis: k [..., n, H, K], v [..., n, H, V], beta [..., n, H]

    def steps(self, cfg) -> int:
        """Write steps per token: the write streams (k, v, step size) carry this many entries per token."""
        return 1


class GD(Update):
    """one gradient step per token"""


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
})
