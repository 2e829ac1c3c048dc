"""chunk_gated_delta_rule (Triton) against the token-by-token oracles and the chunked PyTorch paths:
outputs, final states and the gradients of q, k, v, g, beta and the initial state, for every special case.

CPU: under Triton's interpreter at tiny shapes, fp32. GPU: the same tests at real shapes, mostly bf16 with
one fp32 configuration: every distinct (kernel, dtype, tile, head dims, H) compiles once per machine (up
to about 20 s each ahead of time here), so the GPU cases share as few configurations as they can."""
import pytest
import torch

from archspace.kernels.delta_rule import naive_recurrent_delta_rule
from archspace.kernels.triton_chunk import chunk_gated_delta_rule
from archspace.kernels.triton_support import TritonUnavailable, triton_available

from triton_testutil import (DEVICE, ON_GPU, VARIANTS, assert_close, chunk_torch, chunk_triton, cotangents,
                              make_inputs, oracle, rel, run_with_grads, tol)

# name: (B, T, H, K, V, chunk_size, initial state, dtype): odd lengths, one token, a length that is a
# multiple of the chunk, K and V that are not powers of two (padded to the register tiles), K != V,
# and V > 64 (several V-blocks).
F32, BF16 = torch.float32, torch.bfloat16
if ON_GPU:
    CASES = {
        "d128_bf16": (2, 1000, 4, 128, 128, 64, True, BF16),
        "d64_c32_bf16": (2, 777, 4, 64, 64, 32, True, BF16),
        "d100x72_pad_bf16": (1, 513, 4, 100, 72, 64, False, BF16),
        "d128_fp32": (2, 300, 4, 128, 128, 64, True, F32),
        "one_token_fp32": (3, 1, 4, 128, 128, 64, True, F32),
    }
    DEFAULT = "d128_bf16"  # the case the other tests reuse
else:
    CASES = {
        "one_token": (1, 1, 1, 16, 16, 16, False, F32),
        "odd_c16": (2, 37, 1, 20, 12, 16, True, F32),
        "c32_two_vblocks": (1, 40, 2, 16, 80, 32, True, F32),  # V = 80: two V-blocks of 64, the second padded
    }
    DEFAULT = "odd_c16"


def case_inputs(case, variant, **kw):
    B, T, H, K, V, C, init, dtype = CASES[case]
    x = make_inputs(variant, B, T, H, K, V, init=init, dtype=dtype, **kw)
    return x, (B, T, H, K, V, C, dtype)


def test_interpreter_or_gpu_is_available():
    ok, reason = triton_available(DEVICE)
    assert ok, reason
    assert reason.startswith("cuda" if ON_GPU else "interpreter")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_oracle_and_chunked_torch(variant, case):
    x, (B, T, H, K, V, C, dtype) = case_inputs(case, variant)
    do, dS = cotangents((B, T, H, V), (B, H, K, V))
    got = run_with_grads(chunk_triton(C), x, do, dS)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32 and got[1].shape == (B, H, K, V)
    assert all(gr.dtype == x[n].dtype for n, gr in got[2].items())
    assert_close(got, run_with_grads(oracle, x, do, dS), tol(dtype, T), f"{variant}/{case} vs oracle")
    assert_close(got, run_with_grads(chunk_torch(C), x, do, dS), tol(dtype, T), f"{variant}/{case} vs chunked torch")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_varlen_matches_sequences_one_by_one(variant):
    # lengths: shorter than a chunk, exactly one chunk, one token, empty, a chunk and a bit
    _, _, H, K, V, C, _, dtype = CASES[DEFAULT]
    lengths = [300, 64, 1, 0, 517] if ON_GPU else [5, 16, 1, 0, 19]
    T = sum(lengths)
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    x = make_inputs(variant, 1, T, H, K, V, n_seq=len(lengths), dtype=dtype)
    do, dS = cotangents((1, T, H, V), (len(lengths), H, K, V))
    got = run_with_grads(chunk_triton(C, cu), x, do, dS)

    def one_by_one(x):  # the oracle on each sequence from its own initial state
        outs, finals = [], []
        for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            xi = {n: None if t is None else t[:, a:b] for n, t in x.items() if n != "initial_state"}
            xi["initial_state"] = x["initial_state"][i:i + 1]
            o, S = oracle(xi) if b > a else (xi["v"], xi["initial_state"].float())  # the oracle needs T >= 1
            outs.append(o)
            finals.append(S)
        return torch.cat(outs, 1), torch.cat(finals, 0)

    assert_close(got, run_with_grads(one_by_one, x, do, dS), tol(dtype, T), f"{variant} varlen")
    # an empty sequence passes its initial state through
    assert torch.equal(got[1][3], x["initial_state"][3].float())


