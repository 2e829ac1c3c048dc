"""``path: triton`` and ``path: auto`` through the kernel dispatch (blocks/dispatch.py).

A memory mixer on the triton path equals the same mixer on the chunked PyTorch path (outputs, the gradients of
the input and of every parameter), decodes with the fused recurrent kernel to the parallel forward's outputs,
and is refused where its kernels do not reach (a family without Triton kernels, a chunk size they do not take,
a device they cannot run on) with an error at the key, never by running another path. On a CPU the kernels run
under Triton's interpreter (tests/conftest.py), so the shapes are tiny.
"""
from __future__ import annotations

import dataclasses
import pytest
import torch

from archspace.blocks import dispatch
from archspace.blocks.config import InvalidConfig, ModelConfig, MoMConfig
from archspace.blocks.memory import MemoryMixer
from archspace.blocks.mom import MoMMixer

from blocks_testutil import MEMORY_PRESETS, MINIBATCH_PRESETS, rel_err

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
T_ODD, CHUNK = 21, 16
# fp32 on both paths: the kernels sum in other orders than the chunked PyTorch code, and multiply in tf32x3
# on a GPU; 1e-5 is the bound the chunked path itself meets against the token loop (test_blocks_memory.py).
TOL = 1e-5


def _perturbed(cfg, path: str, seed: int = 0) -> MemoryMixer:
    torch.manual_seed(seed)
    mod = MemoryMixer(dataclasses.replace(cfg, path=path, chunk_size=CHUNK)).to(DEVICE)
    with torch.no_grad():  # move weights off their init so every parameter matters
        for name, p in mod.named_parameters():
            if not name.endswith(("A_log", "dt_bias")):
                p.add_(0.3 * torch.randn_like(p) * (p.abs().mean() + 0.05))
    return mod


def _run(mod, x, w):
    x = x.clone().requires_grad_(True)
    y = mod(x)
    (y * w).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in mod.named_parameters()}


# the presets whose designs the Triton kernels compute (gla and delta_rule families with scalar gates); the others
# (DeltaProduct, RWKV-7, HGRN2, mLSTM, KDA, Longhorn, the mini-batch memories) are refused on the triton path
TRITON_PRESETS = sorted(n for n, c in MEMORY_PRESETS.items()
                        if dispatch._triton_problem(dataclasses.replace(c, chunk_size=CHUNK)) is None)
OTHER_PRESETS = sorted(set(MEMORY_PRESETS) - set(TRITON_PRESETS)) + sorted(MINIBATCH_PRESETS)


def _preset(name):
    return MEMORY_PRESETS[name] if name in MEMORY_PRESETS else MINIBATCH_PRESETS[name]


def test_the_triton_presets_are_the_linear_ones():
    assert set(TRITON_PRESETS) >= {"linear_attention", "retnet", "mamba2", "gla", "deltanet", "gated_deltanet"}
    assert {"kda", "deltaproduct", "rwkv7", "hgrn2", "mlstm", "longhorn", "titans_lmm"} <= set(OTHER_PRESETS)


@pytest.mark.parametrize("name", OTHER_PRESETS)
def test_presets_the_kernels_do_not_compute_are_refused_and_auto_runs_chunk(name):
    cfg = dataclasses.replace(_preset(name), chunk_size=CHUNK)
    with pytest.raises(InvalidConfig) as err:
        dataclasses.replace(cfg, path="triton")
    assert err.value.key == "path" and "path 'triton'" in str(err.value)
    auto = dataclasses.replace(cfg, path="auto")
    ops = dispatch.memory_ops(auto)
    assert "triton" not in ops.paths and ops.fused_step is None
    assert dispatch.resolve_path(ops, "auto", "cuda", CHUNK) == "chunk"


@pytest.mark.parametrize("name", TRITON_PRESETS)
def test_triton_path_equals_chunk_path(name):
    cfg = MEMORY_PRESETS[name]
    chunk = _perturbed(cfg, "chunk")
    tri = MemoryMixer(dataclasses.replace(cfg, path="triton", chunk_size=CHUNK)).to(DEVICE)
    tri.load_state_dict(chunk.state_dict())
    x = torch.randn(2, T_ODD, cfg.d_model, device=DEVICE)
    w = torch.randn_like(x)
    y0, dx0, g0 = _run(chunk, x, w)
    y1, dx1, g1 = _run(tri, x, w)
    assert rel_err(y1, y0) <= TOL
    assert rel_err(dx1, dx0) <= TOL
    for pname, g in g0.items():
        assert g1[pname] is not None and g1[pname].abs().max() > 0, pname
        assert rel_err(g1[pname], g) <= TOL, pname


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet"])
def test_fused_decode_equals_forward(name):
    mod = _perturbed(MEMORY_PRESETS[name], "triton")
    x = torch.randn(2, 5, mod.cfg.d_model, device=DEVICE)
    used = []
    real = dispatch.memory_ops(mod.cfg).fused_step
    with torch.no_grad():
        full = mod(x)
        state, ys = None, []
        for t in range(x.shape[1]):
            step = mod.ops.stepper(mod.cfg.path, x.device, mod.cfg.chunk_size)
            used.append(step is real)
            y, state = mod.step(x[:, t], state)
            ys.append(y)
    assert all(used), "the triton path decodes with the fused recurrent kernel"
    assert rel_err(torch.stack(ys, 1), full) <= TOL


