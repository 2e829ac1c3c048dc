"""Behaviour fingerprint of seeded builds: prove a refactor changes nothing a user can observe.

    python tools/fingerprint.py save FILE.pt      # at the old commit (or the new one)
    python tools/fingerprint.py compare OLD.pt NEW.pt

For every case (each memory preset as a plain mixer, with each retention / bias combination that
the grammar allows, log-linear, inside Mixture-of-Memories, inside each Titans variant, attention,
and every shipped example design) it builds the model from a YAML mapping through the public path
(grammar -> compiler -> blocks) at a fixed seed, then records

    names     the state dict's parameter names, in order
    weights   the sha256 of every tensor's bytes, in order
    logits    the forward logits on a fixed batch, and the decode-step logits token by token
    grads     the gradient of a fixed loss wrt every parameter (sha256)
    cost      params, state and FLOPs from the accounting

`compare` prints, per case, whether names and weights are bit-identical and the largest absolute
difference of the outputs, and exits 1 when anything differs. One thread is used so that reductions
run in the same order in both runs.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

MEMORY_PRESETS = ("linear_attention", "retnet", "mamba2", "gla", "deltanet", "gated_deltanet")
NEW_TRANSITIONS = ("kda", "deltaproduct", "gated_deltaproduct", "rwkv7", "hgrn2", "mlstm")
SCALAR_FORMS = ("mamba2", "gated_deltanet", "retnet", "deltanet")  # log-linear admits these retentions
# presets whose layers share a model-level input (blocks/model.py), which compositions do not take
MODEL_LEVEL = {"hgrn2": {"learned_lower_bounds": False}, "rwkv7": {"value_residual": False}}
# the Miras presets (issue 12): deep mini-batch memories and Longhorn's implicit step
MIRAS_PRESETS = ("titans_lmm", "ttt_linear", "ttt_mlp", "moneta", "yaad", "memora", "atlas", "longhorn")


def _cases() -> dict[str, dict]:
    base = {"d_model": 32, "n_layers": 2, "mlp": {"kind": "swiglu"}}
    task = {"name": "mqar", "vocab_size": 64,
            "train": [{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 16}],
            "test": [{"seq_len": 32, "num_kv_pairs": 4, "num_examples": 16}]}
    cases: dict[str, dict] = {}

    def add(name: str, mixer: dict, **model):
        m = copy.deepcopy(base)
        m.update(model)
        m["mixer"] = mixer
        cases[name] = {"name": name.replace("/", "_"), "model": m, "task": task}

    for p in MEMORY_PRESETS:
        add(f"plain/{p}", {"preset": p, "heads": 2})
        add(f"plain-ref/{p}", {"preset": p, "heads": 2, "path": "reference"})
        add(f"hybrid/{p}", {"preset": p, "heads": 2}, hybrid={"pattern": "MA"})
        # compositions take no model-level inputs: those presets' shared parts off (their defaults, so the hashes
        # of these cases are those from before the presets had them)
        off = MODEL_LEVEL.get(p, {})
        add(f"mom/{p}", {"preset": p, "heads": 2, "mom": {"memories": 3, "top_k": 2}, **off})
        add(f"mom-kv/{p}", {"preset": p, "heads": 2, "mom": {"memories": 2, "top_k": 1, "shared_memory": False,
                                                             "share_kv": True, "capacity": 1.0}, **off})
        for v in ("mac", "mag", "mal"):
            add(f"titans-{v}/{p}", {"preset": p, "heads": 2, "titans": {"variant": v, "segment": 8, "window": 8},
                                    **off})
        for v in ("mag", "mal"):  # a Mixture-of-Memories as the memory branch
            add(f"titans-{v}-mom/{p}", {"preset": p, "heads": 2, "mom": {"memories": 3, "top_k": 2},
                                        "titans": {"variant": v, "window": 8}, **off})
    for p in SCALAR_FORMS:
        add(f"log_linear/{p}", {"preset": p, "heads": 2, "hierarchy": "log_linear", "levels": 5,
                                 "chunk_size": 8})
        add(f"mom-log_linear/{p}", {"preset": p, "heads": 2, "hierarchy": "log_linear", "levels": 4,
                                     "chunk_size": 8, "mom": {"memories": 2, "top_k": 1}})
    for p in MIRAS_PRESETS:
        add(f"miras/{p}", {"preset": p, "chunk_size": 8})
        add(f"miras-ref/{p}", {"preset": p, "chunk_size": 8, "path": "reference"})
        add(f"mom/{p}", {"preset": p, "chunk_size": 8, "mom": {"memories": 3, "top_k": 2}})
    for v in ("mac", "mag", "mal"):
        add(f"titans-{v}/titans_lmm", {"preset": "titans_lmm", "chunk_size": 8,
                                       "titans": {"variant": v, "segment": 8, "window": 8}})
    add("vector/gla", {"preset": "gla", "heads": 2, "structure": "vector"})
    add("vector/gated_deltanet", {"preset": "gated_deltanet", "heads": 2, "structure": "vector"})
    # every value of the bias x retention x feature-map tables (a new value shows up as a new case)
    from archspace.blocks.config import MEMORY_AXES
    from archspace.blocks.compat import violations

    for bias in MEMORY_AXES["bias"]:
        for ret in MEMORY_AXES["retention"]:
            for fm in MEMORY_AXES["feature_map"]:
                mixer = {"type": "memory", "heads": 2, "bias": bias, "retention": ret, "feature_map": fm,
                         "key_norm": "l2" if bias == "l2" else "none", "short_conv": 3, "output_gate": True,
                         "chunk_size": 8}
                if not violations(mixer):
                    add(f"axes/{bias}-{ret}-{fm}", mixer)
    # the presets of the richer transitions (issue 13), in every composition the compatibility table allows
    from archspace.blocks.presets import PRESETS

    for p in NEW_TRANSITIONS:
        add(f"plain/{p}", {"preset": p, "heads": 2, "chunk_size": 8})
        add(f"plain-ref/{p}", {"preset": p, "heads": 2, "path": "reference"})
        add(f"hybrid/{p}", {"preset": p, "heads": 2, "chunk_size": 8}, hybrid={"pattern": "MA"})
        composed = {"mom": {"mom": {"memories": 3, "top_k": 2}}, **{
            f"titans-{v}": {"titans": {"variant": v, "segment": 8, "window": 8}} for v in ("mac", "mag", "mal")}}
        for label, extra in composed.items():
            extra = {**extra, **MODEL_LEVEL.get(p, {})}
            if not violations({**PRESETS[p], **extra}):
                add(f"{label}/{p}", {"preset": p, "heads": 2, "chunk_size": 8, **extra})
    add("attention", {"preset": "attention", "heads": 2}, hybrid={"ratio": "0:1"})
    add("swa-conv", {"preset": "swa", "heads": 2, "window": 8, "short_conv": 4}, hybrid={"ratio": "0:1"})
    add("moe", {"preset": "gated_deltanet", "heads": 2}, mlp={"kind": "moe", "experts": 4, "top_k": 2})
    return cases


def _shipped() -> dict[str, Path]:
    return {f"file/{p.relative_to(ROOT)}": p for p in sorted((ROOT / "examples").rglob("*.yaml"))}


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _record(design, seq_len: int) -> dict:
    from archspace.compiler import build_model, resolve

    resolved = resolve(design)
    torch.manual_seed(0)
    model = build_model(resolved)
    sd = model.state_dict()
    vocab = resolved.model.vocab_size
    g = torch.Generator().manual_seed(1)
    T = min(seq_len, 24)
    ids = torch.randint(0, vocab, (2, T), generator=g)
    model.train()
    h = model(ids)
    logits = model.logits(h)
    loss = logits.float().logsumexp(-1).mean() - logits[..., 0].mean()
    aux = model.aux_loss()
    if aux is not None:
        loss = loss + aux
    loss.backward()
    grads = {n: _sha(p.grad) if p.grad is not None else None for n, p in model.named_parameters()}
    model.eval()
    steps = []
    with torch.no_grad():
        state = None
        for t in range(min(T, 12)):
            lg, state = model.step(ids[:, t], state)
            steps.append(lg)
    cost = model.cost(seq_len)
    return {
        "design_hash": resolved.design_hash,
        "names": list(sd.keys()),
        "weights": [_sha(v) for v in sd.values()],
        "logits": logits.detach(),
        "step_logits": torch.stack(steps, 1),
        "grads": grads,
        "cost": (cost.params, cost.state, cost.flops_per_token, cost.active_params),
    }


def save(path: str) -> None:
    import json
    import tempfile

    from archspace.grammar import load_design

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, data) in enumerate(_cases().items()):
            f = Path(tmp) / f"case{i}.yaml"
            f.write_text(json.dumps(data))  # JSON is YAML: the file goes through the user's path
            design, _ = load_design(f)
            out[name] = _record(design, 32)
    for name, p in _shipped().items():
        design, _ = load_design(p)
        out[name] = _record(design, 64)
    torch.save(out, path)
    print(f"{len(out)} cases -> {path}")


def compare(old_path: str, new_path: str) -> int:
    old, new = torch.load(old_path), torch.load(new_path)
    bad = 0
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            print(f"{name:40s} only in {'new' if name in new else 'old'}")
            continue
        a, b = old[name], new[name]
        problems = []
        if a["names"] != b["names"]:
            problems.append("parameter names differ")
        elif a["weights"] != b["weights"]:
            problems.append("weights differ")
        if a["design_hash"] != b["design_hash"]:
            problems.append(f"design hash {a['design_hash']} -> {b['design_hash']}")
        if a["cost"] != b["cost"]:
            problems.append(f"cost {a['cost']} -> {b['cost']}")
        for key in ("logits", "step_logits"):
            d = (a[key] - b[key]).abs().max().item() if a[key].shape == b[key].shape else float("inf")
            if d != 0.0:
                problems.append(f"{key} max |diff| {d:.3g}")
        if a["grads"] != b["grads"]:
            diff = [n for n in a["grads"] if a["grads"].get(n) != b["grads"].get(n)]
            problems.append(f"grads differ ({len(diff)}: {', '.join(diff[:3])})")
        if problems:
            bad += 1
            print(f"{name:40s} " + "; ".join(problems))
    print(f"{len(set(old) & set(new))} cases compared, {bad} differ")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("file")
    c = sub.add_parser("compare")
    c.add_argument("old")
    c.add_argument("new")
    args = ap.parse_args()
    if args.cmd == "save":
        save(args.file)
        return 0
    return compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
