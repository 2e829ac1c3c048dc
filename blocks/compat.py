"""The one table of axis values that may not be combined in a token mixer.

Read by the block configs (blocks/config.py refuses to build such a memory), by the grammar (a YAML design
gets the reason at file:line:col), by the compiler (through the configs), by the study sampler (never samples
such a design) and by the tests. A rule fires when every key of ``when`` matches the mixer's mapping: a value,
a tuple of values, or SET (the key is present and not null, e.g. a ``mom:`` section); a dotted key reaches into
a nested section (``titans.variant``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .axis import InvalidConfig

__all__ = ["SET", "Incompatibility", "INCOMPATIBLE", "violations", "check"]

SET = "<set>"


@dataclass(frozen=True)
class Incompatibility:
    when: dict  # mixer key -> value (or tuple of values, or SET); the rule fires when all match
    why: str


INCOMPATIBLE: tuple = (
    Incompatibility(
        {"type": "memory", "bias": "l2", "retention": "vector"},
        "a per-channel (vector) retention gate with the delta rule (KDA) is not in grammar version 1; "
        "use retention: scalar (Gated DeltaNet) or bias: dot (GLA)",
    ),
    Incompatibility(
        {"type": "memory", "bias": "l2", "key_norm": "none"},
        "the delta rule needs l2-normalised keys (key_norm: l2): with ||k|| > 1 the transition "
        "I - b k k^T can expand the state and training diverges",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "retention": "vector"},
        "log-linear memory is defined for scalar (or no / constant) retention: the Mamba2 and Gated DeltaNet "
        "forms of Guo et al. 2025; use retention: scalar",
    ),
    Incompatibility(
        {"type": "memory", "mom": SET, "titans": SET},
        "a Titans composition takes one memory mixer, not a Mixture-of-Memories, in grammar version 1",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "titans.variant": "mac"},
        "Titans' memory as context reads the memory of the segment start with the queries, a single state "
        "S^T q that a log-linear memory does not have; use titans.variant mag or mal",
    ),
)


def _lookup(mixer: dict, key: str) -> tuple[bool, Any]:
    node: Any = mixer
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _matches(mixer: dict, key: str, want: Any) -> bool:
    found, value = _lookup(mixer, key)
    if not found:
        return False
    if want == SET:
        return value is not None
    return value in want if isinstance(want, tuple) else value == want


def violations(mixer: dict) -> list:
    """Rules of INCOMPATIBLE that a (possibly partial) mixer mapping breaks."""
    return [r for r in INCOMPATIBLE if all(_matches(mixer, k, v) for k, v in r.when.items())]


def check(mixer: dict) -> None:
    """Raise InvalidConfig (incompatible, keyed by the rule's last key) for the first rule ``mixer`` breaks."""
    for rule in violations(mixer):
        keys = [k for k in rule.when if k != "type"]
        shown = ", ".join(f"{k}: {_shown(mixer, k)}" for k in keys)
        raise InvalidConfig(f"incompatible combination {shown}: {rule.why}", keys[-1], incompatible=True)


def _shown(mixer: dict, key: str) -> Any:
    _, value = _lookup(mixer, key)
    return "(set)" if isinstance(value, dict) else value
