"""fused_recurrent_gated_delta_rule (Triton decoding kernel) against the token-by-token oracles, and
decoding after a chunked prefill against one parallel forward over the whole sequence."""
import pytest
import torch

from archspace.kernels.triton_chunk import chunk_gated_delta_rule
from archspace.kernels.triton_recurrent import fused_recurrent_gated_delta_rule

from triton_testutil import DEVICE, ON_GPU, VARIANTS, make_inputs, oracle, rel, tol

B, H, K, V = (4, 4, 128, 128) if ON_GPU else (2, 2, 20, 12)  # on a GPU: the fp32 compile of d128_fp32
PREFILL, C = (1000, 64) if ON_GPU else (21, 16)


def decode(x, **kw):
    return fused_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], g=x["g"], beta=x["beta"],
                                            initial_state=x["initial_state"], output_final_state=True, **kw)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decode_matches_oracle(variant, T):
    x = make_inputs(variant, B, T, H, K, V)
    o, S = decode(x)
    o_ref, S_ref = oracle(x)
    assert o.shape == (B, T, H, V) and o.dtype == x["v"].dtype and S.dtype == torch.float32
    assert rel(o, o_ref) <= tol(torch.float32) and rel(S, S_ref) <= tol(torch.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decode_after_chunked_prefill_equals_one_forward(variant):
    """Prefill with the chunked kernel, decode 3 more tokens from its final state: the same outputs and
    final state as the oracle over all tokens (recurrent decoding must equal the parallel forward)."""
    x = make_inputs(variant, B, PREFILL + 3, H, K, V)
    head = {n: None if t is None or n == "initial_state" else t[:, :PREFILL] for n, t in x.items()}
    tail = {n: None if t is None or n == "initial_state" else t[:, PREFILL:] for n, t in x.items()}
    _, S = chunk_gated_delta_rule(head["q"], head["k"], head["v"], g=head["g"], beta=head["beta"],
                                  initial_state=x["initial_state"], output_final_state=True, chunk_size=C)
    o, S = decode({**tail, "initial_state": S})
    o_ref, S_ref = oracle(x)
    assert rel(o, o_ref[:, PREFILL:]) <= tol(torch.float32, PREFILL)
    assert rel(S, S_ref) <= tol(torch.float32, PREFILL)


def test_decode_varlen_and_without_state():
    lengths = [1, 3, 2]
    x = make_inputs("gated_deltanet", 1, sum(lengths), H, K, V, init=False)
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    o, S = decode(x, cu_seqlens=cu)
    assert S.shape == (len(lengths), H, K, V)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_ref, S_ref = oracle({n: None if t is None else t[:, a:b] for n, t in x.items()})
        assert rel(o[:, a:b], o_ref) <= tol(torch.float32) and rel(S[i:i + 1], S_ref) <= tol(torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_decode_low_precision(dtype):
    x = make_inputs("gla", B, 2, H, K, V, dtype=dtype)
    o, S = decode(x)
    o_ref, S_ref = oracle(x)
    assert o.dtype == dtype and S.dtype == torch.float32
    assert rel(o, o_ref) <= tol(dtype) and rel(S, S_ref) <= tol(dtype)


def test_decode_refuses_inputs_that_need_a_gradient():
    x = make_inputs("deltanet", 1, 2, 1, 16, 16)
    x["q"].requires_grad_(True)
    with pytest.raises(ValueError, match="without a backward"):
        decode(x)
    with torch.no_grad():
        o, _ = decode(x)
    assert not o.requires_grad
