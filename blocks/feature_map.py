"""Feature map axis (``feature_map:``): phi applied to queries and keys before the memory (after the short
conv, before the key norm). See blocks/axis.py for what a value owns.

identity  phi(x) = x
elu1      phi(x) = elu(x) + 1 > 0   (linear attention, Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236)
silu      phi(x) = x sigmoid(x)     (DeltaNet / Gated DeltaNet's q and k)
relu      phi(x) = max(x, 0)
"""
from __future__ import annotations

from .axis import Axis, AxisValue, F


class FeatureMap(AxisValue):
    """A map on queries and keys [..., H, K]."""

    def __call__(self, x):
        raise NotImplementedError


class Identity(FeatureMap):
    """phi(x) = x"""

    def __call__(self, x):
        return x


class Elu1(FeatureMap):
    """phi(x) = elu(x) + 1"""

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


FEATURE_MAP = Axis("feature_map", "map on q and k", "identity", {
    "identity": Identity(),
    "elu1": Elu1(),
    "silu": Silu(),
    "relu": Relu(),
})
