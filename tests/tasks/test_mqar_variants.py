"""MQAR variants: multi-pass (JRT) repetition and the Zoology/Based mixture recipes."""
from pathlib import Path

import numpy as np
import torch
import pytest

from archspace.grammar import load_task_ref, task_seq_len, validate_data
from archspace.tasks.mqar import MQARDataModule, MQARSlice, generate_mqar, slice_seed
from archspace.yamlio import Marks

ROOT = Path(__file__).resolve().parents[2]


def test_repeat_prepends_the_context_and_labels_only_the_final_pass():
    V, T, KV, N = 512, 64, 8, 50
    x1, y1 = (a.numpy() for a in generate_mqar(V, T, KV, N, seed=slice_seed(0, "train", 0)))
    x2, y2 = (a.numpy() for a in generate_mqar(V, T, KV, N, seed=slice_seed(0, "train", 0), repeat=2))
    x3, y3 = (a.numpy() for a in generate_mqar(V, T, KV, N, seed=slice_seed(0, "train", 0), repeat=3))
    C = 2 * KV
    assert x2.shape == (N, T + C) and x3.shape == (N, T + 2 * C)
    assert np.array_equal(x2[:, C:], x1) and np.array_equal(y2[:, C:], y1)  # the single pass, unchanged
    assert np.array_equal(x2[:, :C], x1[:, :C])  # the context again, first
    assert np.array_equal(x3[:, :C], x1[:, :C]) and np.array_equal(x3[:, C:2 * C], x1[:, :C])
    assert (y2[:, :2 * C] == -100).all() and (y3[:, :3 * C] == -100).all()
    # labels only in the query region after the final pass; every answer is in the context
    for row, lab in zip(x2, y2):
        ctx = dict(zip(row[:C:2], row[1:C:2]))
        pos = np.nonzero(lab != -100)[0]
        assert len(pos) == KV and (pos >= 2 * C).all()
        assert all(ctx[row[p]] == lab[p] for p in pos)
    with pytest.raises(ValueError):
        generate_mqar(V, T, KV, N, seed=0, repeat=0)


def test_repeat_data_module_widths_hash_and_split_separation():
    mk = lambda r: MQARDataModule(vocab_size=256, train=[MQARSlice(32, 4, 100)],
                                  test=[MQARSlice(32, 4, 20), MQARSlice(64, 8, 20)], batch_size=8, repeat=r)
    a, b = mk(1), mk(2)
    assert a.data_hash() != b.data_hash() and b.data_hash() == mk(2).data_hash()
    b.setup("fit")
    assert b.train_data.inputs.shape[1] == 40 and b.test_data.inputs.shape[1] == 80
    assert b.train_test_overlap == 0


def test_jrt_in_the_grammar_and_seq_len():
    d = validate_data({"task": {"vocab_size": 256, "repeat": 2, "train": [{"seq_len": 64, "num_kv_pairs": 8,
                                                                          "num_examples": 10}]}}, Marks("<t>"))
    assert d.task.repeat == 2 and task_seq_len(d.task.model_dump()) == 80
    with pytest.raises(Exception, match="repeat"):
        validate_data({"task": {"repeat": 0}}, Marks("<t>"))


@pytest.mark.parametrize("recipe", ["mqar_zoology", "mqar_zoology_jrt"])
def test_zoology_recipes(recipe):
    task = load_task_ref(recipe, Marks(str(ROOT / "x.yaml")))
    assert task["vocab_size"] == 8192
    train = [(s["seq_len"], s["num_kv_pairs"]) for s in task["train"]]
    test = [(s["seq_len"], s["num_kv_pairs"]) for s in task["test"]]
    assert train == [(64, 4), (128, 8), (256, 16), (256, 32), (256, 64)]
    assert test[-1] == (1024, 256) and (64, 4) in test
    assert task.get("repeat", 1) == (2 if recipe.endswith("jrt") else 1)
    # CPU-sized: a few thousand examples a slice
    assert sum(s["num_examples"] for s in task["train"]) <= 20000


def test_curriculum_order_serves_slices_in_turn_cropped_and_reshuffled():
    """order: curriculum -> every slice's rows exactly once per epoch, slice after slice as listed,
    no batch across slices, batches cropped to their slice's width; a new shuffle each epoch."""
    train = [MQARSlice(32, 4, 20), MQARSlice(64, 8, 13), MQARSlice(128, 16, 9)]
    dm = MQARDataModule(vocab_size=256, train=train, test=[MQARSlice(32, 4, 8)], batch_size=8, order="curriculum")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 3 + 2 + 2  # ceil(20/8) + ceil(13/8) + ceil(9/8)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader)
        slices = [int(b["slice"][0]) for b in batches]
        assert slices == [0, 0, 0, 1, 1, 2, 2]
        for b in batches:
            s = int(b["slice"][0])
            assert (b["slice"] == s).all()
            assert b["input_ids"].shape[1] == b["labels"].shape[1] == train[s].seq_len
            assert (b["labels"] != -100).sum(1).eq(train[s].num_kv_pairs).all()  # nothing labelled was cut
        rows = torch.cat([b["input_ids"][:, :32] for b in batches[:3]])
        assert len({tuple(r.tolist()) for r in rows}) == 20  # each row of slice 0 once
        epochs.append(torch.cat([b["input_ids"][:, :32] for b in batches]))
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    # mixed (the default) pads every row to the longest slice and mixes slices within batches
    mixed = MQARDataModule(vocab_size=256, train=train, test=[MQARSlice(32, 4, 8)], batch_size=8)
    mixed.setup("fit")
    batches = list(mixed.train_dataloader())
    assert all(b["input_ids"].shape[1] == 128 for b in batches)
    assert any(len(set(b["slice"].tolist())) > 1 for b in batches)
    with pytest.raises(ValueError, match="order"):
        MQARDataModule(vocab_size=256, train=train, order="sorted")


def test_curriculum_in_the_grammar_refuses_several_devices():
    task = {"vocab_size": 256, "order": "curriculum",
            "train": [{"seq_len": 64, "num_kv_pairs": 8, "num_examples": 10}]}
    assert validate_data({"task": task}, Marks("<t>")).task.order == "curriculum"
    with pytest.raises(Exception, match="one device"):
        validate_data({"task": task, "train": {"devices": 2}}, Marks("<t>"))
    with pytest.raises(Exception, match="mixed"):
        validate_data({"task": {**task, "order": "sorted"}}, Marks("<t>"))


def test_curriculum_space_refuses_several_gpus_per_trial(tmp_path):
    """gpus_per_trial >= 2 sets train.devices in every trial: a curriculum base is refused when the space
    loads (file, line, resources key), not later inside a trial."""
    from archspace.errors import ConfigError
    from archspace.study.space import load_space

    f = tmp_path / "space.yaml"
    text = ("base:\n  task: {order: curriculum}\naxes:\n  lr: [1e-3]\n"
            "objectives: [{metric: val/acc, mode: max}]\nresources: {gpus_per_trial: GPUS}\n")
    f.write_text(text.replace("GPUS", "2"))
    with pytest.raises(ConfigError) as e:
        load_space(f)
    assert "space.yaml:6" in str(e.value) and "resources.gpus_per_trial" in str(e.value)
    assert "one device" in str(e.value)
    f.write_text(text.replace("GPUS", "1"))
    assert load_space(f).gpus_per_trial == 1
