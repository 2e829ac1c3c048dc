"""The six MAD synthetic tasks (Poli et al. 2024, https://arxiv.org/abs/2403.17844).

Written from the behaviour of MAD-lab's generators as driven by its benchmark pipeline
(shared/MAD_TASKS.md): the same vocabulary layouts, sequence layouts, train vs test target formats
and baseline/grid values (``mad_params``). Every generator returns ``inputs`` and ``labels``
int64 arrays [N, T] where ``labels[i, t]`` is the target of the model output at position ``t``
(-100 = no loss) and is a pure function of its parameters and seed.

Differences from MAD-lab, on purpose:

* Seeds: MAD draws every training example and then the test examples from one
  ``default_rng(12345)``; archspace gives each split its own child seed
  (``SeedSequence(seed, spawn_key=(split_id,))``, as MQAR does), so the splits never depend on
  each other's sizes; the data module counts test rows identical to a training row (expected 0;
  warned otherwise). Token streams therefore differ from MAD-lab's; the distributions do not.
* Validation: MAD has none (its sweep keeps the best *test* accuracy). archspace draws a validation
  split of ``num_test_examples`` in the test format from a third child seed, without rows that occur in
  the training or test split, so that checkpoints, pruners and the lr x weight-decay choice select on it.
* Selective copying draws its blank positions from the seeded generator; MAD-lab uses numpy's
  *global* RNG there (same distribution, reproducible only through the global seed).
* Fuzzy in-context recall keeps MAD's quirk by default (``unrecoverable: keep``: when the
  generation loop stops before the probe insertion offset and the probe key was not drawn by
  chance, the final pair's key never occurred before and its targets cannot be recovered);
  ``unrecoverable: mask`` labels those targets -100 instead. :func:`fuzzy_unrecoverable` counts them.
* Memorization shares its key -> value map between train and test by design (that is the task);
  only the sampled key sequences differ.

Compression is trained with MAD's encoder-decoder readout, :class:`CompressionReadout`: the
model's last-position state goes to an MLP decoder with sinusoidal position embeddings that
predicts every position.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import IGNORE_INDEX, GeneratedSplits, TokenSplit
from .mad_params import TASKS, check_params

__all__ = ["GENERATOR_VERSION", "GENERATORS", "generate", "split_seed", "memorization_map",
           "fuzzy_unrecoverable", "MADDataModule", "CompressionReadout"]

#: Bump whenever generation changes in a way that alters the produced tokens.
GENERATOR_VERSION = 1

_SPLIT_IDS = {"train": 0, "test": 1, "val": 2}


def split_seed(seed: int, split: str) -> np.random.SeedSequence:
    """Child seed of a split: train, test and validation never share a seed sequence."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be 'train', 'test' or 'val', got {split!r}")
    return np.random.SeedSequence(int(seed), spawn_key=(_SPLIT_IDS[split],))


