"""State-tracking tasks: group word problems whose answer is the running product of the tokens read so far.

A sequence is x_1 .. x_L of elements of a finite group G (token id = element index, identity = 0) and the target at
position t is the prefix product p_t = p_{t-1} * x_t (p_0 = identity), the state a recurrence must track:

    parity             G = Z_2: bits, the target is the parity of the ones so far (Grazzi et al. 2024,
                       https://arxiv.org/abs/2411.12537, Sec. 5.1; the xLSTM / Deletang parity task as a tagging task)
    modular_addition   G = Z_m: the running sum mod m (the "modular addition" of the state-tracking literature;
                       Grazzi's "modular arithmetic" is Deletang's expression task, not this one)
    permutation        G = S_3 or S_5, the permutations of 3 or 5 items: the running composition (the word problems
                       of Merrill et al. 2024, "The Illusion of State in State-Space Models",
                       https://arxiv.org/abs/2404.08819, and of DeltaProduct, Siems et al. 2025). Elements are the
                       permutations in itertools.permutations order (index 0 the identity) and p_t = p_{t-1} o x_t,
                       (p o x)(i) = p(x(i)): x_t acts first. S_5 is not solvable: no constant-depth circuit of
                       TC^0 tracks it, which Merrill et al. show limits linear RNNs with nonnegative diagonal
                       transitions.

Splits and lengths (length generalisation):
    train        ``num_train_examples`` sequences with lengths uniform in ``train_lengths`` [lo, hi]
    validation   ``num_test_examples`` sequences of every length in ``test_lengths`` (the slices ``len<L>``)
    test         the same lengths from another seed: select on validation, report test once
The tokens are uniform over G. ``train_labels`` ``all`` (default) labels every position with its prefix product,
``final`` only the last; ``eval_labels`` does the same for validation and test (default ``final``: the accuracy of
a slice is then the fraction of length-L sequences whose whole product is right, chance 1/|G|). Rows are
right-padded with token 0 and label -100; the models are causal, so padding after a sequence changes nothing in it.
Each split has its own child seed (train, validation and test never share one).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import IGNORE_INDEX, Gather, GeneratedSplits, TokenSplit

__all__ = ["GENERATOR_VERSION", "GROUPS", "group_order", "multiplication_table", "generate", "StateTrackingDataModule"]

#: Bump whenever generation changes in a way that alters the produced tokens.
GENERATOR_VERSION = 1

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
GROUPS = ("s3", "s5")  # the permutation groups of the `permutation` task


def group_order(task: dict) -> int:
    """|G| of a task section (its vocabulary)."""
    name = task["name"]
    if name == "parity":
        return 2
    if name == "modular_addition":
        return int(task["modulus"])
    n = int(task["group"][1:])
    order = 1
    for i in range(2, n + 1):
        order *= i
    return order


def multiplication_table(task: dict) -> np.ndarray:
    """[|G|, |G|] int64: table[a, b] = a * b (element indices; index 0 the identity)."""
    name = task["name"]
    if name in ("parity", "modular_addition"):
        m = group_order(task)
        a = np.arange(m)
        return (a[:, None] + a[None, :]) % m
    n = int(task["group"][1:])
    perms = list(itertools.permutations(range(n)))
    index = {p: i for i, p in enumerate(perms)}
    P = np.array(perms)  # [|G|, n]
    compose = P[:, P]  # compose[a, b, i] = P[a][P[b][i]]: (a o b)(i), b acts first
    return np.array([[index[tuple(compose[a, b])] for b in range(len(perms))] for a in range(len(perms))])


def generate(table: np.ndarray, lengths: np.ndarray, width: int, labels: str,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of the given lengths, right-padded to ``width``: inputs [N, width] (uniform group elements, pad 0)
    and labels [N, width] (prefix products at every position for ``all``, at the last for ``final``, else -100)."""
    N = len(lengths)
    x = rng.integers(0, table.shape[0], size=(N, width))
    prod = np.empty((N, width), dtype=np.int64)
    acc = np.zeros(N, dtype=np.int64)  # the identity
    for t in range(width):
        acc = table[acc, x[:, t]]
        prod[:, t] = acc
    pos = np.arange(width)[None, :]
    inside = pos < lengths[:, None]
    x = np.where(inside, x, 0)
    keep = inside if labels == "all" else pos == (lengths[:, None] - 1)
    return x, np.where(keep, prod, IGNORE_INDEX)


class StateTrackingDataModule(GeneratedSplits):
    """Train / validation / test splits of a state-tracking task section (see the module docstring)."""

    label = "state tracking"

    def __init__(self, task: dict[str, Any], batch_size: int = 64, num_workers: int = 0):
        super().__init__(batch_size, int(task["seed"]), num_workers)
        self.task = dict(task)
        self.table = multiplication_table(self.task)

    def slice_names(self, split: str) -> list[str]:
        if split == "train":
            lo, hi = self.task["train_lengths"]
            return [f"len{lo}-{hi}"]
        return [f"len{L}" for L in self.task["test_lengths"]]

    def data_hash(self) -> str:
        keys = ("name", "modulus", "group", "train_lengths", "num_train_examples", "test_lengths", "num_test_examples",
                "train_labels", "eval_labels", "seed")
        params = {"generator_version": GENERATOR_VERSION, **{k: self.task.get(k) for k in keys}}
        blob = json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def make(self, split: str) -> TokenSplit:
        t = self.task
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(_SPLIT_IDS[split],)))
        if split == "train":
            lo, hi = t["train_lengths"]
            lengths = rng.integers(lo, hi + 1, size=t["num_train_examples"])
            x, y = generate(self.table, lengths, hi, t["train_labels"], rng)
            slice_ids = np.zeros(len(lengths), dtype=np.int64)
        else:
            lengths = np.repeat(np.asarray(t["test_lengths"]), t["num_test_examples"])
            x, y = generate(self.table, lengths, int(max(t["test_lengths"])), t["eval_labels"], rng)
            slice_ids = np.repeat(np.arange(len(t["test_lengths"])), t["num_test_examples"])
        return TokenSplit(torch.from_numpy(x.astype(np.int32)), torch.from_numpy(y.astype(np.int32)),
                          torch.from_numpy(slice_ids))

    def _eval_loader(self, data: TokenSplit | None) -> DataLoader:
        widths = self.task["test_lengths"]  # batches are cropped to their longest row
        return self.loader(data, shuffle=False, collate=None if data is None else Gather(data, widths))

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_data, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_data)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_data)