@pytest.mark.parametrize("variant", ["mamba2", "gla", "gated_deltanet"])
def test_zero_gates_and_strong_decay(variant):
    """Log-gates exactly 0 at half the tokens (decay 1 there) and down to -5 per token at the others
    (exp(-cumsum) would overflow in fp32 within one chunk), step sizes beta exactly 0 at a quarter."""
    x, (B, T, H, K, V, C, dtype) = case_inputs(DEFAULT, variant, zero_gate_p=0.5, zero_beta_p=0.25, strong=True)
    do, dS = cotangents((B, T, H, V), (B, H, K, V))
    got = run_with_grads(chunk_triton(C), x, do, dS)
    assert_close(got, run_with_grads(oracle, x, do, dS), tol(dtype, T), f"{variant} zero gates")


@pytest.mark.parametrize("variant", ["mamba2", "gla", "gated_deltanet"])
def test_all_zero_gate_equals_no_gate(variant):
    ungated = {"mamba2": "linear_attention", "gla": "linear_attention", "gated_deltanet": "deltanet"}[variant]
    case = DEFAULT if ON_GPU else "c32_two_vblocks"
    x, (B, T, H, K, V, C, dtype) = case_inputs(case, ungated)
    gate_shape = (B, T, H, K) if variant == "gla" else (B, T, H)
    o0, S0 = chunk_triton(C)(x)
    o1, S1 = chunk_triton(C)({**x, "g": torch.zeros(gate_shape, device=DEVICE, dtype=dtype)})
    assert rel(o1, o0) <= tol(dtype, T) and rel(S1, S0) <= tol(dtype, T)


def test_constant_decay_through_expand():
    """RetNet's fixed per-head decay is the scalar gate g = log(gamma_h) expanded over B and T; its
    gradient sums over the expanded positions (autograd's expand)."""
    case = DEFAULT if ON_GPU else "c32_two_vblocks"
    x, (B, T, H, K, V, C, dtype) = case_inputs(case, "linear_attention")
    log_gamma = torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(H, dtype=torch.float64))).to(DEVICE, dtype)
    results = []
    for fn in (chunk_triton(C), oracle):
        lg = log_gamma.clone().requires_grad_(True)
        o, S = fn({**x, "g": lg.expand(B, T, H)})
        (o.float().sum() + S.sum()).backward()
        results.append((o, S, lg.grad))
    for a, b in zip(*results):
        assert rel(a, b) <= tol(dtype, T)


LOW_PRECISION = ([(v, torch.float16) for v in VARIANTS] if ON_GPU else  # bf16: the GPU cases above
                 [("gla", torch.bfloat16), ("gated_deltanet", torch.bfloat16), ("gated_deltanet", torch.float16)])


@pytest.mark.parametrize("variant, dtype", LOW_PRECISION)
def test_low_precision_inputs(variant, dtype):
    """16-bit inputs: o and every gradient in the input dtype, the final state in fp32; compared with
    the oracle in fp32 on the same rounded inputs. (The interpreter multiplies bf16 operands as fp32
    after rounding them to bf16: the arithmetic of a bf16 tensor core with fp32 accumulation.)"""
    B, T, H, K, V, C, _, _ = CASES[DEFAULT] if ON_GPU else (1, 20, 1, 16, 16, 16, True, None)
    x = make_inputs(variant, B, T, H, K, V, dtype=dtype)
    do, dS = cotangents((B, T, H, V), (B, H, K, V))
    got = run_with_grads(chunk_triton(C), x, do, dS)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert all(gr.dtype == dtype for gr in got[2].values())
    assert_close(got, run_with_grads(oracle, x, do, dS), tol(dtype), f"{variant} {dtype}")


