"""Every task has a validation split of its own (issue 17, item 1): own seed, no row shared with the
training or the test split, served by `val_dataloader`; the test split is seen once, at the end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from archspace.compiler import resolve
from archspace.grammar import TaskSpec, validate_data
from archspace.tasks import lm, mad
from archspace.tasks.mad_params import BASELINES
from archspace.tasks.mqar import MQARDataModule, MQARSlice, overlap, slice_seed
from archspace.yamlio import Marks


def _rows(loader) -> torch.Tensor:
    return torch.cat([b["input_ids"] for b in loader])


def _assert_held_out(dm):
    dm.setup("fit")
    train, val, test = (_rows(dm.train_dataloader()), _rows(dm.val_dataloader()), _rows(dm.test_dataloader()))
    assert len(val) > 0 and not torch.equal(val, test)
    assert overlap(train.numpy(), val.numpy()) == 0 and overlap(test.numpy(), val.numpy()) == 0
    return train, val, test


def test_mqar_validation_is_its_own_split():
    kw = dict(vocab_size=256, train=[MQARSlice(32, 4, 256)], test=[MQARSlice(32, 4, 64), MQARSlice(64, 8, 32)],
              batch_size=16, seed=3)
    dm = MQARDataModule(**kw)
    _, val, test = _assert_held_out(dm)
    assert dm.slice_names("val") == dm.slice_names("test")  # the same settings, its own examples
    assert val.shape == test.shape
    again = MQARDataModule(**kw)
    again.setup("fit")
    assert torch.equal(_rows(again.val_dataloader()), val)  # deterministic in the seed
    assert (slice_seed(3, "val", 0).generate_state(4) != slice_seed(3, "test", 0).generate_state(4)).any()


def test_mqar_validation_drops_rows_shared_with_train_or_test():
    # tiny vocabulary and length: identical rows across splits are common, and none may reach validation
    dm = MQARDataModule(vocab_size=12, train=[MQARSlice(8, 1, 400)], test=[MQARSlice(8, 1, 200)], batch_size=50,
                        seed=0, random_non_queries=False)
    _, val, _ = _assert_held_out(dm)
    assert dm.val_dropped > 0 and len(val) == 200 - dm.val_dropped


@pytest.mark.parametrize("name", list(mad.GENERATORS))
def test_mad_validation_is_its_own_split(name):
    t = TaskSpec.model_validate({"name": name, **BASELINES[name], "num_train_examples": 200,
                                 "num_test_examples": 64}).model_dump()
    dm = mad.MADDataModule(t, batch_size=16)
    _, val, test = _assert_held_out(dm)
    x_val, y_val = mad.generate(t, "val")
    x_test, y_test = mad.generate(t, "test")
    assert x_val.shape == x_test.shape
    # validation is scored like test (for the recall tasks: targets at the recall positions only)
    assert ((y_val != -100).sum(1) < y_val.shape[1]).all() == ((y_test != -100).sum(1) < y_test.shape[1]).all()


def test_lm_validation_and_test_are_disjoint_documents(tmp_path):
    t = TaskSpec.model_validate({"name": "lm", "max_bytes": 150_000, "seq_len": 64, "max_val_sequences": 8,
                                 "val_fraction": 0.1, "test_fraction": 0.1,
                                 "cache_dir": str(tmp_path / "cache")}).model_dump()
    d = lm.build_shards(t)
    meta = json.loads((d / "meta.json").read_text())
    assert min(meta[s]["documents"] for s in ("train", "val", "test")) >= 1
    streams = {s: np.memmap(d / f"{s}.bin", dtype=np.uint16, mode="r") for s in ("train", "val", "test")}
    docs = {s: set(bytes(a.astype(np.uint8)) for a in np.split(v, np.nonzero(v == lm.EOS)[0] + 1) if a.size > 1)
            for s, v in streams.items()}
    assert not docs["val"] & docs["test"] and not docs["train"] & docs["val"] and not docs["train"] & docs["test"]
    dm = lm.LMDataModule(t, batch_size=4)
    dm.setup("fit")
    assert not torch.equal(_rows(dm.val_dataloader()), _rows(dm.test_dataloader()))


def test_training_validates_on_validation_and_tests_on_test(tmp_path):
    """The last validation and the test both score the final weights: equal metrics meant the same data."""
    from archspace.training import train

    data = {"model": {"d_model": 16, "n_layers": 1, "mixer": {"preset": "gla", "heads": 2}},
            "task": {"vocab_size": 64, "train": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 64}],
                     "test": [{"seq_len": 16, "num_kv_pairs": 2, "num_examples": 64}]},
            "train": {"max_steps": 4, "batch_size": 16, "eval_every": 4, "warmup_steps": 1, "checkpoint": False}}
    m = train(resolve(validate_data(data, Marks("<test>"))), tmp_path / "run", progress=False)
    assert m["val/loss"] != m["test/loss"]
