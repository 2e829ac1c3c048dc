"""State-tracking tasks (parity, modular addition, S_3 / S_5 composition): the group tables satisfy the group axioms,
the labels are the prefix products computed here straight from the definitions (bit sums, residues, composed
permutation tuples), the splits are deterministic, distinct and longer at test time, and bad sections are refused at
their key with exit 2."""
import itertools

import numpy as np
import pytest
import torch

from archspace.cli import main
from archspace.grammar import TaskSpec
from archspace.tasks.state_tracking import StateTrackingDataModule, generate, group_order, multiplication_table

SECTIONS = {
    "parity": {"name": "parity"},
    "mod7": {"name": "modular_addition", "modulus": 7},
    "s3": {"name": "permutation", "group": "s3"},
    "s5": {"name": "permutation", "group": "s5"},
}


def _task(key, **kw):
    return TaskSpec.model_validate({**SECTIONS[key], "num_train_examples": 300, "num_test_examples": 20,
                                    "train_lengths": [2, 9], "test_lengths": [9, 16, 33], **kw}).model_dump()


def _element(task, i):
    """Element i as the definitions name it: an int residue, or a permutation tuple (itertools order)."""
    if task["name"] == "permutation":
        return list(itertools.permutations(range(int(task["group"][1:]))))[i]
    return i


def _times(task, p, x):
    """p * x from the definition: addition mod |G|, or (p o x)(i) = p(x(i)) (x acts first)."""
    if task["name"] == "permutation":
        return tuple(p[x[i]] for i in range(len(p)))
    return (p + x) % group_order(task)


@pytest.mark.parametrize("key", list(SECTIONS))
def test_table_is_the_group(key):
    task = _task(key)
    table = multiplication_table(task)
    n = group_order(task)
    assert n == {"parity": 2, "mod7": 7, "s3": 6, "s5": 120}[key] == task["vocab_size"]
    assert table.shape == (n, n)
    for a in range(n):
        assert sorted(table[a]) == list(range(n)) and sorted(table[:, a]) == list(range(n))  # Latin square
    assert np.array_equal(table[0], np.arange(n)) and np.array_equal(table[:, 0], np.arange(n))  # 0 is the identity
    a, b, c = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    assert np.array_equal(table[table[a, b], c], table[a, table[b, c]])  # associative
    elems = [_element(task, i) for i in range(n)]
    for i, j in itertools.product(range(min(n, 12)), repeat=2):
        assert elems[table[i, j]] == _times(task, elems[i], elems[j])
    assert np.array_equal(table, table.T) == (key in ("parity", "mod7"))  # S_3 and S_5 are not abelian


@pytest.mark.parametrize("key", list(SECTIONS))
def test_labels_are_prefix_products(key):
    task = _task(key)
    table = multiplication_table(task)
    lengths = np.array([1, 4, 7, 7])
    for labels in ("all", "final"):
        x, y = generate(table, lengths, 7, labels, np.random.default_rng(3))
        assert x.shape == y.shape == (4, 7)
        for row, lab, L in zip(x, y, lengths):
            assert (row[L:] == 0).all() and (lab[L:] == -100).all()  # right padding
            p = _element(task, 0)
            for t in range(L):
                p = _times(task, p, _element(task, int(row[t])))
                if labels == "all" or t == L - 1:
                    assert _element(task, int(lab[t])) == p
                else:
                    assert lab[t] == -100


def test_parity_is_the_bit_sum():
    task = _task("parity")
    x, y = generate(multiplication_table(task), np.array([50] * 8), 50, "all", np.random.default_rng(0))
    assert np.array_equal(y, np.cumsum(x, axis=1) % 2)


def test_splits_deterministic_distinct_and_longer_at_test():
    task = _task("s3")
    dm = StateTrackingDataModule(task, batch_size=8)
    dm.setup("fit")
    assert dm.slice_names("train") == ["len2-9"] and dm.slice_names("test") == ["len9", "len16", "len33"]
    tr, va, te = dm.train_data, dm.val_data, dm.test_data
    assert len(tr) == 300 and len(va) == len(te) == 60
    assert tr.inputs.shape[1] == 9 and te.inputs.shape[1] == 33
    lengths = (tr.labels != -100).sum(1)  # train_labels all: one label per position
    assert lengths.min() >= 2 and lengths.max() <= 9 and len(set(lengths.tolist())) > 4
    assert ((te.labels != -100).sum(1) == 1).all()  # eval_labels final: one label per sequence
    assert not torch.equal(va.inputs, te.inputs)  # validation and test come from distinct seeds
    again = StateTrackingDataModule(task)
    again.setup("fit")
    assert all(torch.equal(a, b) for a, b in ((tr.inputs, again.train_data.inputs), (va.labels, again.val_data.labels),
                                              (te.inputs, again.test_data.inputs)))
    assert dm.data_hash() == again.data_hash() != StateTrackingDataModule({**task, "seed": 1}).data_hash()
    batches = list(dm.val_dataloader())
    assert sum(len(b["slice"]) for b in batches) == 60
    for b in batches:  # cropped to the longest row of the batch
        width = max(task["test_lengths"][s] for s in b["slice"].tolist())
        assert b["input_ids"].shape[1] == width and b["input_ids"].dtype == torch.int64
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (8, 9)


def test_trains_through_the_pipeline(tmp_path):
    from archspace.compiler import resolve
    from archspace.grammar import validate_data
    from archspace.training import train
    from archspace.yamlio import Marks

    design = {"schema_version": 1,
              "model": {"d_model": 16, "n_layers": 1, "mixer": {"preset": "deltaproduct", "heads": 1}},
              "task": {"name": "parity", "train_lengths": [2, 6], "test_lengths": [8, 12], "num_train_examples": 32,
                       "num_test_examples": 8},
              "train": {"max_steps": 2, "eval_every": 2, "batch_size": 8, "warmup_steps": 1, "checkpoint": False,
                        "threads": 1}}
    metrics = train(resolve(validate_data(design, Marks("<test>"))), tmp_path / "run", progress=False)
    assert {"val/acc/len8", "val/acc/len12", "test/acc/len8", "test/acc/len12"} <= set(metrics)
    assert metrics["steps"] == 2


BAD = [
    ("train_lengths: [5, 3]", "task.train_lengths", "must be [lo, hi]"),
    ("train_lengths: [0, 3]", "task.train_lengths", "must be [lo, hi]"),
    ("test_lengths: [8, 0]", "task.test_lengths", "test length 0"),
    ("vocab_size: 3", "task.vocab_size", "group's 2 elements"),
    ("modulus: 1", "task.modulus", None),
]


@pytest.mark.parametrize("line,key,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_sections_exit_2_at_their_key(tmp_path, capsys, line, key, fragment):
    name = "modular_addition" if "modulus" in line else "parity"
    f = tmp_path / "d.yaml"
    f.write_text(f"schema_version: 1\nmodel: {{d_model: 16, n_layers: 1, mixer: {{preset: kda}}}}\n"
                 f"task:\n  name: {name}\n  {line}\n")
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}:5:" in err and key in err and "Traceback" not in err
    if fragment:
        assert fragment in err
