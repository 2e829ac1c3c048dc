"""chunk_gated_delta_rule (Triton) against the token-by-token oracles and the chunked PyTorch paths:
outputs, final states and the gradients of q, k, v, g, beta and the initial state, for every special case.

CPU: under Triton's interpreter at tiny shapes. GPU: the same tests at real shapes (ON_GPU)."""
import pytest
import torch

from archspace.kernels.delta_rule import naive_recurrent_delta_rule
from archspace.kernels.triton_chunk import chunk_gated_delta_rule
from archspace.kernels.triton_support import TritonUnavailable, triton_available

from triton_testutil import (DEVICE, ON_GPU, VARIANTS, assert_close, chunk_torch, chunk_triton, cotangents,
                              make_inputs, oracle, rel, run_with_grads, tol)

# (B, T, H, K, V, chunk_size, initial state): odd lengths, one token, a length that is a multiple of the
# chunk, K and V that are not powers of two (padded to the register tiles), K != V.
if ON_GPU:
    CASES = {
        "d128": (2, 1000, 4, 128, 128, 64, True),
        "d64_c32": (2, 777, 4, 64, 64, 32, True),
        "d100_pad": (1, 513, 4, 100, 72, 64, False),
        "one_token": (3, 1, 4, 128, 128, 64, True),
    }
else:
    CASES = {
        "one_token": (1, 1, 1, 16, 16, 16, False),
        "odd_c16": (2, 37, 1, 20, 12, 16, True),
        "c32_two_vblocks": (1, 40, 2, 16, 80, 32, True),  # V = 80: two V-blocks of 64, the second padded
    }


def test_interpreter_or_gpu_is_available():
    ok, reason = triton_available(DEVICE)
    assert ok, reason
    assert reason.startswith("cuda" if ON_GPU else "interpreter")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_oracle_and_chunked_torch(variant, case):
    B, T, H, K, V, C, init = CASES[case]
    x = make_inputs(variant, B, T, H, K, V, init=init)
    do, dS = cotangents((B, T, H, V), (B, H, K, V))
    got = run_with_grads(chunk_triton(C), x, do, dS)
    assert got[0].dtype == x["v"].dtype and got[1].dtype == torch.float32 and got[1].shape == (B, H, K, V)
    assert_close(got, run_with_grads(oracle, x, do, dS), tol(torch.float32, T), f"{variant}/{case} vs oracle")
    assert_close(got, run_with_grads(chunk_torch(C), x, do, dS), tol(torch.float32, T),
                 f"{variant}/{case} vs chunked torch")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_varlen_matches_sequences_one_by_one(variant):
    # lengths: shorter than a chunk, exactly one chunk, one token, empty, a chunk and a bit
    C = 64 if ON_GPU else 16
    lengths = [300, 64, 1, 0, 517] if ON_GPU else [5, 16, 1, 0, 19]
    H, K, V = (4, 128, 64) if ON_GPU else (1, 16, 12)
    T = sum(lengths)
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    x = make_inputs(variant, 1, T, H, K, V, n_seq=len(lengths))
    do, dS = cotangents((1, T, H, V), (len(lengths), H, K, V))
    got = run_with_grads(chunk_triton(C, cu), x, do, dS)

    def one_by_one(x):  # the oracle on each sequence from its own initial state
        outs, finals = [], []
        for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            xi = {n: None if t is None else t[:, a:b] for n, t in x.items() if n != "initial_state"}
            xi["initial_state"] = x["initial_state"][i:i + 1]
            o, S = oracle(xi) if b > a else (xi["v"], xi["initial_state"])  # the oracle needs T >= 1
            outs.append(o)
            finals.append(S)
        return torch.cat(outs, 1), torch.cat(finals, 0)

    assert_close(got, run_with_grads(one_by_one, x, do, dS), tol(torch.float32, T), f"{variant} varlen")
    # an empty sequence passes its initial state through
    assert torch.equal(got[1][3], x["initial_state"][3])


@pytest.mark.parametrize("variant", ["mamba2", "gla", "gated_deltanet"])
def test_zero_gates_and_strong_decay(variant):
    """Log-gates exactly 0 at half the tokens (decay 1 there) and down to -5 per token at the others
    (exp(-cumsum) would overflow in fp32 within one chunk), step sizes beta exactly 0 at a quarter."""
    B, T, H, K, V, C, _ = CASES["d64_c32" if ON_GPU else "odd_c16"]
    x = make_inputs(variant, B, T, H, K, V, zero_gate_p=0.5, zero_beta_p=0.25, strong=True)
    do, dS = cotangents((B, T, H, V), (B, H, K, V))
    got = run_with_grads(chunk_triton(C), x, do, dS)
    assert_close(got, run_with_grads(oracle, x, do, dS), tol(torch.float32, T), f"{variant} zero gates")


