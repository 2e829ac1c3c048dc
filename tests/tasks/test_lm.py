"""Language modelling: stdlib demo corpus, byte and BPE tokenizers, memmap shard cache, split by document,
JSONL/parquet input, and a 5-step training run logging val/ppl and val/bpb."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from archspace.grammar import TaskSpec, load_design
from archspace.tasks import lm

ROOT = Path(__file__).resolve().parents[2]


def _task(tmp_path, **kw):
    return TaskSpec.model_validate({"name": "lm", "max_bytes": 150_000, "seq_len": 64, "max_val_sequences": 8,
                                    "cache_dir": str(tmp_path / "cache"), **kw}).model_dump()


def test_stdlib_corpus_is_deterministic_and_capped():
    a = lm.stdlib_files(300_000)
    assert a == lm.stdlib_files(300_000) and len(a) > 3
    assert [r for r, _ in a] == sorted(r for r, _ in a)
    assert sum(p.stat().st_size for _, p in a) <= 300_000
    assert all(r.endswith(".py") and "site-packages" not in r for r, _ in a)


def test_byte_shards_cached_by_content_and_split_by_document(tmp_path):
    t = _task(tmp_path)
    d = lm.build_shards(t)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["vocab_size"] == 258 and meta["dtype"] == "uint16"
    assert meta["train"]["documents"] >= 1 and meta["val"]["documents"] >= 1
    tr = np.memmap(d / "train.bin", dtype=np.uint16, mode="r")
    va = np.memmap(d / "val.bin", dtype=np.uint16, mode="r")
    # bytes tokenizer: tokens = bytes + one <eos> per document
    assert tr.size == meta["train"]["bytes"] + meta["train"]["documents"]
    assert (tr == lm.EOS).sum() == meta["train"]["documents"] and tr.max() <= lm.EOS
    te = np.memmap(d / "test.bin", dtype=np.uint16, mode="r")
    # split by document: the three streams hold disjoint whole documents that together are the corpus
    docs = [d_.encode() for d_ in lm.read_documents(lm.corpus_files(t), "text", t["max_bytes"])]
    def _docs(arr):
        cut = np.nonzero(np.asarray(arr) == lm.EOS)[0]
        starts = np.concatenate([[0], cut[:-1] + 1])
        return [np.asarray(arr[s_:e], dtype=np.uint8).tobytes() for s_, e in zip(starts, cut)]
    tr_docs, va_docs, te_docs = _docs(tr), _docs(va), _docs(te)
    assert not set(tr_docs) & set(va_docs) and not set(te_docs) & (set(tr_docs) | set(va_docs))
    assert sorted(tr_docs + va_docs + te_docs) == sorted(docs)
    # second build hits the cache (same dir, untouched); a different setting makes a new entry
    mtime = (d / "train.bin").stat().st_mtime_ns
    assert lm.build_shards(t) == d and (d / "train.bin").stat().st_mtime_ns == mtime
    assert lm.build_shards({**t, "seed": 1}) != d


def test_jsonl_parquet_and_bpe(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"document {i}: " + "the quick brown fox jumps over the lazy dog. " * (9 + i % 7) for i in range(40)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": s, "id": i}) for i, s in enumerate(texts[:20])))
    pq.write_table(pa.table({"body": texts[20:]}), tmp_path / "b.parquet")
    t = _task(tmp_path, corpus="files", files=[str(tmp_path / "a.jsonl")], tokenizer="bpe", vocab_size=300)
    d = lm.build_shards(t)
    assert (d / "tokenizer.json").is_file()
    meta = json.loads((d / "meta.json").read_text())
    assert meta["train"]["documents"] + meta["val"]["documents"] + meta["test"]["documents"] == 20
    assert meta["train"]["tokens"] < meta["train"]["bytes"]  # BPE compresses
    t2 = _task(tmp_path, corpus="files", files=[str(tmp_path / "b.parquet")], text_field="body")
    m2 = json.loads((lm.build_shards(t2) / "meta.json").read_text())
    assert m2["train"]["documents"] + m2["val"]["documents"] + m2["test"]["documents"] == 20
    dm = lm.LMDataModule(t, batch_size=4)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["input_ids"].shape == (4, 64) and (b["labels"] != -100).all() and (b["slice"] == 0).all()
    assert np.array_equal(b["input_ids"][:, 1:].numpy(), b["labels"][:, :-1].numpy())
    assert (b["n_bytes"] > 64).all()  # BPE tokens carry more than one byte each on average


def test_demo_recipe_space_and_five_step_training(tmp_path, monkeypatch):
    from archspace.compiler import resolve
    from archspace.study.space import load_space
    from archspace.training import train

    monkeypatch.setenv("ARCHSPACE_CACHE", str(tmp_path / "cache"))
    space = load_space(ROOT / "spaces" / "lm_demo.yaml")
    assert space.base["task"]["name"] == "lm"
    design_file = tmp_path / "d.yaml"
    design_file.write_text("model: {d_model: 32, n_layers: 2, mixer: {preset: gated_deltanet, heads: 2}}\n"
                           "task: lm_stdlib_bytes\n"
                           "train: {max_steps: 5, batch_size: 4, eval_every: 5, warmup_steps: 1, checkpoint: false,"
                           " threads: 1}\n")
    (tmp_path / "studies").symlink_to(ROOT / "studies")
    design, _ = load_design(design_file)
    assert design.task.name == "lm" and design.task.corpus == "stdlib" and design.task.vocab_size == 258
    small = design.task.model_copy(update={"max_bytes": 200_000, "seq_len": 64})  # keep the test fast
    design = design.model_copy(update={"task": small})
    m = train(resolve(design), tmp_path / "run", progress=False)
    for key in ("val/ppl", "val/bpb", "test/ppl", "test/bpb"):
        assert math.isfinite(m[key]) and m[key] > 0, key
    assert m["val/ppl"] == pytest.approx(math.exp(m["val/loss"]), rel=1e-4)
    assert m["val/bpb"] < 9  # a 258-way uniform guess is 8.01 bits per byte
    hist = (tmp_path / "run" / "history.csv").read_text()
    assert "val/ppl" in hist and "val/bpb" in hist
    assert len(m["data_hash"]) == 16
