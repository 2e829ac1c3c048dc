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

__all__ = ["SET", "VECTOR_GATES", "Incompatibility", "INCOMPATIBLE", "violations", "check"]

SET = "<set>"


@dataclass(frozen=True)
class Incompatibility:
    when: dict  # mixer key -> value (or tuple of values, or SET); the rule fires when all match
    why: str


VECTOR_GATES = ("vector", "kda", "hgrn2", "rwkv7")  # retention values that decay per key channel

INCOMPATIBLE: tuple = (
    Incompatibility(
        {"type": "memory", "bias": "l2", "key_norm": "none"},
        "the delta rule needs l2-normalised keys (key_norm: l2): with ||k|| > 1 the transition "
        "I - b k k^T can expand the state and training diverges",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "retention": VECTOR_GATES},
        "log-linear memory is implemented for scalar (or no / constant / forget) retention: the Mamba2 and Gated "
        "DeltaNet forms of Guo et al. 2025. A per-channel decay is valid maths (every level evolves with the same "
        "transition) but needs a vector-decay form of kernels/log_linear.py, not implemented; use retention: scalar",
    ),
    Incompatibility(
        {"type": "memory", "update": "householder", "bias": ("dot", "rwkv7", "mlstm")},
        "update householder takes n delta-rule (Householder) steps per token: it needs bias: l2",
    ),
    Incompatibility(
        {"type": "memory", "retention": "hgrn2", "bias": ("l2", "rwkv7", "mlstm")},
        "HGRN2's key is tied to its forget gate (k = 1 - f, not normalised): a Hebbian write, bias: dot",
    ),
    Incompatibility(
        {"type": "memory", "bias": "mlstm", "retention": VECTOR_GATES},
        "the mLSTM's max-stabiliser tracks one log forget gate per head: use a scalar retention (forget, scalar, "
        "constant) or none",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "update": "householder"},
        "log-linear memory over DeltaProduct is not implemented: its Fenwick levels must be indexed by token while "
        "the chunked DeltaProduct runs on the n*T interleaved steps",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "bias": ("rwkv7", "mlstm")},
        "log-linear memory is implemented for the Hebbian and delta-rule transitions (kernels/log_linear.py); over "
        "RWKV-7's diagonal-plus-low-rank transition or the mLSTM's normalised read it is not implemented",
    ),
    Incompatibility(
        {"type": "memory", "mom": SET, "bias": "rwkv7"},
        "RWKV-7's token shift and bonus are defined on the token stream; routed memories (each in its own time) "
        "are not implemented for them",
    ),
    Incompatibility(
        {"type": "memory", "mom": SET, "bias": "mlstm"},
        "a Mixture-of-Memories of mLSTM memories is not implemented: its routed memories keep one matrix each, the "
        "mLSTM also a normaliser and a stabiliser",
    ),
    Incompatibility(
        {"type": "memory", "titans.variant": "mac", "bias": ("rwkv7", "mlstm")},
        "Titans' memory as context reads the segment-start state as K**-0.5 S^T q without a write; RWKV-7 reads "
        "through its token shift with scale 1 and the mLSTM through its normaliser: use titans.variant mag or mal",
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
    Incompatibility(
        {"type": "memory", "feature_map": ("taylor2", "hedgehog"), "bias": ("rwkv7", "mlstm")},
        "RWKV-7's and the mLSTM's per-key-channel parameters (removal and replacement keys, bonus, normaliser) "
        "follow key_dim; a feature map that widens the keys (taylor2, hedgehog) is not defined for them",
    ),
    Incompatibility(
        {"type": "memory", "feature_map": ("taylor2", "hedgehog"), "update": "householder"},
        "DeltaProduct's n keys per token are l2-normalised key_dim vectors; a widening feature map (taylor2, "
        "hedgehog) over its step axis is not implemented",
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
