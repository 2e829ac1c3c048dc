"""Tests of the MQAR generator, data module and accuracy helper."""

import numpy as np
import pytest
import torch

from archspace.tasks.mqar import (
    DEFAULT_TEST,
    DEFAULT_TRAIN,
    GENERATOR_VERSION,
    MQARDataModule,
    MQARSlice,
    generate_mqar,
    mqar_accuracy,
    overlap,
    slice_seed,
)

V, T, KV, N = 8192, 128, 8, 2000
CTX = 2 * KV
SPACE = (T - CTX) // 2


def _query_positions(labels: np.ndarray, kv: int) -> np.ndarray:
    rows, cols = np.nonzero(labels != -100)
    assert np.array_equal(np.bincount(rows, minlength=labels.shape[0]),
                          np.full(labels.shape[0], kv)), "each example needs kv labels"
    return cols.reshape(labels.shape[0], kv)  # nonzero is row-major: grouped per row


@pytest.fixture(scope="module")
def plain():
    x, y = generate_mqar(V, T, KV, N, seed=3, random_non_queries=False)
    return x.numpy(), y.numpy()


@pytest.fixture(scope="module")
def noisy():
    x, y = generate_mqar(V, T, KV, N, seed=3)
    return x.numpy(), y.numpy()


def test_shapes_and_dtypes():
    x, y = generate_mqar(V, T, KV, 5, seed=0)
    assert x.shape == y.shape == (5, T)
    assert x.dtype == y.dtype == torch.int64


