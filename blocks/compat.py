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

__all__ = ["SET", "VECTOR_GATES", "WIDENING", "Incompatibility", "INCOMPATIBLE", "violations", "check"]

SET = "<set>"


@dataclass(frozen=True)
class Incompatibility:
    when: dict  # mixer key -> value (or tuple of values, or SET); the rule fires when all match
    why: str


VECTOR_GATES = ("vector", "kda", "hgrn2", "rwkv7")  # retention values that decay per key channel
WIDENING = ("taylor2", "poly", "hedgehog")  # feature maps whose width is not key_dim (FeatureMap.out_dim)

SIGNED = [-1.0, 1.0]  # decay_range of negative eigenvalues (a list: compared by equality, [-1, 1] included)
_SIGNED_WHERE = ("the signed decays (decay_range [-1, 1]) run the exact gla and delta-rule kernels of a plain "
                 "memory on sign-folded inputs (blocks/dispatch.py, signed_forward)")

_MODEL_LEVEL = "a model-level input that blocks/model.py passes to a plain memory layer"

INCOMPATIBLE: tuple = (
    Incompatibility(
        {"type": "memory", "bias": "l2", "structure": ("matrix", "vector"),
         "update": ("gd", "householder", "momentum", "newton_schulz"), "key_norm": "none"},
        "the delta rule needs l2-normalised keys (key_norm: l2): with ||k|| > 1 the transition "
        "I - b k k^T can expand the state and training diverges (Longhorn's implicit step does not: "
        "update: implicit; a deep memory's LayerNorm bounds its output: structure: mlp)",
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
    # -- the Miras axes (issue 12): what the mini-batch engine and the exact kernels cannot combine
    Incompatibility(
        {"type": "memory", "update": "implicit", "bias": ("dot", "rwkv7", "mlstm", "l1", "lp", "huber", "omega")},
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
        {"type": "memory", "retention": VECTOR_GATES, "structure": "mlp"},
        "a per-key-channel retention gate (vector, kda, hgrn2, rwkv7) decays the rows of a matrix memory; a deep memory's decay is "
        "one number per head: use retention: weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "retention": VECTOR_GATES, "bias": ("l1", "lp", "huber", "omega")},
        "a per-key-channel retention gate (vector, kda, hgrn2, rwkv7) has no mini-batch form (the engine decays whole weight tensors); "
        "use retention: weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "retention": VECTOR_GATES, "update": ("momentum", "newton_schulz")},
        "a per-key-channel retention gate (vector, kda, hgrn2, rwkv7) has no mini-batch form (the engine decays whole weight tensors); "
        "use retention: weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "update": "implicit", "structure": "matrix", "retention": VECTOR_GATES},
        "Longhorn's implicit step under a per-key-channel decay (KDA's transition (I - b k k^T) Diag(a) S, one step "
        "per value column) is not implemented; use retention: scalar",
    ),
    Incompatibility(
        {"type": "memory", "token_scale": True, "retention": ("constant", "scalar", "vector", "forget", "kda", "hgrn2",
                                                             "rwkv7", "weight_decay", "lq", "kl", "elastic_net")},
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
    # -- the Miras axes against the transitions of issue 13 (RWKV-7, mLSTM, KDA, HGRN2, DeltaProduct): their kernels
    #    (kernels/dplr.py, mlstm.py, delta_product.py, hgrn2.py) keep one matrix S in R^{K x V} per head
    Incompatibility(
        {"type": "memory", "structure": ("vector", "mlp"), "bias": ("rwkv7", "mlstm")},
        "RWKV-7's diagonal-plus-low-rank write and the mLSTM's normalised read have exact kernels for matrix "
        "memories only (kernels/dplr.py, kernels/mlstm.py); use structure: matrix",
    ),
    Incompatibility(
        {"type": "memory", "structure": ("vector", "mlp"), "retention": ("kda", "hgrn2", "rwkv7")},
        "the KDA, HGRN2 and RWKV-7 gates decay the key rows of a matrix memory (and HGRN2 ties its key to the gate); "
        "on a vector or deep memory they are not implemented: use retention: vector (vector memory) or "
        "weight_decay / scalar",
    ),
    Incompatibility(
        {"type": "memory", "structure": ("vector", "mlp"), "update": "householder"},
        "DeltaProduct's Householder steps act on a matrix memory (kernels/delta_product.py); use structure: matrix",
    ),
    Incompatibility(
        {"type": "memory", "update": ("momentum", "newton_schulz"), "bias": ("rwkv7", "mlstm")},
        "the mini-batch engine (kernels/minibatch.py) has no form of RWKV-7's write or the mLSTM's normaliser and "
        "stabiliser; use update: gd",
    ),
    Incompatibility(
        {"type": "memory", "retention": ("lq", "kl", "elastic_net"), "bias": ("rwkv7", "mlstm")},
        "the mapped retentions (lq, kl, elastic_net) run on the mini-batch engine, which has no form of RWKV-7's "
        "write or the mLSTM's normaliser and stabiliser; use retention: weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "retention": ("lq", "kl", "elastic_net"), "update": "householder"},
        "the mapped retentions (lq, kl, elastic_net) run on the mini-batch engine, which takes one step per token, "
        "not DeltaProduct's n Householder steps; use retention: weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "structure": "vector", "feature_map": WIDENING},
        "a vector memory is elementwise (key width = value width); a feature map that widens the keys (taylor2, "
        "poly, hedgehog) is defined for matrix and deep (mlp) memories",
    ),
    Incompatibility(
        {"type": "memory", "update": "implicit", "feature_map": WIDENING},
        "Longhorn's closed-form step is written for its key_dim-wide keys and is not implemented over widened "
        "keys (taylor2, poly, hedgehog); use update gd or momentum",
    ),
    Incompatibility(
        {"type": "memory", "decay_range": SIGNED, "structure": ("vector", "mlp")},
        _SIGNED_WHERE + "; a vector or deep memory is not among them: use structure: matrix",
    ),
    Incompatibility(
        {"type": "memory", "decay_range": SIGNED,
         "bias": ("rwkv7", "mlstm", "l1", "lp", "huber", "omega")},
        _SIGNED_WHERE + "; use bias dot (Mamba-style, Grazzi et al.'s [-1, 1] decay) or l2 (a gated delta rule; "
        "beta_range [0, 2] is the delta rule's own negative eigenvalues)",
    ),
    Incompatibility(
        {"type": "memory", "decay_range": SIGNED, "update": ("householder", "momentum", "newton_schulz", "implicit")},
        _SIGNED_WHERE + " with one gradient step per token: use update gd",
    ),
    Incompatibility(
        {"type": "memory", "decay_range": SIGNED, "retention": "vector", "bias": "l2"},
        "a per-key-channel sign does not commute with the delta rule's I - b k k^T, so the sign-folded kernels are "
        "exact for a signed vector gate with a Hebbian write only: use bias dot, or retention scalar with bias l2",
    ),
    Incompatibility(
        {"type": "memory", "decay_range": SIGNED, "normalizer": "sum"},
        "the sum normaliser divides by phi(q).z, which stays positive only while every decay does; a signed decay "
        "can drive it to 0: use normalizer none",
    ),
    Incompatibility(
        {"type": "memory", "decay_range": SIGNED, "hierarchy": "log_linear"},
        _SIGNED_WHERE + "; the log-linear levels are not implemented with them",
    ),
    Incompatibility(
        {"type": "memory", "decay_range": SIGNED, "mom": SET},
        _SIGNED_WHERE + "; a Mixture-of-Memories' gathered, padded batches are not implemented with them",
    ),
    Incompatibility(
        {"type": "memory", "decay_range": SIGNED, "titans": SET},
        _SIGNED_WHERE + "; Titans' compositions over them are not implemented",
    ),
    Incompatibility(
        {"type": "memory", "learned_lower_bounds": True, "mom": SET},
        "HGRN2's learned lower bounds are " + _MODEL_LEVEL + "; a Mixture-of-Memories' write paths (blocks/mom.py) "
        "do not take it: set learned_lower_bounds: false (a fixed lower_bound works)",
    ),
    Incompatibility(
        {"type": "memory", "learned_lower_bounds": True, "titans": SET},
        "HGRN2's learned lower bounds are " + _MODEL_LEVEL + "; Titans' compositions (blocks/titans.py) do not "
        "take it: set learned_lower_bounds: false (a fixed lower_bound works)",
    ),
    Incompatibility(
        {"type": "memory", "value_residual": True, "titans": SET},
        "RWKV-7's value residual carries the first layer's values to the later layers, " + _MODEL_LEVEL + "; "
        "Titans' compositions (blocks/titans.py) do not take it: set value_residual: false",
    ),
    Incompatibility(
        {"type": "memory", "normalizer": "sum", "structure": ("vector", "mlp")},
        "the sum normaliser is the linear-attention denominator, a column z of a matrix memory (Katharopoulos et al. "
        "2020); use structure: matrix",
    ),
    Incompatibility(
        {"type": "memory", "normalizer": "sum", "update": ("momentum", "newton_schulz")},
        "the sum normaliser's column z is kept by the exact kernels; the mini-batch engine (momentum, Newton-Schulz) "
        "has none: use update gd",
    ),
    Incompatibility(
        {"type": "memory", "normalizer": "sum", "retention": ("lq", "kl", "elastic_net")},
        "the sum normaliser's column z is kept by the exact kernels; the mapped retentions run on the mini-batch "
        "engine, which has none: use retention weight_decay or scalar",
    ),
    Incompatibility(
        {"type": "memory", "mom": SET, "titans.variant": "mac"},
        "Titans' memory as context reads one memory state S of the segment start with each query (h_j = S^T q_j, "
        "no write); a Mixture-of-Memories holds several memories behind a router that chooses per written token, "
        "so there is no single state to read: use titans.variant mag or mal, which run the mixture as their "
        "memory branch",
    ),
    Incompatibility(
        {"type": "memory", "hierarchy": "log_linear", "titans.variant": "mac"},
        "Titans' memory as context reads the memory of the segment start with the queries, a single state "
        "S^T q that a log-linear memory does not have; use titans.variant mag or mal",
    ),
    Incompatibility(
        {"type": "memory", "feature_map": WIDENING, "bias": ("rwkv7", "mlstm")},
        "RWKV-7's and the mLSTM's per-key-channel parameters (removal and replacement keys, bonus, normaliser) "
        "follow key_dim; a feature map that widens the keys (taylor2, poly, hedgehog) is not defined for them",
    ),
    Incompatibility(
        {"type": "memory", "feature_map": WIDENING, "update": "householder"},
        "DeltaProduct's n keys per token are l2-normalised key_dim vectors; a widening feature map (taylor2, "
        "poly, hedgehog) over its step axis is not implemented",
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
