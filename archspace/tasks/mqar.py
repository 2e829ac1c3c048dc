"""Multi-query associative recall (MQAR).

The task of Zoology (Arora et al. 2023, "Zoology: Measuring and Improving Recall in
Efficient Language Models", https://arxiv.org/abs/2312.04927). One example of length
``seq_len`` with ``num_kv_pairs`` pairs and vocabulary ``V`` looks like::

    k1 v1 k2 v2 ... kn vn | q . q . . . q . ...
    \\___ context ______/   \\___ query region: space = (seq_len - 2n) // 2 slots ___/

* keys are drawn without replacement from ``[1, V//2)`` (id 0 marks filler before the
  noise fill), values without replacement from ``[V//2, V)``;
* every key is queried exactly once, at position ``2n + 2*gap``; the gaps are drawn
  without replacement from ``[0, space)`` with probability ``p(i) ∝ a * i**(a-1)``,
  ``i = gap + 1`` (``a = power_a = 0.01`` puts most queries near the start of the
  query region);
* ``labels[t]`` is the token the model should emit after reading ``inputs[t]``: the
  key's value at every query position, ``-100`` (ignored by the loss) elsewhere;
* with ``random_non_queries`` (default, as in Zoology) every remaining filler position
  is replaced by a token drawn uniformly from ``[0, V)``;
* with ``repeat = r > 1`` (multi-pass, JRT: Arora et al. 2024, "Just read twice: closing
  the recall gap for recurrent language models", https://arxiv.org/abs/2407.05483) the
  key-value context ``k1 v1 ... kn vn`` is read ``r`` times before the query region, so an
  example is ``seq_len + (r - 1) * 2n`` tokens long; labels stay on the query positions,
  i.e. only after the final pass. ``repeat = 1`` produces exactly the single-pass data.

Sampling without replacement is vectorised over examples: uniform subsets come from
whole-row rejection sampling when collisions are rare and from random sort keys
otherwise; the power-law gaps from the exponential race (Efraimidis-Spirakis), which has
the same distribution as ``numpy.random.choice(replace=False, p=p)`` (successive
sampling). All randomness comes from a ``numpy.random.Generator`` seeded explicitly.

Training order (``order``): ``"mixed"`` (default) shuffles the whole train mixture every epoch,
rows padded to its longest slice. ``"curriculum"`` serves the slices one after another in the
order they are listed (each slice's rows shuffled, no batch mixes two slices, every batch cropped
to its slice's length), so a mixture listed short to long is a curriculum whose phases last
``ceil(num_examples / batch_size)`` steps each; the next epoch starts again from the first slice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

import warnings

from .data import IGNORE_INDEX, Gather, GeneratedSplits, TokenSplit, overlap, shared_rows

__all__ = [
    "GENERATOR_VERSION",
    "IGNORE_INDEX",
    "MQARSlice",
    "MQARDataModule",
    "DEFAULT_TRAIN",
    "DEFAULT_TEST",
    "generate_mqar",
    "validate_mqar",
    "slice_seed",
    "overlap",
    "held_out",
    "mqar_accuracy",
]

#: Bump whenever generation changes in a way that alters the produced tokens.
GENERATOR_VERSION = 1

# Rough bound on the number of float sort keys held at once (rows * population).
_CHUNK_ELEMS = 1 << 22


@dataclass(frozen=True)
class MQARSlice:
    """One (seq_len, num_kv_pairs) setting of a train or test mixture."""

    seq_len: int
    num_kv_pairs: int
    num_examples: int

    @property
    def name(self) -> str:
        return f"seq{self.seq_len}_kv{self.num_kv_pairs}"

    def length(self, repeat: int = 1) -> int:
        """Tokens per example when the context is read ``repeat`` times."""
        return self.seq_len + (repeat - 1) * 2 * self.num_kv_pairs


# Zoology's standard MQAR mixtures (vocab 8192): train on lengths up to 256,
# test on the same lengths with more pairs per length.
DEFAULT_TRAIN: tuple[MQARSlice, ...] = tuple(MQARSlice(*s) for s in (
    (64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000), (256, 32, 20_000), (256, 64, 20_000)))
DEFAULT_TEST: tuple[MQARSlice, ...] = tuple(MQARSlice(*s) for s in (
    (64, 4, 1_000), (64, 8, 1_000), (64, 16, 1_000), (128, 32, 1_000), (256, 64, 1_000)))

_SPLIT_IDS = {"train": 0, "test": 1, "val": 2}


def validate_mqar(vocab_size: int, seq_len: int, num_kv_pairs: int, num_examples: int = 1,
                  power_a: float = 0.01) -> None:
    """Raise ``ValueError`` naming the first setting MQAR cannot be generated with."""
    for name, val in (("vocab_size", vocab_size), ("seq_len", seq_len),
                      ("num_kv_pairs", num_kv_pairs), ("num_examples", num_examples)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise ValueError(f"MQAR: {name} must be an int, got {val!r}")
    if num_kv_pairs < 1:
        raise ValueError(f"MQAR: num_kv_pairs must be >= 1, got {num_kv_pairs}")
    if num_examples < 0:
        raise ValueError(f"MQAR: num_examples must be >= 0, got {num_examples}")
    if seq_len % 2 != 0:
        raise ValueError(f"MQAR: seq_len must be even, got {seq_len}")
    if num_kv_pairs * 4 > seq_len:
        raise ValueError(
            f"MQAR: num_kv_pairs * 4 must be <= seq_len (context of 2*kv tokens plus a query "
            f"region of at least kv two-token slots), got num_kv_pairs={num_kv_pairs}, "
            f"seq_len={seq_len}")
    if vocab_size <= seq_len:
        raise ValueError(f"MQAR: vocab_size must be > seq_len, got vocab_size={vocab_size}, "
                         f"seq_len={seq_len}")
    if not (np.isfinite(power_a) and power_a > 0):
        raise ValueError(f"MQAR: power_a must be a positive finite float, got {power_a!r}")


def _topk_by_keys(rng: np.random.Generator, n_rows: int, k: int, n: int,
                  log_weights: np.ndarray | None) -> np.ndarray:
    """Ordered samples without replacement of k indices from range(n), one row per example.

    Each row takes the k smallest of n random keys, in increasing key order: with
    ``key = E / w`` (E ~ Exp(1)) that is successive sampling proportional to ``w``; with
    uniform keys it is a uniformly random ordered k-subset.
    """
    out = np.empty((n_rows, k), dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMS // n)
    for start in range(0, n_rows, chunk):
        rows = min(chunk, n_rows - start)
        if log_weights is None:
            keys = rng.random((rows, n))
        else:
            # log(E) - log(w): same order as E / w, without overflow for tiny weights.
            keys = np.log(rng.standard_exponential((rows, n))) - log_weights
        if k < n:
            idx = np.argpartition(keys, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(n), (rows, n)).copy()
        order = np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1)
        out[start:start + rows] = np.take_along_axis(idx, order, axis=1)
    return out


def _uniform_without_replacement(rng: np.random.Generator, n_rows: int, k: int, low: int,
                                 high: int) -> np.ndarray:
    """[n_rows, k] int64; each row: k distinct ints from [low, high), uniformly random order."""
    n = high - low
    if k > n:
        raise ValueError(f"cannot draw {k} distinct values from a population of {n}")
    # P(no collision in a row) ~ exp(-k(k-1)/2n). When that is high, whole-row rejection
    # (redraw every row holding a repeat) is exact and far cheaper than n sort keys a row.
    if k * (k - 1) / (2 * n) < 0.7:
        out = rng.integers(low, high, size=(n_rows, k), dtype=np.int64)
        bad = np.arange(n_rows)
        while True:
            srt = np.sort(out[bad], axis=1)
            bad = bad[(srt[:, 1:] == srt[:, :-1]).any(axis=1)]
            if bad.size == 0:
                return out
            out[bad] = rng.integers(low, high, size=(bad.size, k), dtype=np.int64)
    return _topk_by_keys(rng, n_rows, k, n, None) + low


def generate_mqar(vocab_size: int, seq_len: int, num_kv_pairs: int, num_examples: int, seed: int,
                  power_a: float = 0.01, random_non_queries: bool = True, repeat: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate one MQAR slice.

    Returns ``inputs`` [N, seq_len] int64 and ``labels`` [N, seq_len] int64, where
    ``labels[i, t]`` is the value the model should predict after reading ``inputs[i, t]``
    (a key in the query region) and ``-100`` everywhere else. Deterministic in ``seed``
    (an int or a ``numpy.random.SeedSequence``). ``repeat`` > 1 prepends ``repeat - 1``
    extra copies of the key-value context (label -100): rows are
    ``seq_len + (repeat - 1) * 2 * num_kv_pairs`` long, and the random draws (hence the
    single-pass content) do not depend on ``repeat``.
    """
    if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
        raise ValueError(f"MQAR: repeat must be an int >= 1, got {repeat!r}")
    validate_mqar(vocab_size, seq_len, num_kv_pairs, num_examples, power_a)
    rng = np.random.default_rng(seed)
    n, kv = int(num_examples), int(num_kv_pairs)
    half = vocab_size // 2
    context = 2 * kv
    space = (seq_len - context) // 2

    keys = _uniform_without_replacement(rng, n, kv, 1, half)
    values = _uniform_without_replacement(rng, n, kv, half, vocab_size)
    i = np.arange(1, space + 1, dtype=np.float64)
    log_p = np.log(power_a) + (power_a - 1.0) * np.log(i)  # unnormalised log p(i)
    gaps = _topk_by_keys(rng, n, kv, space, log_p)

    # Length seq_len + 1 so the next-token shift below leaves seq_len positions.
    tokens = np.zeros((n, seq_len + 1), dtype=np.int64)
    tokens[:, 0:context:2] = keys
    tokens[:, 1:context:2] = values
    qpos = context + 2 * gaps
    np.put_along_axis(tokens, qpos, keys, axis=1)
    labels = np.full((n, seq_len + 1), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(labels, qpos + 1, values, axis=1)

    inputs = tokens[:, :-1].copy()
    labels = labels[:, 1:].copy()
    if random_non_queries:
        filler = inputs == 0  # keys >= 1 and values >= V//2 >= 1, so 0 is only filler
        inputs[filler] = rng.integers(0, vocab_size, size=int(filler.sum()), dtype=np.int64)
    if repeat > 1:
        ctx = inputs[:, :context]
        inputs = np.concatenate([np.tile(ctx, (1, repeat - 1)), inputs], axis=1)
        labels = np.concatenate([np.full((n, (repeat - 1) * context), IGNORE_INDEX, dtype=np.int64), labels], axis=1)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def slice_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """Seed of slice ``index`` of ``split`` ("train", "test" or "val").

    ``SeedSequence(seed, spawn_key=(split_id, index))``: the split id is part of the key,
    so the three splits' slices always get different seed sequences (for any seed and index),
    and adding slices (or the validation split) does not change the data of existing ones.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence(int(seed), spawn_key=(_SPLIT_IDS[split], int(index)))


def mqar_accuracy(logits_or_preds: torch.Tensor, labels: torch.Tensor, slices: torch.Tensor,
                  n_slices: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact-match counts over labelled positions (label != -100).

    ``logits_or_preds``: predicted ids [B, T] (integer) or logits [B, T, V] (argmax taken).
    ``slices``: [B] slice index of each example. Returns ``(overall_correct,
    overall_count, per_slice_correct [n_slices], per_slice_count [n_slices])`` as int64
    tensors on the input's device (no host sync), to be summed over an epoch;
    accuracy = correct / count.
    """
    x = logits_or_preds
    if x.is_floating_point():
        if x.dim() != 3:
            raise ValueError(f"logits must be [B, T, V], got shape {tuple(x.shape)}")
        x = x.argmax(dim=-1)
    if x.shape != labels.shape or x.dim() != 2:
        raise ValueError(f"predictions {tuple(x.shape)} and labels {tuple(labels.shape)} "
                         "must both be [B, T]")
    if slices.shape != (labels.shape[0],):
        raise ValueError(f"slices must be [B]={labels.shape[0]}, got {tuple(slices.shape)}")
    mask = labels != IGNORE_INDEX
    correct = ((x == labels) & mask).sum(dim=1)
    count = mask.sum(dim=1)
    s = slices.long()
    per_correct = torch.zeros(n_slices, dtype=torch.int64, device=labels.device)
    per_count = torch.zeros(n_slices, dtype=torch.int64, device=labels.device)
    per_correct.index_add_(0, s, correct)
    per_count.index_add_(0, s, count)
    return correct.sum(), count.sum(), per_correct, per_count


class CurriculumBatches(torch.utils.data.Sampler):
    """Batch sampler of the ``curriculum`` order: the slices' row ranges in listed order, rows
    shuffled within a slice, batches of ``batch_size`` that never cross a slice boundary (a slice's
    last batch may be smaller). A new shuffle every epoch, from one seeded generator."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int):
        self.sizes = [int(n) for n in sizes]
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return sum(-(-n // self.batch_size) for n in self.sizes)

    def __iter__(self):
        start = 0
        for n in self.sizes:
            rows = (start + torch.randperm(n, generator=self.generator)).tolist()
            for b in range(0, n, self.batch_size):
                yield rows[b: b + self.batch_size]
            start += n


def held_out(split: TokenSplit, *others: TokenSplit) -> tuple[TokenSplit, int]:
    """``split`` without the rows identical to a row of any of ``others``, and how many were dropped: a
    validation split never scores an example that training saw or that the test will score."""
    keep = np.ones(len(split), dtype=bool)
    for other in others:
        keep &= ~shared_rows(other.inputs.numpy(), split.inputs.numpy())
    if keep.all():
        return split, 0
    idx = torch.from_numpy(np.nonzero(keep)[0])
    return TokenSplit(split.inputs[idx], split.labels[idx], split.slice_ids[idx]), int((~keep).sum())


class MQARDataModule(GeneratedSplits):
    """Train, validation and test MQAR mixtures.

    Every slice is generated with its own seed (:func:`slice_seed`), padded on the right
    to the longest seq_len of its split, and tagged with its slice index (``batch["slice"]``,
    names from :meth:`slice_names`). The validation mixture has the test mixture's settings
    and its own seeds, without the rows that also occur in the train or test mixture
    (``val_dropped`` counts them; normally 0): ``val_dataloader`` serves it, so checkpoints,
    pruners and samplers select on it, and ``test_dataloader`` serves the test mixture, scored
    once at the end of training.
    """

    label = "MQAR"

    def __init__(self, vocab_size: int = 8192, train: Sequence[MQARSlice] = DEFAULT_TRAIN,
                 test: Sequence[MQARSlice] = DEFAULT_TEST, batch_size: int = 64,
                 power_a: float = 0.01, random_non_queries: bool = True, seed: int = 0,
                 num_workers: int = 0, repeat: int = 1, order: str = "mixed"):
        if order not in ("mixed", "curriculum"):
            raise ValueError(f"MQAR: order must be 'mixed' or 'curriculum', got {order!r}")
        self.order = order
        self.vocab_size = int(vocab_size)
        self.train_slices = tuple(MQARSlice(*s) if not isinstance(s, MQARSlice) else s for s in train)
        self.test_slices = tuple(MQARSlice(*s) if not isinstance(s, MQARSlice) else s for s in test)
        if not self.train_slices or not self.test_slices:
            raise ValueError("MQAR: train and test mixtures need at least one slice each")
        for s in self.train_slices + self.test_slices:
            validate_mqar(self.vocab_size, s.seq_len, s.num_kv_pairs, s.num_examples, power_a)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        super().__init__(batch_size, seed, num_workers)
        self.power_a = float(power_a)
        self.random_non_queries = bool(random_non_queries)
        if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 1:
            raise ValueError(f"MQAR: repeat must be an int >= 1, got {repeat!r}")
        self.repeat = int(repeat)
        self.val_data: TokenSplit | None = None
        #: validation rows left out because the train or test mixture holds them too (expected 0).
        self.val_dropped: int | None = None

    # ------------------------------------------------------------------ metadata
    def _slices(self, split: str) -> tuple[MQARSlice, ...]:
        if split == "train":
            return self.train_slices
        if split in ("test", "val", "validate"):  # validation: the test settings, other examples
            return self.test_slices
        raise ValueError(f"split must be 'train', 'test' or 'val', got {split!r}")

    def slice_names(self, split: str) -> list[str]:
        """Names like ``"seq64_kv4"``, in slice index order (a repeated setting gets
        ``_<index>`` appended so names stay unique)."""
        names: list[str] = []
        for i, s in enumerate(self._slices(split)):
            names.append(s.name if s.name not in names else f"{s.name}_{i}")
        return names

    def data_hash(self) -> str:
        """16 hex chars of sha256 over everything that determines the generated data."""
        params = {
            "task": "mqar",
            "generator_version": GENERATOR_VERSION,
            "vocab_size": self.vocab_size,
            "train": [asdict(s) for s in self.train_slices],
            "test": [asdict(s) for s in self.test_slices],
            "power_a": self.power_a,
            "random_non_queries": self.random_non_queries,
            "seed": self.seed,
            "val_split": 1,  # validation has its own examples (before, it served the test mixture)
        }
        if self.repeat != 1:  # single-pass hashes stay what they were before `repeat` existed
            params["repeat"] = self.repeat
        blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ------------------------------------------------------------------ data
    def make(self, split: str) -> TokenSplit:
        slices = self._slices(split)
        width = max(s.length(self.repeat) for s in slices)
        total = sum(s.num_examples for s in slices)
        inputs = torch.zeros((total, width), dtype=torch.int32)
        labels = torch.full((total, width), IGNORE_INDEX, dtype=torch.int32)
        slice_ids = torch.empty(total, dtype=torch.int64)
        row = 0
        for i, s in enumerate(slices):
            x, y = generate_mqar(self.vocab_size, s.seq_len, s.num_kv_pairs, s.num_examples,
                                 seed=slice_seed(self.seed, split, i), power_a=self.power_a,
                                 random_non_queries=self.random_non_queries, repeat=self.repeat)
            length = s.length(self.repeat)
            inputs[row:row + s.num_examples, :length] = x
            labels[row:row + s.num_examples, :length] = y
            slice_ids[row:row + s.num_examples] = i
            row += s.num_examples
        return TokenSplit(inputs, labels, slice_ids)

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits ``stage`` needs, once: fit/validate/None all three (validation is held out
        from the other two), test the test mixture."""
        if stage == "validate" and self.train_data is None:
            self.train_data = self.make("train")
        super().setup(stage)
        if stage in (None, "fit", "validate") and self.val_data is None:
            self.val_data, self.val_dropped = held_out(self.make("val"), self.train_data, self.test_data)
            if self.val_dropped:
                warnings.warn(f"MQAR: {self.val_dropped} validation examples also occur in the train or test "
                              "mixture and were left out (tiny vocab/sequence settings?)", stacklevel=2)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_data, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        if self.order != "curriculum":
            return self.loader(self.train_data, shuffle=True)
        sizes = [s.num_examples for s in self.train_slices]
        widths = [s.length(self.repeat) for s in self.train_slices]
        batches = CurriculumBatches(sizes, self.batch_size, self.seed)
        return self.loader(self.train_data, shuffle=True, batch_sampler=batches,
                           collate=None if self.train_data is None else Gather(self.train_data, widths))