@pytest.mark.parametrize("which", ["plain", "noisy"])
def test_structure(which, request):
    x, y = request.getfixturevalue(which)
    keys, values = x[:, 0:CTX:2], x[:, 1:CTX:2]
    assert ((keys >= 1) & (keys < V // 2)).all()
    assert ((values >= V // 2) & (values < V)).all()
    for a in (keys, values):
        s = np.sort(a, axis=1)
        assert (s[:, 1:] != s[:, :-1]).all(), "keys/values must be distinct within an example"

    pos = _query_positions(y, KV)
    assert (pos >= CTX).all() and ((pos - CTX) % 2 == 0).all() and (pos <= T - 2).all()
    queried = np.take_along_axis(x, pos, axis=1)
    # every key is queried exactly once (label positions are a permutation of the keys)
    assert np.array_equal(np.sort(queried, axis=1), np.sort(keys, axis=1))
    # the label is the value paired with the queried key in the context
    match = queried[:, :, None] == keys[:, None, :]
    assert (match.sum(axis=2) == 1).all()
    expected = np.take_along_axis(values, match.argmax(axis=2), axis=1)
    assert np.array_equal(np.take_along_axis(y, pos, axis=1), expected)
    assert ((y == -100) | (y >= V // 2)).all()


def test_filler_without_noise_is_zero(plain):
    x, y = plain
    region = x[:, CTX:].copy()
    q = y[:, CTX:] != -100
    assert (region[~q] == 0).all()
    assert (region[q] != 0).all()


def test_random_non_queries_only_changes_filler(plain, noisy):
    (xp, yp), (xn, yn) = plain, noisy
    assert np.array_equal(yp, yn)  # same seed: same keys, values and gaps
    filler = xp == 0
    assert np.array_equal(xp[~filler], xn[~filler])
    fill = xn[filler]
    assert (fill >= 0).all() and (fill < V).all()
    assert (fill != 0).mean() > 0.99  # uniform over [0, V): zero has prob 1/V
    assert fill.std() > V / 4  # spread over the whole vocabulary (uniform: V/sqrt(12))


def test_query_gaps_skewed_to_start(plain):
    _, y = plain
    gaps = (_query_positions(y, KV) - CTX) // 2
    assert gaps.mean() < 0.35 * SPACE  # about 0.25 * SPACE for power_a=0.01
    counts = np.bincount(gaps.ravel(), minlength=SPACE)
    assert counts[0] > 3 * counts[-1]
    # contrast: power_a=1 is uniform over the slots, mean (SPACE - 1) / 2
    _, yu = generate_mqar(V, T, KV, N, seed=3, power_a=1.0)
    gaps_u = (_query_positions(yu.numpy(), KV) - CTX) // 2
    assert abs(gaps_u.mean() - (SPACE - 1) / 2) < 0.05 * SPACE


def test_query_region_full_when_kv_is_quarter():
    # seq_len == 4 * kv: every query slot is used
    x, y = generate_mqar(64, 32, 8, 50, seed=1, random_non_queries=False)
    pos = _query_positions(y.numpy(), 8)
    assert np.array_equal(np.sort(pos, axis=1), np.tile(np.arange(16, 32, 2), (50, 1)))


def test_small_vocab_many_pairs():
    # 64 distinct keys from only 127 candidates (collision-heavy path)
    x, y = generate_mqar(258, 256, 64, 200, seed=0)
    keys = np.sort(x.numpy()[:, 0:128:2], axis=1)
    assert (keys[:, 1:] != keys[:, :-1]).all() and keys.min() >= 1 and keys.max() < 129


def test_determinism():
    a = generate_mqar(512, 64, 4, 300, seed=11)
    b = generate_mqar(512, 64, 4, 300, seed=11)
    c = generate_mqar(512, 64, 4, 300, seed=12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(seq_len=63), "even"),
    (dict(vocab_size=64), "vocab_size must be > seq_len"),
    (dict(num_kv_pairs=17), r"num_kv_pairs \* 4"),
    (dict(num_kv_pairs=0), "num_kv_pairs must be >= 1"),
    (dict(num_examples=-1), "num_examples"),
    (dict(power_a=0.0), "power_a"),
    (dict(seq_len=64.0), "seq_len must be an int"),
])
def test_validation_errors(kwargs, match):
    args = dict(vocab_size=512, seq_len=64, num_kv_pairs=4, num_examples=4, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate_mqar(**args)


def test_datamodule_validation_errors():
    with pytest.raises(ValueError, match="even"):
        MQARDataModule(vocab_size=512, train=[MQARSlice(63, 4, 10)], test=[MQARSlice(64, 4, 10)])
    with pytest.raises(ValueError, match="vocab_size"):
        MQARDataModule(vocab_size=128, train=[MQARSlice(64, 4, 10)], test=[MQARSlice(256, 4, 10)])
    with pytest.raises(ValueError, match="at least one slice"):
        MQARDataModule(vocab_size=512, train=[], test=[MQARSlice(64, 4, 10)])


def test_slice_seeds_disjoint():
    states = {}
    for seed in (0, 1, 7):
        for split in ("train", "test", "val"):
            for i in range(8):
                st = tuple(slice_seed(seed, split, i).generate_state(4))
                assert st not in states, (seed, split, i, states.get(st))
                states[st] = (seed, split, i)
    with pytest.raises(ValueError):
        slice_seed(0, "validation", 0)


def test_default_train_test_have_no_identical_rows():
    dm = MQARDataModule()  # Zoology's default mixtures, vocab 8192
    dm.setup()
    assert len(dm.train_data) == sum(s.num_examples for s in DEFAULT_TRAIN)
    assert len(dm.test_data) == sum(s.num_examples for s in DEFAULT_TEST)
    assert dm.train_test_overlap == 0
    # same (64, 4) setting in both splits, yet different data
    tr = dm.train_data.inputs[dm.train_data.slice_ids == 0, :64]
    te = dm.test_data.inputs[dm.test_data.slice_ids == 0, :64]
    assert overlap(tr.numpy(), te.numpy()) == 0
    assert not torch.equal(tr[: len(te)], te)


def test_overlap_helper():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, size=(100, 12))
    b = rng.integers(0, 50, size=(30, 12))
    assert overlap(a, b) == 0
    b[3], b[17] = a[42], a[0]
    assert overlap(a, b) == 2
    assert overlap(torch.from_numpy(a), torch.from_numpy(b)) == 2
    # widths differ: rows compared after right-padding with zeros
    assert overlap(np.array([[1, 2, 0, 0]]), np.array([[1, 2]])) == 1
    assert overlap(np.array([[1, 2, 0, 5]]), np.array([[1, 2]])) == 0


def _small_dm(seed=0, batch_size=16, **kw):
    return MQARDataModule(
        vocab_size=128,
        train=[MQARSlice(32, 2, 300), MQARSlice(64, 8, 200)],
        test=[MQARSlice(32, 4, 40), MQARSlice(64, 16, 30), MQARSlice(32, 4, 10)],
        batch_size=batch_size, seed=seed, **kw)


def test_datamodule_padding_and_mixing():
    dm = _small_dm()
    dm.setup("fit")
    tr = dm.train_data
    assert tr.inputs.shape == (500, 64)
    assert torch.equal(tr.slice_ids, torch.tensor([0] * 300 + [1] * 200))
    short = tr.slice_ids == 0
    assert (tr.inputs[short, 32:] == 0).all() and (tr.labels[short, 32:] == -100).all()
    # each slice equals the standalone generator with its derived seed
    x, y = generate_mqar(128, 64, 8, 200, seed=slice_seed(0, "train", 1))
    assert torch.equal(tr.inputs[~short].long(), x) and torch.equal(tr.labels[~short].long(), y)
    x, y = generate_mqar(128, 32, 2, 300, seed=slice_seed(0, "train", 0))
    assert torch.equal(tr.inputs[short, :32].long(), x)

    batches = list(dm.train_dataloader())
    b = batches[0]
    assert set(b) == {"input_ids", "labels", "slice"}
    assert b["input_ids"].dtype == b["labels"].dtype == b["slice"].dtype == torch.int64
    assert b["input_ids"].shape == b["labels"].shape == (16, 64) and b["slice"].shape == (16,)
    assert any(len(bb["slice"].unique()) == 2 for bb in batches), "batches should mix slices"
    assert sum(len(bb["slice"]) for bb in batches) == 500
    n_labels = sum(int((bb["labels"] != -100).sum()) for bb in batches)
    assert n_labels == 300 * 2 + 200 * 8

    # shuffle is reproducible across data modules with the same seed
    dm2 = _small_dm()
    dm2.setup("fit")
    assert torch.equal(next(iter(dm2.train_dataloader()))["input_ids"], b["input_ids"])
    # ... and actually shuffles: the first batch is not the first 16 rows
    assert not torch.equal(b["input_ids"], tr.inputs[:16].long())

    # validation serves its own mixture (the test settings, validation seeds), test the test mixture, unshuffled
    val = list(dm.val_dataloader())
    test = list(dm.test_dataloader())
    assert torch.equal(torch.cat([v["input_ids"] for v in val]), dm.val_data.inputs.long())
    assert torch.equal(torch.cat([t["slice"] for t in test]), dm.test_data.slice_ids)
    x, _ = generate_mqar(128, 32, 4, 40, seed=slice_seed(0, "val", 0))
    assert dm.val_dropped == 0 and torch.equal(dm.val_data.inputs[:40, :32].long(), x)
    assert dm.slice_names("train") == ["seq32_kv2", "seq64_kv8"]
    assert dm.slice_names("test") == ["seq32_kv4", "seq64_kv16", "seq32_kv4_2"]
    assert dm.slice_names("val") == dm.slice_names("test")


def test_setup_idempotent_and_deterministic():
    dm = _small_dm()
    dm.setup("test")
    assert dm.train_data is None and dm.test_data is not None
    first = dm.test_data
    dm.setup("fit")
    dm.setup()
    assert dm.test_data is first and dm.train_data is not None
    other = _small_dm()
    other.setup()
    assert torch.equal(other.train_data.inputs, dm.train_data.inputs)
    assert torch.equal(other.test_data.labels, dm.test_data.labels)


def test_data_hash():
    h = _small_dm().data_hash()
    assert len(h) == 16 and all(c in "0123456789abcdef" for c in h)
    assert h == _small_dm().data_hash()
    assert _small_dm(batch_size=7).data_hash() == h  # loader settings do not change data
    assert _small_dm(seed=1).data_hash() != h
    assert _small_dm(power_a=0.5).data_hash() != h
    assert _small_dm(random_non_queries=False).data_hash() != h
    assert isinstance(GENERATOR_VERSION, int)


def test_mqar_accuracy_hand_made():
    labels = torch.tensor([
        [-100, 5, -100, 7],
        [-100, -100, 9, -100],
        [4, -100, -100, 6],
    ])
    preds = torch.tensor([
        [0, 5, 1, 2],    # 1 / 2
        [9, 9, 9, 9],    # 1 / 1
        [4, 0, 0, 6],    # 2 / 2
    ])
    slices = torch.tensor([0, 2, 0])
    c, n, pc, pn = mqar_accuracy(preds, labels, slices, 3)
    assert (int(c), int(n)) == (4, 5)
    assert pc.tolist() == [3, 0, 1] and pn.tolist() == [4, 0, 1]
    # logits path: argmax over the last dim gives the same predictions
    logits = torch.nn.functional.one_hot(preds, 10).float()
    out = mqar_accuracy(logits, labels, slices, 3)
    assert [o.tolist() for o in out] == [4, 5, [3, 0, 1], [4, 0, 1]]
    # a wrong prediction at an unlabelled position does not count
    preds2 = preds.clone()
    preds2[0, 0] = 123
    assert int(mqar_accuracy(preds2, labels, slices, 3)[0]) == 4
    with pytest.raises(ValueError):
        mqar_accuracy(preds[:, :3], labels, slices, 3)


def test_validation_split_is_held_out_from_train_and_test():
    # tiny vocabulary and length: identical rows across splits are common, and none may reach validation
    dm = MQARDataModule(vocab_size=12, train=[MQARSlice(8, 1, 400)], test=[MQARSlice(8, 1, 200)], batch_size=50,
                        seed=0, random_non_queries=False)
    dm.setup("fit")
    rows = {name: torch.cat([b["input_ids"] for b in loader()])
            for name, loader in (("train", dm.train_dataloader), ("val", dm.val_dataloader),
                                 ("test", dm.test_dataloader))}
    assert dm.val_dropped > 0 and len(rows["val"]) == 200 - dm.val_dropped
    assert overlap(rows["train"].numpy(), rows["val"].numpy()) == 0
    assert overlap(rows["test"].numpy(), rows["val"].numpy()) == 0