def test_mixture_of_memories_on_the_triton_path():
    mem = dataclasses.replace(MEMORY_PRESETS["gated_deltanet"], chunk_size=CHUNK)
    torch.manual_seed(0)
    chunk = MoMMixer(MoMConfig(memory=dataclasses.replace(mem, path="chunk"), memories=3, top_k=2)).to(DEVICE)
    tri = MoMMixer(MoMConfig(memory=dataclasses.replace(mem, path="triton"), memories=3, top_k=2)).to(DEVICE)
    tri.load_state_dict(chunk.state_dict())
    x = torch.randn(2, T_ODD, mem.d_model, device=DEVICE)
    w = torch.randn_like(x)
    y0, dx0, g0 = _run(chunk, x, w)
    y1, dx1, g1 = _run(tri, x, w)
    assert rel_err(y1, y0) <= TOL and rel_err(dx1, dx0) <= TOL
    for pname, g in g0.items():
        if g is not None:
            assert rel_err(g1[pname], g) <= TOL, pname


@pytest.mark.skipif(ON_GPU, reason="on a GPU auto resolves to triton")
def test_auto_is_the_chunk_path_on_a_cpu():
    cfg = MEMORY_PRESETS["gated_deltanet"]
    chunk = _perturbed(cfg, "chunk")
    auto = MemoryMixer(dataclasses.replace(cfg, path="auto", chunk_size=CHUNK))
    auto.load_state_dict(chunk.state_dict())
    x = torch.randn(2, T_ODD, cfg.d_model)
    assert torch.equal(auto(x), chunk(x))  # the same op: bit for bit
    assert dispatch.resolve_path(auto.ops, "auto", "cpu", CHUNK) == "chunk"
    assert dispatch.resolve_path(auto.ops, "auto", "cpu", 128) == "chunk"


def test_auto_picks_triton_only_on_a_gpu_it_runs_on(monkeypatch):
    ops = dispatch.FAMILIES["delta_rule"]
    monkeypatch.setattr(dispatch, "triton_available", lambda device: (True, "cuda: test"))
    assert dispatch.resolve_path(ops, "auto", "cuda", 64) == "triton"
    assert dispatch.resolve_path(ops, "auto", "cuda", 128) == "chunk"  # a chunk size the kernels do not take
    assert dispatch.resolve_path(dispatch.FAMILIES["log_linear"], "auto", "cuda", 64) == "chunk"
    monkeypatch.setattr(dispatch, "triton_available", lambda device: (False, "sm_75"))
    assert dispatch.resolve_path(ops, "auto", "cuda", 64) == "chunk"


@pytest.mark.parametrize("change, key, words", [
    ({"hierarchy": "log_linear"}, "path", "no kernels for the log_linear family"),
    ({"chunk_size": 128}, "chunk_size", "takes chunk_size 16, 32, 64"),
    ({"feature_map": "taylor2", "key_dim": 16}, "path", "at most 256; feature_map 'taylor2' gives 273"),
    # the Miras values (issue 12): vector and deep memories, and the mini-batch engine's biases, retentions and
    # updates, are not what the Triton kernels compute
    ({"structure": "vector", "value_dim": 8}, "path", "computes matrix memories only, not structure 'vector'"),
    ({"structure": "mlp", "value_dim": 8}, "path", "computes matrix memories only, not structure 'mlp'"),
    ({"bias": "huber"}, "path", "runs on the mini-batch engine"),
    ({"retention": "lq"}, "path", "runs on the mini-batch engine"),
    ({"update": "momentum"}, "path", "runs on the mini-batch engine"),
    ({"update": "implicit"}, "path", "no kernels for the implicit family"),
])
def test_designs_the_kernels_do_not_compute_are_refused(change, key, words):
    cfg = MEMORY_PRESETS["gated_deltanet"]
    with pytest.raises(InvalidConfig) as err:
        dataclasses.replace(cfg, path="triton", **change)
    assert err.value.key == key and words in str(err.value)
    auto = dataclasses.replace(cfg, path="auto", **change)  # auto runs them on the chunk path
    assert "triton" not in dispatch.memory_ops(auto).paths


