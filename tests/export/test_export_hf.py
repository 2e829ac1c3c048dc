"""The export in a fresh venv with torch + transformers (no archspace): AutoModelForCausalLM loads it
offline with trust_remote_code and gives the trained model's logits. A second design (RetNet memory,
a non-persistent decay buffer, the GLA kernel, sliding-window attention, no MLP, untied head) checks
the parts the first one does not use."""
from __future__ import annotations

import pytest
import torch

RETNET = """
schema_version: 1
name: retnet-swa
model:
  d_model: 16
  n_layers: 3
  hybrid: {pattern: MAM}
  mixer: {preset: retnet, heads: 2}
  attention: {preset: swa, heads: 2, window: 8}
  mlp: {kind: none}
  tie_embeddings: false
task:
  vocab_size: 64
  train: [{seq_len: 16, num_kv_pairs: 2, num_examples: 64}]
  test: [{seq_len: 16, num_kv_pairs: 2, num_examples: 32}]
"""

SCRIPT = r'''
import importlib.util, json, sys, logging
import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedModel

res = {{"archspace_importable": importlib.util.find_spec("archspace") is not None,
       "transformers": transformers.__version__}}
ids = torch.load({inputs!r})["ids"]
saved = {{}}
for key, path in {exports!r}.items():
    model, info = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, output_loading_info=True)
    model.eval()
    res[key] = {{"class": type(model).__name__, "is_pretrained": isinstance(model, PreTrainedModel),
                 "dtype": str(model.dtype),
                 "loading_info": {{k: sorted(map(str, v)) for k, v in info.items()}}}}
    with torch.no_grad():
        saved[key + "/hf"] = model(input_ids=ids).logits
        out = model(input_ids=ids, labels=ids)
    res[key]["loss_finite"] = bool(torch.isfinite(out.loss))
    mod = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".modeling_archspace"]  # the export's entry
    saved[key + "/hf_generate"] = mod.generate(model, ids[:1, :5], 24)
    plain = mod.load(path)  # the same file without going through transformers
    saved[key + "/generate"] = mod.generate(plain, ids[:1, :5], 24)
torch.save(saved, {out!r})
json.dump(res, open("result.json", "w"))
'''


@pytest.fixture(scope="module")
def retnet_export(tmp_path_factory):
    """A RetNet/SWA design with random (non-degenerate) weights, as a run directory, exported in-process."""
    from export_testutil import resolve_text
    from safetensors.torch import save_model

    from archspace.blocks.model import SequenceModel
    from archspace.export import export, select

    tmp = tmp_path_factory.mktemp("retnet")
    _, resolved = resolve_text(RETNET, tmp)
    run = tmp / "run"
    run.mkdir()
    (run / "resolved.yaml").write_text(resolved.to_yaml())
    torch.manual_seed(7)
    model = SequenceModel(resolved.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    save_model(model, str(run / "model.safetensors"))
    out = tmp / "export"
    res = export(select(str(run)), out)
    assert res.max_abs_diff == 0.0
    return out, model.eval()


def test_transformers_loads_export_offline(exported, retnet_export, reference_model, hf_python, tmp_path):
    from export_testutil import run_isolated

    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(3))
    torch.save({"ids": ids}, tmp_path / "inputs.pt")
    exports = {"tiny": str(exported), "retnet": str(retnet_export[0])}
    script = SCRIPT.format(inputs=str(tmp_path / "inputs.pt"), exports=exports, out=str(tmp_path / "out.pt"))
    res = run_isolated(hf_python, script, tmp_path, env_extra={
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    saved = torch.load(tmp_path / "out.pt")
    assert not res["archspace_importable"]
    print("transformers", res["transformers"])
    for key, ref in (("tiny", reference_model), ("retnet", retnet_export[1])):
        info = res[key]
        assert info["class"] == "ArchspaceForCausalLM" and info["is_pretrained"] and info["dtype"] == "torch.float32"
        assert info["loss_finite"]
        for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            assert not info["loading_info"].get(k), (key, k, info["loading_info"])
        with torch.no_grad():
            want = ref.logits(ref(ids))
        diff = (saved[key + "/hf"] - want).abs().max().item()
        print(f"{key}: max |logits diff| transformers vs trained: {diff:.3g}")
        assert diff <= 1e-5
        assert torch.equal(saved[key + "/hf_generate"], saved[key + "/generate"])
    # the export's generate() on the untied, windowed design equals recomputing the whole sequence
    ref = retnet_export[1]
    seq = ids[:1, :5]
    with torch.no_grad():
        for _ in range(24):
            seq = torch.cat([seq, ref.logits(ref(seq)[:, -1]).argmax(-1)[:, None]], 1)
    assert torch.equal(saved["retnet/generate"], seq)