@pytest.mark.parametrize("variant", ["mamba2", "gla", "gated_deltanet"])
def test_all_zero_gate_equals_no_gate(variant):
    ungated = {"mamba2": "linear_attention", "gla": "linear_attention", "gated_deltanet": "deltanet"}[variant]
    B, T, H, K, V, C, _ = CASES["c32_two_vblocks" if not ON_GPU else "d64_c32"]
    x = make_inputs(ungated, B, T, H, K, V)
    gate_shape = (B, T, H, K) if variant == "gla" else (B, T, H)
    o0, S0 = chunk_triton(C)(x)
    o1, S1 = chunk_triton(C)({**x, "g": torch.zeros(gate_shape, device=DEVICE)})
    assert rel(o1, o0) <= tol(torch.float32, T) and rel(S1, S0) <= tol(torch.float32, T)


def test_constant_decay_through_expand():
    """RetNet's fixed per-head decay is the scalar gate g = log(gamma_h) expanded over B and T; its
    gradient sums over the expanded positions (autograd's expand)."""
    B, T, H, K, V, C, _ = CASES["c32_two_vblocks" if not ON_GPU else "d64_c32"]
    x = make_inputs("linear_attention", B, T, H, K, V)
    log_gamma = torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(H, dtype=torch.float64))).float().to(DEVICE)
    grads = []
    for fn in (chunk_triton(C), oracle):
        lg = log_gamma.clone().requires_grad_(True)
        o, S = fn({**x, "g": lg.expand(B, T, H)})
        (o.sum() + S.sum()).backward()
        grads.append((o, S, lg.grad))
    for a, b in zip(*grads):
        assert rel(a, b) <= tol(torch.float32, T)


LOW_PRECISION = ([(v, d) for v in VARIANTS for d in (torch.bfloat16, torch.float16)] if ON_GPU else
                 [("gla", torch.bfloat16), ("gated_deltanet", torch.bfloat16), ("gated_deltanet", torch.float16)])


@pytest.mark.parametrize("variant, dtype", LOW_PRECISION)
def test_low_precision_inputs(variant, dtype):
    """16-bit inputs: o and every gradient in the input dtype, the final state in fp32; compared with
    the oracle in fp32 on the same rounded inputs. (The interpreter multiplies bf16 operands as fp32
    after rounding them to bf16: the arithmetic of a bf16 tensor core with fp32 accumulation.)"""
    B, T, H, K, V, C, _ = CASES["d128"] if ON_GPU else (1, 20, 1, 16, 16, 16, True)
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
    B, T, H, K, V, C, _ = CASES["odd_c16" if not ON_GPU else "d64_c32"]
    x = make_inputs("gated_deltanet", B, T, H, K, V)
    args = (x["q"], x["k"], x["v"])
    kw = dict(g=x["g"], beta=x["beta"], initial_state=x["initial_state"], chunk_size=C)
    o, S = chunk_gated_delta_rule(*args, **kw)
    assert S is None
    o_default, _ = chunk_gated_delta_rule(*args, scale=K ** -0.5, **kw)
    assert torch.equal(o, o_default)
    o3, _ = chunk_gated_delta_rule(*args, scale=0.3, **kw)
    o_ref, _ = naive_recurrent_delta_rule(*args, x["beta"], x["g"], scale=0.3, initial_state=x["initial_state"])
    assert rel(o3, o_ref) <= tol(torch.float32, T)


def test_scans_with_a_halved_v_block(monkeypatch):
    """On a GPU with more SMs than scan programs the scans split V finer (_scan_block_v): same results."""
    import archspace.kernels.triton_chunk as tc

    monkeypatch.setattr(tc, "_sm_count", lambda device: 10 ** 6)
    B, T, H, K, V, C = (1, 200, 2, 64, 128, 64) if ON_GPU else (1, 20, 1, 16, 64, 16)
    x = make_inputs("gated_deltanet", B, T, H, K, V)
    do, dS = cotangents((B, T, H, V), (B, H, K, V))
    assert tc._scan_block_v(tc.prepare(x["q"], x["k"], x["v"], x["g"], x["beta"], None, None, None, C, "t"),
                            x["q"].device) == 32
    assert_close(run_with_grads(chunk_triton(C), x, do, dS), run_with_grads(oracle, x, do, dS),
                 tol(torch.float32, T), "halved V-block")


def test_split_sequence_equals_whole():
    """Carrying the final state of one call into the next is the same as one call (state gradients too)."""
    B, T, H, K, V, C, _ = CASES["d64_c32"] if ON_GPU else (1, 37, 1, 16, 16, 16, True)
    x = make_inputs("gated_deltanet", B, T, H, K, V)
    split = 300 if ON_GPU else 21
    do, dS = cotangents((B, T, H, V), (B, H, K, V))

    def two_calls(x):
        first = {n: None if t is None or n == "initial_state" else t[:, :split] for n, t in x.items()}
        second = {n: None if t is None or n == "initial_state" else t[:, split:] for n, t in x.items()}
        o1, S1 = chunk_triton(C)({**first, "initial_state": x["initial_state"]})
        o2, S2 = chunk_triton(C)({**second, "initial_state": S1})
        return torch.cat([o1, o2], 1), S2

    assert_close(run_with_grads(two_calls, x, do, dS), run_with_grads(chunk_triton(C), x, do, dS),
                 tol(torch.float32, T), "split vs whole")


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