@pytest.mark.parametrize("name, words", [("kda", "scalar gates only"), ("deltaproduct", "delta_product family"),
                                         ("rwkv7", "dplr family"), ("mlstm", "mlstm family"), ("hgrn2", "hgrn2 family")])
def test_other_transitions_are_refused_on_triton(name, words):
    with pytest.raises(InvalidConfig, match=words):
        dataclasses.replace(MEMORY_PRESETS[name], path="triton", chunk_size=CHUNK)


def test_module_ops_pickle():
    """Spawned DDP pickles the model: the ops a mixer holds, the fused decoding step included."""
    import pickle

    mod = MemoryMixer(dataclasses.replace(MEMORY_PRESETS["gated_deltanet"], path="triton", chunk_size=CHUNK))
    assert pickle.loads(pickle.dumps(mod)).ops.fused_step.args == mod.ops.fused_step.args


def test_a_device_the_kernels_cannot_run_on_is_refused(monkeypatch):
    layer_cfg = dataclasses.replace(MEMORY_PRESETS["deltanet"], path="triton", chunk_size=CHUNK)
    from archspace.blocks.config import LayerConfig, SwiGLUConfig  # noqa: E402

    model = ModelConfig(vocab_size=16, d_model=layer_cfg.d_model,
                        layers=(LayerConfig(mixer=layer_cfg, mlp=SwiGLUConfig(layer_cfg.d_model, 64)),))
    monkeypatch.setattr(dispatch, "triton_available", lambda device: (False, "no CUDA device is available"))
    with pytest.raises(ValueError, match=r"layer 0 asks for path 'triton', which cannot run on cpu: no CUDA"):
        dispatch.check_device(model, "cpu")
    monkeypatch.setattr(dispatch, "triton_available", lambda device: (True, "cuda: test"))
    dispatch.check_device(model, "cuda")
    assert dispatch.kernel_paths(model) == ["delta_rule:triton"]


def test_train_refuses_triton_where_it_cannot_run_before_writing(tmp_path, monkeypatch, capsys):
    """On a machine without a GPU (here: the interpreter's availability answered as on a user's CPU machine)
    `archspace train` with path: triton is bad input: exit 2, one paragraph, no run folder."""
    from archspace.cli import main

    design = tmp_path / "tri.yaml"
    design.write_text(
        "schema_version: 1\nname: tri\nmodel:\n  d_model: 32\n  n_layers: 1\n  hybrid: {ratio: \"1:0\"}\n"
        "  mixer: {preset: gated_deltanet, heads: 2, path: triton}\n"
        "task:\n  name: mqar\n  vocab_size: 64\n  train: [{seq_len: 32, num_kv_pairs: 4, num_examples: 64}]\n"
        "  test: [{seq_len: 32, num_kv_pairs: 4, num_examples: 32}]\ntrain: {max_steps: 2, batch_size: 8}\n")
    monkeypatch.setattr(dispatch, "triton_available",
                        lambda device: (False, "Triton kernels run on CUDA devices, not on cpu"))
    assert main(["train", str(design), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "layer 0 asks for path 'triton', which cannot run on cpu: Triton kernels run on CUDA" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet"])
def test_signed_decays_on_the_triton_path_equal_the_chunk_path(name):
    """decay_range [-1, 1] (negative eigenvalues): the triton kernels run the sign-folded inputs like the chunked
    path (blocks/dispatch.py, signed_forward), forward, gradients and the fused decoding step."""
    cfg = dataclasses.replace(MEMORY_PRESETS[name], decay_range=[-1.0, 1.0])
    chunk = _perturbed(cfg, "chunk")
    with torch.no_grad():  # A = 1, a near 0.85 or 0.15 by head: a' near +-0.7 (away from 0, where log|a'| is steep)
        chunk.A_log.zero_()
        chunk.dt_bias.copy_(torch.tensor([-1.73, 1.74], device=DEVICE).repeat(cfg.heads // 2))
    tri = MemoryMixer(dataclasses.replace(cfg, path="triton", chunk_size=CHUNK)).to(DEVICE)
    tri.load_state_dict(chunk.state_dict())
    x = torch.randn(2, T_ODD, cfg.d_model, device=DEVICE)
    assert (chunk._paths(x, None, False)[3]["g_sign"] < 0).any()
    w = torch.randn_like(x)
    y0, dx0, g0 = _run(chunk, x, w)
    y1, dx1, g1 = _run(tri, x, w)
    assert rel_err(y1, y0) <= TOL and rel_err(dx1, dx0) <= TOL
    for pname, g in g0.items():
        assert rel_err(g1[pname], g) <= TOL, pname
    with torch.no_grad():
        state, ys = None, []
        for t in range(5):
            y, state = tri.step(x[:, t], state)
            ys.append(y)
        assert rel_err(torch.stack(ys, 1), tri(x[:, :5])) <= TOL
