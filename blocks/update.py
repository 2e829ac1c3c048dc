"""Update algorithm axis (``update:``): how the inner loss is minimised at each token. See blocks/axis.py for
what a value owns.

gd  one gradient step per token, the step size from the attentional bias (delta rule: b) or 1 (Hebbian).
"""
from __future__ import annotations

from .axis import Axis, AxisValue


class Update(AxisValue):
    """An update algorithm."""


class GD(Update):
    """one gradient step per token"""


UPDATE = Axis("update", "update algorithm", "gd", {
    "gd": GD(),
})
