"""The one table of axis values that may not be combined in a token mixer.

Read by the block configs (blocks/config.py refuses to build such a memory), by the grammar (a YAML design
gets the reason at file:line:col), by the compiler (through the configs), by the study sampler (never samples
such a design) and by the tests. A rule fires when every key of ``when`` matches the mixer's mapping: a value,
a tuple of values, or SET (the key is present and not null, e.g. a ``mom:`` section); a dotted key reaches into
a nested section (``titans.variant``). An axis key the mapping leaves out (a partial mapping) takes its axis'
default, so ``structure: matrix`` matches a mapping that does not name a structure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .axis import InvalidConfig
from .bias import BIAS
from .feature_map import FEATURE_MAP
from .hierarchy import HIERARCHY
from .retention import RETENTION
from .structure import STRUCTURE
from .update import UPDATE

_AXIS_DEFAULTS = {a.key: a.default for a in (STRUCTURE, BIAS, RETENTION, UPDATE, FEATURE_MAP, HIERARCHY)}

__all__ = ["SET", "Incompatibility", "INCOMPATIBLE", "violations", "check"]

SET = "<set>"


@dataclass(frozen=True)
class Incompatibility:
    when: dict  # mixer key -> value (or tuple of values, or SET); the rule fires when all match
    why: str


INCOMPATIBLE: tuple = (
    Incompatibility(
        {"type": "memory", "bias": "l2", "structure": "matrix", "retention": "vector"},
        "a per-channel (vector) retention gate with the delta rule (KDA) is not in grammar version 1; "
        "use retention: scalar (Gated DeltaNet) or bias: dot (GLA)",
    ),
    Incompatibility(
        {"type": "memory", "bias": "l2", "structure": ("matrix", "vector"),
         "update": ("gd", "momentum", "newton_schulz"), "key_norm": "none"},
        "the delta rule needs l2-normalised keys (key_norm: l2): with ||k|| > 1 the transition "
        "I - b k k^T can expand the state and training diverges (Longhorn's implicit step does not: "
        "update: implicit; a deep memory's LayerNorm bounds its output: structure: mlp)",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "retention": "vector"},
        "log-linear memory is defined for scalar (or no / constant) retention: the Mamba2 and Gated DeltaNet "
        "forms of Guo et al. 2025; use retention: scalar",
    ),
    # -- the Miras axes (issue 12): what the mini-batch engine and the exact kernels cannot combine
    Incompatibility(
        {"type": "memory", "update": "implicit", "bias": ("dot", "l1", "lp", "huber", "omega")},
        "Longhorn's implicit update is the closed-form minimiser of the l2 loss's proximal step; use bias: l2",
    ),
    Incompatibility(
        {"type": "memory", "update": "implicit", "structure": "mlp"},
        "the implicit update has a closed form for linear memories only (vector, matrix); a deep memory's "
        "proximal step has none",
    ),
    Incompatibility(
        {"type": "memory", "update": "newton_schulz", "structure": "vector"},
        "Newton-Schulz orthogonalises weight matrices; a vector memory has none: use update momentum",
    ),
    Incompatibility(
        {"type": "memory", "retention": "vector", "structure": "mlp"},
        "a per-key-channel (vector) retention gate decays the rows of a matrix memory; a deep memory's decay is "
        "one number per head: use retention: weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "retention": "vector", "bias": ("l1", "lp", "huber", "omega")},
        "a per-key-channel (vector) retention gate has no mini-batch form (the engine decays whole weight tensors); "
        "use retention: weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "retention": "vector", "update": ("momentum", "newton_schulz")},
        "a per-key-channel (vector) retention gate has no mini-batch form (the engine decays whole weight tensors); "
        "use retention: weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "update": "implicit", "structure": "matrix", "retention": "vector"},
        "a per-key-channel (vector) retention gate with the delta rule (KDA) is not in grammar version 1; "
        "use retention: scalar",
    ),
    Incompatibility(
        {"type": "memory", "token_scale": True, "retention": ("constant", "scalar", "vector", "forget",
                                                             "weight_decay", "lq", "kl", "elastic_net")},
        "TTT's token scale rescales a plain gradient sum inside each mini-batch (TTT has no retention); with a "
        "decaying or mapped memory that sum is not the memory's displacement: use retention: none",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "structure": ("vector", "mlp")},
        "log-linear memory keeps Fenwick levels of matrix states (Guo et al. 2025); use structure: matrix",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "bias": ("l1", "lp", "huber", "omega")},
        "log-linear memory is defined for the dot and delta-rule writes of Mamba2 and Gated DeltaNet; use bias: dot "
        "or l2",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "update": ("momentum", "newton_schulz", "implicit")},
        "log-linear memory is defined for one gradient step per token (Mamba2, Gated DeltaNet); use update: gd",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "retention": ("weight_decay", "lq", "kl", "elastic_net")},
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
    if key in _AXIS_DEFAULTS and key not in mixer and mixer.get("type", "memory") == "memory":
        return True, _AXIS_DEFAULTS[key]
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
