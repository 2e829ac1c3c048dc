"""What the task data modules share: padded token splits, index loaders that build whole batches with one
index op, the train/test overlap check, and the train/test life cycle of generated splits (MQAR, MAD).

A batch is a dict {"input_ids" [B, T] int64, "labels" [B, T] int64 (IGNORE_INDEX where there is no loss),
"slice" [B] int64 (index of the example's slice, for per-slice metrics)}.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader

__all__ = ["IGNORE_INDEX", "TokenSplit", "Indices", "Gather", "index_loader", "overlap", "TaskData", "GeneratedSplits"]

#: Label of positions that carry no loss.
IGNORE_INDEX = -100


@dataclass
class TokenSplit:
    """A generated split: rows right-padded to its longest slice (token 0, label -100).

    Stored as int32 to halve memory; batches are cast to int64.
    """

    inputs: torch.Tensor     # [N, T_max] int32
    labels: torch.Tensor     # [N, T_max] int32
    slice_ids: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


class Indices(torch.utils.data.Dataset):
    """The row indices 0..n-1 (the collate function gathers the rows of a whole batch at once)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class Gather:
    """collate_fn: gathers a whole batch of rows with one index op. With ``widths`` (tokens per
    row of each slice) the batch is cropped to its longest row: the columns cut are padding."""

    def __init__(self, split: TokenSplit, widths: Sequence[int] | None = None):
        self.split = split
        self.widths = None if widths is None else torch.as_tensor(list(widths), dtype=torch.int64)

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.int64)
        slice_ids = self.split.slice_ids[i]
        width = self.split.inputs.shape[1] if self.widths is None else int(self.widths[slice_ids].max())
        return {"input_ids": self.split.inputs[i, :width].long(),
                "labels": self.split.labels[i, :width].long(),
                "slice": slice_ids}


def index_loader(n: int, collate: Callable, *, batch_size: Optional[int] = None, shuffle: bool = False,
                 seed: Optional[int] = None, batch_sampler=None, num_workers: int = 0) -> DataLoader:
    """A DataLoader over the row indices 0..n-1 whose ``collate`` builds each batch; shuffled with a generator
    seeded by ``seed``, or batched by ``batch_sampler``."""
    if batch_sampler is not None:
        batching = dict(batch_sampler=batch_sampler)
    else:
        generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
        batching = dict(batch_size=batch_size, shuffle=shuffle, generator=generator)
    return DataLoader(Indices(n), collate_fn=collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0, **batching)


def _row_hashes(x: np.ndarray) -> np.ndarray:
    """64-bit polynomial hash of each row (wrap-around arithmetic)."""
    x = x.astype(np.uint64, copy=False)
    h = np.zeros(x.shape[0], dtype=np.uint64)
    mult = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(x.shape[1]):
            h = (h * mult) ^ (x[:, j] + np.uint64(0x9E3779B97F4A7C15))
    return h


def shared_rows(reference: torch.Tensor | np.ndarray, rows: torch.Tensor | np.ndarray) -> np.ndarray:
    """Boolean mask over ``rows``: True where the row is identical to some row of ``reference`` (after
    right-padding both with 0s to a common width). Exact: hash matches are verified element-wise."""
    a = np.asarray(reference)
    b = np.asarray(rows)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError("overlap expects 2-D [N, T] arrays")
    width = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, width - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, width - b.shape[1])))
    mask = np.zeros(b.shape[0], dtype=bool)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return mask
    ha, hb = _row_hashes(a), _row_hashes(b)
    candidates = np.nonzero(np.isin(hb, ha))[0]
    if candidates.size == 0:
        return mask
    order = np.argsort(ha, kind="stable")
    ha_sorted = ha[order]
    for j in candidates:  # only hash matches: normally none
        lo, hi = np.searchsorted(ha_sorted, hb[j], "left"), np.searchsorted(ha_sorted, hb[j], "right")
        mask[j] = any(np.array_equal(a[order[r]], b[j]) for r in range(lo, hi))
    return mask


def overlap(train_inputs: torch.Tensor | np.ndarray, test_inputs: torch.Tensor | np.ndarray) -> int:
    """Number of test rows identical to some train row (see :func:`shared_rows`)."""
    return int(shared_rows(train_inputs, test_inputs).sum())


class TaskData(lightning.LightningDataModule):
    """A task's data module: batches of ``batch_size`` rows, shuffled from ``seed``."""

    def __init__(self, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)


class GeneratedSplits(TaskData):
    """A train and a test split generated once each (``make(split) -> TokenSplit``); validation and test serve
    the test split, and a test row that also occurs in the training split is counted (``train_test_overlap``,
    expected 0) and warned about."""

    label = "data"  # name in messages

    def __init__(self, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.train_data: TokenSplit | None = None
        self.test_data: TokenSplit | None = None
        #: test rows identical to a train row; set once both splits exist (expected 0).
        self.train_test_overlap: int | None = None

    def make(self, split: str) -> TokenSplit:
        raise NotImplementedError

    def prepare_data(self) -> None:  # nothing to download
        pass

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits ``stage`` needs (fit/None: both), once."""
        if stage in (None, "fit") and self.train_data is None:
            self.train_data = self.make("train")
        if self.test_data is None:
            self.test_data = self.make("test")
        if self.train_data is not None and self.train_test_overlap is None:
            self.train_test_overlap = overlap(self.train_data.inputs.numpy(), self.test_data.inputs.numpy())
            if self.train_test_overlap:
                warnings.warn(f"{self.label}: {self.train_test_overlap} test examples also occur in the training "
                              "split (tiny vocabulary or sequence settings?)", stacklevel=2)

    def loader(self, data: TokenSplit | None, shuffle: bool, **batching) -> DataLoader:
        if data is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() first")
        if "batch_sampler" not in batching:
            batching.update(batch_size=self.batch_size, shuffle=shuffle, seed=self.seed)
        return index_loader(len(data), batching.pop("collate", None) or Gather(data), num_workers=self.num_workers,
                            **batching)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_data, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.test_data, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.test_data, shuffle=False)
