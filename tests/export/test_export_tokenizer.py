"""Export ships the task's tokenizer: BPE trained on the corpus, a description of the byte tokenizer,
nothing for synthetic tasks."""
import json

from archspace.export import export_tokenizer
from archspace.grammar import TaskSpec


def _lm(tmp_path, **kw):
    texts = [f"doc {i}: " + "memory layers recall keys and values. " * (3 + i % 5) for i in range(30)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    return TaskSpec.model_validate({"name": "lm", "corpus": "files", "files": [str(tmp_path / "c.jsonl")], "seq_len": 16,
                                    "cache_dir": str(tmp_path / "cache"), **kw}).model_dump()


def test_bpe_tokenizer_is_exported_and_encodes_like_training(tmp_path):
    from tokenizers import Tokenizer

    from archspace.tasks.lm import build_shards

    task = _lm(tmp_path, tokenizer="bpe", vocab_size=300)
    out = tmp_path / "out"
    out.mkdir()
    note = export_tokenizer(task, out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    trained = Tokenizer.from_file(str(build_shards(task) / "tokenizer.json"))
    text = "memory layers recall keys"
    assert tok.encode(text).ids == trained.encode(text).ids and tok.get_vocab_size() == 300
    assert "BPE" in note


def test_byte_tokenizer_is_described(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    note = export_tokenizer(_lm(tmp_path), out)
    spec = json.loads((out / "tokenizer.json").read_text())
    assert spec["type"] == "bytes" and spec["eos_id"] == 256 and spec["pad_id"] == 257 and "byte" in note


def test_synthetic_task_has_no_tokenizer(tmp_path):
    note = export_tokenizer({"name": "mqar", "vocab_size": 64}, tmp_path)
    assert not (tmp_path / "tokenizer.json").exists() and "no tokenizer" in note