# ----------------------------------------------------------------------------------------------
# in-context recall and noisy in-context recall
# ----------------------------------------------------------------------------------------------
def _recall(rng: np.random.Generator, n: int, seq_len: int, n_keys: int, key_lo: int, val_lo: int,
            n_vals: int, split: str, noise: tuple[int, int, float] | None = None):
    """Shared body of CR and NR (noise = (noise_lo, noise_hi, frac) or None)."""
    slots = seq_len // 2
    keys = rng.integers(key_lo, key_lo + n_keys, size=(n, slots))
    mapping = rng.integers(val_lo, val_lo + n_vals, size=(n, n_keys))  # value of each key, drawn per example
    is_noise = np.zeros((n, slots), dtype=bool)
    if noise is not None:
        noise_lo, noise_hi, frac = noise
        is_noise[:, :-1] = rng.random((n, slots - 1)) < frac
        protect = rng.integers(0, slots, size=n)  # the final slot index protects nothing
        rows = np.nonzero(protect < slots - 1)[0]
        is_noise[rows, protect[rows]] = False
    # final slot: a key drawn uniformly from the distinct keys shown in kv slots before it
    shown = np.zeros((n, n_keys), dtype=bool)
    r, c = np.nonzero(~is_noise[:, :-1])
    shown[r, keys[r, c] - key_lo] = True
    none = ~shown.any(axis=1)  # every context slot noise (probability frac^(slots-1)): any key, unrecoverable
    shown[none] = True
    score = np.where(shown, rng.random((n, n_keys)), -1.0)
    keys[:, -1] = score.argmax(axis=1) + key_lo
    values = np.take_along_axis(mapping, keys - key_lo, axis=1)
    raw = np.empty((n, seq_len), dtype=np.int64)
    raw[:, 0::2] = keys
    raw[:, 1::2] = values
    if noise is not None and is_noise.any():
        noise_tok = rng.integers(noise_lo, noise_hi, size=(n, seq_len))
        mask = np.repeat(is_noise, 2, axis=1)
        raw[mask] = noise_tok[mask]
    inputs = raw[:, :-1]
    if split == "train":  # next-token targets at every position
        return inputs.copy(), raw[:, 1:].copy()
    # test: at key slots whose key occurred in an earlier kv slot
    labels = np.full((n, seq_len - 1), IGNORE_INDEX, dtype=np.int64)
    seen = np.zeros((n, n_keys), dtype=bool)
    ar = np.arange(n)
    for s in range(slots):
        k = keys[:, s] - key_lo
        kv = ~is_noise[:, s]
        hit = kv & seen[ar, k]
        labels[hit, 2 * s] = values[hit, s]
        seen[ar[kv], k[kv]] = True
    return inputs.copy(), labels


def gen_in_context_recall(rng, n, vocab_size, seq_len, split, **_):
    half = vocab_size // 2
    return _recall(rng, n, seq_len, half, 0, half, vocab_size - half, split)


def gen_noisy_in_context_recall(rng, n, vocab_size, seq_len, split, noise_vocab_size=16, frac_noise=0.2, **_):
    m = vocab_size - noise_vocab_size
    half = m // 2
    return _recall(rng, n, seq_len, half, 0, half, m - half, split, noise=(m, vocab_size, frac_noise))


# ----------------------------------------------------------------------------------------------
# fuzzy in-context recall
# ----------------------------------------------------------------------------------------------
def _motif(rng, lo: int, n_ids: int, size: int) -> tuple:
    return tuple(int(x) + lo for x in rng.choice(n_ids, size=size, replace=False))


def _fuzzy_one(rng, vocab_size, seq_len, split, k_motif_size, v_motif_size):
    """One example: (raw tokens of length seq_len + 1, target mask over raw, probe recoverable)."""
    pad = vocab_size - 1
    m = vocab_size - 1
    n_keys, n_vals = m // 2, m - m // 2

    def key_size():
        return k_motif_size if split == "test" else int(rng.integers(1, k_motif_size + 1))

    def new_key():
        return _motif(rng, 0, n_keys, key_size())

    def new_val():
        return _motif(rng, n_keys, n_vals, int(rng.integers(1, v_motif_size + 1)))

    pk, pv = new_key(), new_val()
    plen = len(pk) + len(pv)
    offset = int(rng.integers(0, seq_len - 2 * plen))
    limit = seq_len - plen - (k_motif_size + v_motif_size)
    toks: list[int] = []
    tgt: list[bool] = []
    store: dict[tuple, tuple] = {}
    inserted = False
    while len(toks) < limit:
        if not inserted and len(toks) >= offset:
            k, v, is_t = pk, pv, False
            inserted = True
        else:
            k = new_key()
            is_t = k in store
            if k == pk:
                v = pv
                inserted = True
            elif k in store:
                v = store[k]
            else:
                v = new_val()
        store[k] = v
        toks += list(k) + list(v)
        tgt += [False] * len(k) + [is_t] * len(v)
    recoverable = pk in store
    toks += list(pk) + list(pv)
    tgt += [False] * len(pk) + [True] * len(pv)
    padn = seq_len + 1 - len(toks)
    raw = [pad] * padn + toks
    mask = [False] * padn + tgt
    return raw, mask, recoverable, len(pv)


