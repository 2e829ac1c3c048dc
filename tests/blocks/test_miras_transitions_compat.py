"""The Miras axes (issue 12) against the transitions of issue 13 and the output-path fields of issue 16: what the
compatibility table refuses where the two meet (blocks/compat.py), as block configs and as YAML designs.

RWKV-7's, the mLSTM's, KDA's, HGRN2's and DeltaProduct's kernels keep one matrix per head, and the mini-batch engine
(kernels/minibatch.py) has no form of their writes; the widening feature maps (taylor2, poly, hedgehog) are defined
on matrix and deep memories (the engine's memory reads the widened keys), the sum normaliser on matrix memories with
exact kernels. Each such design is refused at the key with the
reason, never run on a path that computes something else.
"""
from __future__ import annotations

import pytest

from archspace.blocks.axis import InvalidConfig
from archspace.blocks.config import MemoryConfig

from blocks_testutil import design_error

D, H, K = 16, 2, 8


def _mem(**kw) -> MemoryConfig:
    return MemoryConfig(D, H, K, K, **{"chunk_size": 4, **kw})


REFUSED = [
    ({"structure": "vector", "bias": "rwkv7"}, "matrix memories only"),
    ({"structure": "mlp", "bias": "mlstm"}, "matrix memories only"),
    ({"structure": "vector", "retention": "kda"}, "decay the key rows of a matrix memory"),
    ({"structure": "mlp", "retention": "hgrn2"}, "a deep memory's decay is one number per head"),
    ({"structure": "mlp", "retention": "rwkv7"}, "a deep memory's decay is one number per head"),
    ({"structure": "vector", "bias": "l2", "key_norm": "l2", "update": "householder"}, "act on a matrix memory"),
    ({"bias": "rwkv7", "update": "momentum"}, "no form of RWKV-7's write"),
    ({"bias": "mlstm", "retention": "kl"}, "mapped retentions"),
    ({"bias": "l2", "key_norm": "l2", "retention": "lq", "update": "householder"}, "Householder steps"),
    ({"bias": "l2", "key_norm": "l2", "retention": "kda", "update": "momentum"}, "no mini-batch form"),
    ({"bias": "huber", "retention": "rwkv7"}, "no mini-batch form"),
    ({"bias": "mlstm", "update": "implicit"}, "use bias: l2"),
    ({"bias": "rwkv7", "update": "implicit"}, "use bias: l2"),
    ({"bias": "l2", "retention": "kda", "update": "implicit"}, "per-key-channel decay"),
    ({"structure": "vector", "bias": "l2", "key_norm": "l2", "feature_map": "taylor2"}, "widens the keys"),
    ({"bias": "l2", "update": "implicit", "feature_map": "poly"}, "not implemented over widened keys"),
    ({"bias": "rwkv7", "feature_map": "hedgehog"}, "widens the keys"),
    ({"bias": "l2", "key_norm": "l2", "update": "householder", "feature_map": "poly"}, "widening feature map"),
    ({"structure": "vector", "normalizer": "sum", "feature_map": "elu1"}, "column z of a matrix memory"),
    ({"update": "newton_schulz", "normalizer": "sum", "feature_map": "elu1"}, "mini-batch engine"),
    ({"retention": "lq", "normalizer": "sum", "feature_map": "elu1"}, "mapped retentions"),
    ({"token_scale": True, "retention": "kda", "bias": "l2", "key_norm": "l2"}, "use retention: none"),
]


@pytest.mark.parametrize("keys, why", REFUSED, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c, _ in REFUSED])
def test_the_refused_combinations_are_refused_with_the_reason(keys, why):
    with pytest.raises(InvalidConfig) as err:
        _mem(**keys)
    assert err.value.incompatible and why in str(err.value), str(err.value)


@pytest.mark.parametrize("keys", [
    {"structure": "matrix", "bias": "rwkv7", "retention": "weight_decay"},  # a scalar decay: the exact DPLR kernel
    {"structure": "matrix", "bias": "mlstm", "retention": "weight_decay"},
    {"structure": "matrix", "bias": "l2", "key_norm": "l2", "retention": "weight_decay", "update": "householder"},
    {"structure": "vector", "bias": "l2", "key_norm": "l2", "retention": "vector"},  # miras' vector delta rule
    {"structure": "matrix", "bias": "l2", "key_norm": "l2", "retention": "kda"},  # KDA (issue 13)
    {"structure": "matrix", "bias": "dot", "feature_map": "taylor2", "retention": "weight_decay"},
])
def test_the_combinations_both_sides_compute_still_build(keys):
    cfg = _mem(**keys)
    assert not cfg.minibatch


@pytest.mark.parametrize("keys", [  # the mini-batch engine's memory reads the widened keys (state_key_dim)
    {"structure": "mlp", "residual": False, "feature_map": "taylor2"},
    {"structure": "mlp", "residual": False, "bias": "huber", "feature_map": "hedgehog"},
    {"retention": "elastic_net", "feature_map": "taylor2"},
    {"update": "momentum", "bias": "l2", "key_norm": "l2", "feature_map": "poly"},
])
def test_widening_maps_run_on_the_minibatch_engine(keys):
    cfg = _mem(**keys)
    assert cfg.minibatch and cfg.state_key_dim > cfg.key_dim




def test_a_yaml_design_gets_the_refusal_at_its_key(tmp_path):
    err = design_error(tmp_path, "{heads: 2, structure: vector, retention: hgrn2}")
    assert err is not None and err.kind == "incompatible" and "vector or deep memory" in str(err)
    assert str(err).startswith(f"{tmp_path / 'd.yaml'}:3:")
    # an option shared by several values is accepted where any of them is chosen, refused where none is
    assert design_error(tmp_path, "{heads: 2, structure: mlp, bias: lp, abs_eps: 0.001, chunk_size: 4}") is None
    assert design_error(tmp_path, "{heads: 2, structure: mlp, bias: huber, abs_eps: 0.001, chunk_size: 4}") is None
    err = design_error(tmp_path, "{heads: 2, bias: l2, key_norm: l2, abs_eps: 0.001}")
    assert err is not None and "'abs_eps' is an option of bias: " in str(err) and "bias: l2" in str(err)