@pytest.mark.skipif(ON_GPU, reason="fp64 gradcheck runs under the CPU interpreter")
@pytest.mark.parametrize("variant, lengths", [("gla", [17]), ("gated_deltanet", [3, 17])])
def test_gradcheck_fp64(variant, lengths):
    """Analytic gradients of all inputs against finite differences of the kernel itself in fp64 (random
    projections: fast_mode), over a partial second chunk; a varlen batch for the delta rule."""
    C = 16
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    x = make_inputs(variant, 1, sum(lengths), 1, 16, 16, dtype=torch.float64, n_seq=len(lengths))
    names = [n for n in ("q", "k", "v", "g", "beta", "initial_state") if x[n] is not None]

    def f(*ts):  # one output: gradcheck then needs one backward per check instead of one per output
        o, S = chunk_triton(C, cu)(dict(x, **dict(zip(names, ts))))
        return torch.cat([o.flatten(), S.flatten()])

    inputs = tuple(x[n].clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_scale_and_no_final_state():
    x, (B, T, H, K, V, C, dtype) = case_inputs(DEFAULT, "gated_deltanet")
    args = (x["q"], x["k"], x["v"])
    kw = dict(g=x["g"], beta=x["beta"], initial_state=x["initial_state"], chunk_size=C)
    o, S = chunk_gated_delta_rule(*args, **kw)
    assert S is None
    o_default, _ = chunk_gated_delta_rule(*args, scale=K ** -0.5, **kw)
    assert torch.equal(o, o_default)
    o3, _ = chunk_gated_delta_rule(*args, scale=0.3, **kw)
    o_ref, _ = naive_recurrent_delta_rule(*args, beta=x["beta"], g=x["g"], scale=0.3, initial_state=x["initial_state"])
    assert rel(o3, o_ref) <= tol(dtype, T)


def test_scans_with_a_halved_v_block(monkeypatch):
    """On a GPU with more SMs than scan programs the scans split V finer (_scan_block_v): same results."""
    import archspace.kernels.triton_chunk as tc

    monkeypatch.setattr(tc, "_sm_count", lambda device: 10 ** 6)
    B, T, H, K, V, C, _, dtype = (1, 200, 4, 128, 128, 64, None, BF16) if ON_GPU else (1, 20, 1, 16, 64, 16, None, F32)
    x = make_inputs("gated_deltanet", B, T, H, K, V, dtype=dtype)
    do, dS = cotangents((B, T, H, V), (B, H, K, V))
    assert tc._scan_block_v(tc.prepare(x["q"], x["k"], x["v"], x["g"], x["beta"], None, None, None, C, "t"),
                            x["q"].device) == (32 if V > 32 else V)
    assert_close(run_with_grads(chunk_triton(C), x, do, dS), run_with_grads(oracle, x, do, dS),
                 tol(dtype, T), "halved V-block")


def test_split_sequence_equals_whole():
    """Carrying the final state of one call into the next is the same as one call (state gradients too)."""
    x, (B, T, H, K, V, C, dtype) = case_inputs(DEFAULT, "gated_deltanet")
    split = 300 if ON_GPU else 21
    do, dS = cotangents((B, T, H, V), (B, H, K, V))

    def two_calls(x):
        first = {n: None if t is None or n == "initial_state" else t[:, :split] for n, t in x.items()}
        second = {n: None if t is None or n == "initial_state" else t[:, split:] for n, t in x.items()}
        o1, S1 = chunk_triton(C)({**first, "initial_state": x["initial_state"]})
        o2, S2 = chunk_triton(C)({**second, "initial_state": S1})
        return torch.cat([o1, o2], 1), S2

    assert_close(run_with_grads(two_calls, x, do, dS), run_with_grads(chunk_triton(C), x, do, dS),
                 tol(dtype, T), "split vs whole")


@pytest.mark.parametrize("bad, message", [
    (dict(chunk_size=8), "chunk_size must be one of"),
    (dict(g="vector", beta=True), "vector (per-channel) gate with a delta term"),
    (dict(g="bad_shape"), "the log-gate g must be"),
    (dict(initial_state="bad_shape"), "initial_state must be [N, H, K, V]"),
    (dict(cu_seqlens=[0, 3, 9]), "cu_seqlens must rise from 0 to T"),
    (dict(cu_seqlens_batched=True), "batch must be flattened to B = 1"),
    (dict(v_dtype=torch.float64), "must share one dtype"),
    (dict(K=300), "key head dim 300 > 256"),
])
def test_bad_input_is_a_clear_error(bad, message):
    B, T, H, K, V = 1, 10, 1, bad.get("K", 16), 16
    x = make_inputs("linear_attention", B, T, H, K, V, init=False)
    kw = dict(chunk_size=bad.get("chunk_size", 16))
    if bad.get("g") == "vector":
        kw["g"] = torch.zeros(B, T, H, K, device=DEVICE)
    elif bad.get("g") == "bad_shape":
        kw["g"] = torch.zeros(B, T, device=DEVICE)
    if bad.get("beta"):
        kw["beta"] = torch.ones(B, T, H, device=DEVICE)
    if bad.get("initial_state"):
        kw["initial_state"] = torch.zeros(B, H, V, K + 1, device=DEVICE)
    if "cu_seqlens" in bad:
        kw["cu_seqlens"] = torch.tensor(bad["cu_seqlens"], device=DEVICE)
    q, k, v = x["q"], x["k"], x["v"].to(bad.get("v_dtype", torch.float32))
    if bad.get("cu_seqlens_batched"):
        q, k, v = (t.expand(2, *t.shape[1:]) for t in (q, k, v))
        kw["cu_seqlens"] = torch.tensor([0, T], device=DEVICE)
    with pytest.raises(ValueError) as err:
        chunk_gated_delta_rule(q, k, v, **kw)
    assert message in str(err.value) and "chunk_gated_delta_rule" in str(err.value)


@pytest.mark.skipif(ON_GPU, reason="on a GPU machine CUDA tensors are the supported input")
def test_tensors_on_the_wrong_device_are_refused():
    # the interpreter runs on CPU tensors; asking for another device is TritonUnavailable, never a fallback
    assert not triton_available("cuda")[0]
    with pytest.raises(TritonUnavailable, match="cannot run here"):
        x = make_inputs("linear_attention", 1, 4, 1, 16, 16, init=False)
        chunk_gated_delta_rule(x["q"].to("meta"), x["k"].to("meta"), x["v"].to("meta"), chunk_size=16)
