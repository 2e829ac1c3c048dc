"""Language modelling on local text.

Corpus: ``corpus: stdlib`` (the running interpreter's standard-library ``*.py`` sources: every
file under ``sysconfig.get_paths()["stdlib"]`` outside ``site-packages``/``test``/``tests``/
``idlelib`` folders, in sorted relative-path order, whole files until ``max_bytes``; identical on
machines with the same Python, needs no download), or ``corpus: files`` with ``files:`` (paths or
globs): ``*.jsonl`` (one document per line, text in ``text_field``), ``*.parquet`` (one document per
row of column ``text_field``), anything else one document per file (UTF-8, invalid bytes replaced).

Tokenizers: ``bytes`` (ids 0-255 are bytes, 256 = <eos> between documents, 257 = <pad>; vocab 258)
or ``bpe`` (byte-level BPE trained on the training documents with the ``tokenizers`` library).

Token shards: ``train.bin`` / ``val.bin`` / ``test.bin`` (uint16 or uint32, read with ``numpy.memmap``)
plus ``meta.json`` under ``<cache>/<key>/`` where ``key`` hashes the corpus files' sha256 and the
tokenizer and split settings; ``cache`` is ``cache_dir``, else ``$ARCHSPACE_CACHE/lm``, else
``<results>/cache/lm`` (``$ARCHSPACE_RESULTS`` or ./results). The split is by document
(``val_fraction`` and ``test_fraction`` of the documents, chosen by ``seed``; the rest trains); each
split is the documents' tokens joined with <eos>. Training sequences are consecutive windows of
``seq_len + 1`` tokens (step ``seq_len``); validation (at every evaluation) and the test (once, at the
end) score the first ``max_val_sequences`` windows of their streams.

Metrics: batches carry ``n_bytes`` (UTF-8 bytes of each row's target tokens; <eos> and <pad>
count 0 bytes, so bits per byte include the cost of predicting <eos> without crediting bytes for it)
and the training module logs ``val/ppl = exp(mean nats per token)`` and
``val/bpb = total nats / (ln 2 * total bytes)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import TaskData, index_loader

__all__ = ["GENERATOR_VERSION", "EOS", "PAD", "stdlib_files", "corpus_files", "read_documents", "cache_root",
           "build_shards", "LMDataModule"]

GENERATOR_VERSION = 1
EOS, PAD = 256, 257
_EXCLUDE_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}


def stdlib_files(max_bytes: int) -> list[tuple[str, Path]]:
    """(relative name, path) of the demo corpus: stdlib *.py in sorted order up to max_bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDE_DIRS]
        for f in filenames:
            if f.endswith(".py"):
                p = Path(dirpath) / f
                found.append((p.relative_to(root).as_posix(), p))
    found.sort()
    out, total = [], 0
    for rel, p in found:
        size = p.stat().st_size
        if size == 0:
            continue
        if total + size > max_bytes:
            break
        out.append((rel, p))
        total += size
    return out


def corpus_files(task: dict[str, Any]) -> list[tuple[str, Path]]:
    if task["corpus"] == "stdlib":
        return stdlib_files(task["max_bytes"])
    from .specs import lm_file_matches

    out: list[tuple[str, Path]] = []
    for pattern in task["files"]:
        for m in lm_file_matches(pattern):
            p = Path(m)
            if not p.is_file():
                raise FileNotFoundError(f"lm corpus: no such file {m!r} (from files: {pattern!r})")
            out.append((p.as_posix(), p))
    return out