def gen_fuzzy_in_context_recall(rng, n, vocab_size, seq_len, split, k_motif_size=3, v_motif_size=3,
                                unrecoverable="keep", return_info=False, **_):
    inputs = np.empty((n, seq_len), dtype=np.int64)
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for i in range(n):
        raw, mask, ok, vlen = _fuzzy_one(rng, vocab_size, seq_len, split, k_motif_size, v_motif_size)
        raw = np.asarray(raw, dtype=np.int64)
        inputs[i] = raw[:-1]
        bad[i] = not ok
        if split == "train":
            labels[i] = raw[1:]
        else:
            m = np.asarray(mask[1:])
            if not ok and unrecoverable == "mask":
                m[-vlen:] = False  # the final pair's value targets
            labels[i, m] = raw[1:][m]
    return (inputs, labels, bad) if return_info else (inputs, labels)


def fuzzy_unrecoverable(params: dict[str, Any], split: str = "test") -> tuple[int, int]:
    """(examples whose final pair's key never occurred before, examples) for a fuzzy-recall setting."""
    p = {k: v for k, v in params.items() if k not in ("name", "num_train_examples", "num_test_examples", "seed")}
    n = params["num_train_examples" if split == "train" else "num_test_examples"]
    rng = np.random.default_rng(split_seed(params["seed"], split))
    _, _, bad = gen_fuzzy_in_context_recall(rng, n, split=split, return_info=True, **p)
    return int(bad.sum()), n


# ----------------------------------------------------------------------------------------------
# selective copying, compression, memorization
# ----------------------------------------------------------------------------------------------
def gen_selective_copying(rng, n, vocab_size, seq_len, split, num_tokens_to_copy=16, **_):
    k = num_tokens_to_copy
    blank, copy = vocab_size - 2, vocab_size - 1
    data = rng.integers(0, vocab_size - 2, size=(n, k))
    n_blank = seq_len - 2 * k - 1
    gaps = rng.multinomial(n_blank, np.full(k, 1.0 / k), size=n)  # blanks before data token j
    pos = np.cumsum(gaps, axis=1) + np.arange(k)  # position of data token j
    inputs = np.full((n, seq_len), blank, dtype=np.int64)
    np.put_along_axis(inputs, pos, data, axis=1)
    inputs[:, seq_len - k - 1] = copy
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    labels[:, seq_len - k:] = data
    return inputs, labels


def gen_compression(rng, n, vocab_size, seq_len, split, **_):
    inputs = np.empty((n, seq_len), dtype=np.int64)
    inputs[:, :-1] = rng.integers(0, vocab_size - 1, size=(n, seq_len - 1))
    inputs[:, -1] = vocab_size - 1
    return inputs, inputs.copy()