def read_documents(files: list[tuple[str, Path]], text_field: str, max_bytes: int) -> Iterator[str]:
    """Documents in file order, stopping once max_bytes of text have been produced."""
    total = 0
    for _, p in files:
        if p.suffix == ".jsonl":
            docs: Iterator[str] = (json.loads(line)[text_field] for line in p.read_text("utf-8").splitlines()
                                   if line.strip())
        elif p.suffix == ".parquet":
            import pyarrow.parquet as pq

            docs = iter(pq.read_table(p, columns=[text_field]).column(text_field).to_pylist())
        else:
            docs = iter([p.read_bytes().decode("utf-8", errors="replace")])
        for d in docs:
            if not isinstance(d, str) or not d:
                continue
            if total >= max_bytes:
                return
            total += len(d.encode("utf-8"))
            yield d


def cache_root(task: dict[str, Any]) -> Path:
    if task.get("cache_dir"):
        return Path(task["cache_dir"]).expanduser()
    if os.environ.get("ARCHSPACE_CACHE"):
        return Path(os.environ["ARCHSPACE_CACHE"]) / "lm"
    return Path(os.environ.get("ARCHSPACE_RESULTS", "results")).absolute() / "cache" / "lm"


def _file_sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_key(task: dict[str, Any], files: list[tuple[str, Path]]) -> str:
    """sha256 of the corpus files' contents and every setting that changes the token shards."""
    settings = {k: task[k] for k in ("corpus", "text_field", "max_bytes", "tokenizer", "vocab_size",
                                      "val_fraction", "test_fraction", "seed")}
    blob = json.dumps({"version": GENERATOR_VERSION, "settings": settings,
                       "files": [[rel, _file_sha(p)] for rel, p in files]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _train_bpe(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def build_shards(task: dict[str, Any]) -> Path:
    """Tokenize the corpus into <cache>/<content key>/ once; return that directory."""
    files = corpus_files(task)
    if not files:
        raise ValueError("lm corpus is empty")
    key = content_key(task, files)
    out = cache_root(task) / key
    if (out / "meta.json").is_file():
        return out
    docs = list(read_documents(files, task["text_field"], task["max_bytes"]))
    if len(docs) < 3:
        raise ValueError(f"lm corpus has {len(docs)} document(s); the train/validation/test split needs at least 3")
    rng = np.random.default_rng(np.random.SeedSequence(int(task["seed"]), spawn_key=(7,)))
    n_val = max(1, int(round(task["val_fraction"] * len(docs))))
    n_test = max(1, int(round(task["test_fraction"] * len(docs))))
    if n_val + n_test >= len(docs):
        raise ValueError(f"lm corpus has {len(docs)} documents: {n_val} for validation and {n_test} for the test "
                         "leave none to train on; lower val_fraction / test_fraction or add documents")
    perm = rng.permutation(len(docs)).tolist()
    held = {"val": set(perm[:n_val]), "test": set(perm[n_val:n_val + n_test])}  # validation as before the test split
    splits = {"train": [d for i, d in enumerate(docs) if i not in held["val"] | held["test"]],
              "val": [d for i, d in enumerate(docs) if i in held["val"]],
              "test": [d for i, d in enumerate(docs) if i in held["test"]]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=out.parent))
    vocab = int(task["vocab_size"])
    if task["tokenizer"] == "bytes":
        token_bytes = np.array([1] * 256 + [0, 0], dtype=np.int64)
        eos = EOS
    else:
        tok = _train_bpe(splits["train"], vocab)
        tok.save(str(tmp / "tokenizer.json"))
        eos = tok.token_to_id("<eos>")
        token_bytes = np.zeros(vocab, dtype=np.int64)
        for s, i in tok.get_vocab().items():
            if s not in ("<eos>", "<pad>"):
                token_bytes[i] = len(s)  # byte-level alphabet: one character per byte

        def encode(d: str) -> list[int]:
            return tok.encode(d).ids
    dtype = np.uint16 if vocab <= 65536 else np.uint32
    meta: dict[str, Any] = {"key": key, "vocab_size": vocab, "dtype": np.dtype(dtype).name, "eos": int(eos),
                            "tokenizer": task["tokenizer"], "files": len(files)}
    for split, sdocs in splits.items():
        parts = []
        for d in sdocs:
            ids = np.frombuffer(d.encode("utf-8"), dtype=np.uint8) if task["tokenizer"] == "bytes" \
                else np.asarray(encode(d), dtype=np.int64)
            parts.append(ids.astype(dtype))
            parts.append(np.array([eos], dtype=dtype))
        arr = np.concatenate(parts)
        arr.tofile(tmp / f"{split}.bin")
        meta[split] = {"documents": len(sdocs), "tokens": int(arr.size),
                       "bytes": int(sum(len(d.encode("utf-8")) for d in sdocs))}
    np.save(tmp / "token_bytes.npy", token_bytes)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class _Windows:
    """collate_fn: window i of a token stream -> {"input_ids", "labels", "slice", "n_bytes"}."""

    def __init__(self, path: Path, dtype: str, seq_len: int, token_bytes: np.ndarray):
        self.path, self.dtype, self.seq_len = path, dtype, seq_len
        self.token_bytes = torch.from_numpy(token_bytes)
        self._mm = None

    def __getstate__(self):
        return {**self.__dict__, "_mm": None}

    def _tokens(self) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._mm

    def __len__(self) -> int:
        return max(0, (self._tokens().size - 1) // self.seq_len)

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        mm = self._tokens()
        T = self.seq_len
        rows = np.stack([np.asarray(mm[i * T:i * T + T + 1], dtype=np.int64) for i in idx])
        x = torch.from_numpy(rows)
        labels = x[:, 1:].contiguous()
        return {"input_ids": x[:, :-1].contiguous(), "labels": labels,
                "slice": torch.zeros(len(idx), dtype=torch.int64),
                "n_bytes": self.token_bytes[labels].sum(dim=1)}


class LMDataModule(TaskData):
    def __init__(self, task: dict[str, Any], batch_size: int = 32, num_workers: int = 0):
        super().__init__(batch_size, task["seed"], num_workers)
        self.task = dict(task)
        self.dir: Path | None = None
        self.meta: dict | None = None
        self._train = self._val = self._test = None

    def slice_names(self, split: str) -> list[str]:
        return ["text"]

    def prepare_data(self) -> None:
        build_shards(self.task)

    def setup(self, stage: str | None = None) -> None:
        if self.dir is None:
            self.dir = build_shards(self.task)
            self.meta = json.loads((self.dir / "meta.json").read_text())
            tb = np.load(self.dir / "token_bytes.npy")
            T = int(self.task["seq_len"])
            self._train = _Windows(self.dir / "train.bin", self.meta["dtype"], T, tb)
            self._val = _Windows(self.dir / "val.bin", self.meta["dtype"], T, tb)
            self._test = _Windows(self.dir / "test.bin", self.meta["dtype"], T, tb)
            if len(self._train) == 0 or len(self._val) == 0 or len(self._test) == 0:
                raise ValueError(f"lm: a split is shorter than seq_len + 1 = {T + 1} tokens "
                                 f"(train {self.meta['train']['tokens']}, val {self.meta['val']['tokens']}, "
                                 f"test {self.meta['test']['tokens']})")

    def data_hash(self) -> str:
        """Corpus content + tokenizer/split settings (the cache key) + sequence settings."""
        self.setup()
        blob = json.dumps({"task": "lm", "generator_version": GENERATOR_VERSION, "content": self.meta["key"],
                           "seq_len": self.task["seq_len"], "max_val_sequences": self.task["max_val_sequences"]},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def train_dataloader(self) -> DataLoader:
        return index_loader(len(self._train), self._train, batch_size=self.batch_size, shuffle=True,
                            seed=self.seed, num_workers=self.num_workers)

    def _scored(self, windows: _Windows) -> DataLoader:
        n = min(len(windows), int(self.task["max_val_sequences"]))
        return index_loader(n, windows, batch_size=self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._scored(self._val)

    def test_dataloader(self) -> DataLoader:
        return self._scored(self._test)