def memorization_map(vocab_size: int, seed: int) -> np.ndarray:
    """The fixed key -> value map (array indexed by key) of memorization: MAD's procedure, its own
    default_rng(seed): shuffle the key list, then the value list, zip (one value id stays unused)."""
    m = vocab_size - 1
    keys = np.arange(m // 2)
    values = np.arange(m // 2, m)
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    rng.shuffle(values)
    out = np.empty(m // 2, dtype=np.int64)
    out[keys] = values[: m // 2]
    return out


def gen_memorization(rng, n, vocab_size, seq_len, split, map_seed=12345, **_):
    table = memorization_map(vocab_size, map_seed)
    keys = rng.integers(0, (vocab_size - 1) // 2, size=(n, seq_len // 2))
    inputs = np.empty((n, seq_len), dtype=np.int64)
    inputs[:, 0::2] = keys
    inputs[:, 1::2] = vocab_size - 1
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    labels[:, 1::2] = table[keys]
    return inputs, labels


GENERATORS = {
    "mad_in_context_recall": gen_in_context_recall,
    "mad_noisy_in_context_recall": gen_noisy_in_context_recall,
    "mad_fuzzy_in_context_recall": gen_fuzzy_in_context_recall,
    "mad_selective_copying": gen_selective_copying,
    "mad_compression": gen_compression,
    "mad_memorization": gen_memorization,
}
_COMMON = ("name", "vocab_size", "seq_len", "num_train_examples", "num_test_examples", "seed")


def generate(task: dict[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Generate a split of a MAD task section (a validated `task:` dict)."""
    name = task["name"]
    if name not in GENERATORS:
        raise ValueError(f"unknown MAD task {name!r}; tasks: {', '.join(GENERATORS)}")
    problem = check_params(task)
    if problem is not None:
        raise ValueError(f"{name}: {problem[1]}")
    extra = {k: v for k, v in task.items() if k not in _COMMON}
    if name == "mad_memorization":
        extra["map_seed"] = task["seed"]  # the map depends only on V and the seed (shared by the splits)
    n = task["num_train_examples" if split == "train" else "num_test_examples"]
    rng = np.random.default_rng(split_seed(task["seed"], split))
    layout = "train" if split == "train" else "test"  # validation is scored like the test
    return GENERATORS[name](rng, int(n), task["vocab_size"], task["seq_len"], layout, **extra)


# ----------------------------------------------------------------------------------------------
# data module
# ----------------------------------------------------------------------------------------------
class MADDataModule(GeneratedSplits):
    """Train, validation and test split of one MAD task setting; one slice named after the task.

    Batches are dicts {"input_ids", "labels", "slice"} like MQAR's; validation and test are in the test
    format (for the recall tasks: targets at the recall positions only), each from its own seed, and
    validation leaves out rows that the training or test split holds (``val_dropped``, expected 0).
    """

    def __init__(self, task: dict[str, Any], batch_size: int = 64, num_workers: int = 0):
        if task.get("name") not in GENERATORS:
            raise ValueError(f"not a MAD task: {task.get('name')!r}")
        super().__init__(batch_size, task["seed"], num_workers)
        self.task = dict(task)
        self.label = self.task["name"]

    def slice_names(self, split: str) -> list[str]:
        return [TASKS[self.task["name"]]]

    def data_hash(self) -> str:
        params = {"task": self.task["name"], "generator_version": GENERATOR_VERSION, "val_split": 1,
                  "params": {k: v for k, v in sorted(self.task.items())}}
        blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def make(self, split: str) -> TokenSplit:
        x, y = generate(self.task, split)
        return TokenSplit(torch.from_numpy(x).to(torch.int32), torch.from_numpy(y).to(torch.int32),
                          torch.zeros(x.shape[0], dtype=torch.int64))


# ----------------------------------------------------------------------------------------------
# compression readout
# ----------------------------------------------------------------------------------------------
def sinusoidal_positions(n: int, dim: int) -> torch.Tensor:
    """[n, dim] sin/cos position embeddings (Vaswani et al. 2017)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    half = (dim + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = pos * freq[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=1)[:, :dim]


class CompressionReadout(nn.Module):
    """MAD's AutoEncoder readout: the encoder's last-position state, plus a sinusoidal embedding of
    each output position, through an MLP decoder -> a hidden state per position (fed to the LM head).

    hidden [B, T, D] -> [B, T, D]; position t of the output depends on the input only through
    hidden[:, -1].
    """

    def __init__(self, d_model: int, hidden_mult: int = 2, layers: int = 2):
        super().__init__()
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(d_model, hidden_mult * d_model), nn.GELU(), nn.Linear(hidden_mult * d_model, d_model)]
        self.mlp = nn.ModuleList([nn.Sequential(*blocks[i:i + 3]) for i in range(0, len(blocks), 3)])
        self.norm = nn.LayerNorm(d_model)
        self.d_model = d_model

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        B, T, D = hidden.shape
        pe = sinusoidal_positions(T, D).to(hidden.device, hidden.dtype)
        z = hidden[:, -1:, :] + pe[None]  # [B, T, D]
        for block in self.mlp:
            z = z + block(z)
        return self.norm(z)
