import numpy as np
import pytest
from absl import flags

from tokenkit.data.pipeline import make_dataset


def transform(record):
    return {"x": np.asarray([record, record * 2], np.int32)}


SOURCE = list(range(20))


def _take(it, n):
    return [next(it)["x"].copy() for _ in range(n)]


def test_same_seed_same_batches_and_epochs_reshuffle():
    a = _take(iter(make_dataset(SOURCE, transform, batch_size=4, seed=7)), 10)
    b = _take(iter(make_dataset(SOURCE, transform, batch_size=4, seed=7)), 10)
    c = _take(iter(make_dataset(SOURCE, transform, batch_size=4, seed=8)), 10)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    epoch1 = np.concatenate([x[:, 0] for x in a[:5]])
    epoch2 = np.concatenate([x[:, 0] for x in a[5:]])
    assert sorted(epoch1) == sorted(epoch2) == SOURCE  # each epoch sees every record once
    assert not np.array_equal(epoch1, epoch2)  # in a new order


def test_iterator_state_round_trips():
    it = iter(make_dataset(SOURCE, transform, batch_size=4, seed=1))
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 4)
    resumed = iter(make_dataset(SOURCE, transform, batch_size=4, seed=1))
    resumed.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(expected, _take(resumed, 4)))


def test_processes_read_disjoint_shards():
    shards = [
        np.concatenate(_take(iter(make_dataset(SOURCE, transform, batch_size=4, seed=3,
                                               num_epochs=1, process_index=i, process_count=2)), 5))
        for i in range(2)
    ]
    assert shards[0].shape == (10, 2)
    assert sorted(np.concatenate([s[:, 0] for s in shards])) == SOURCE


def test_batch_must_divide_over_processes():
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        make_dataset(SOURCE, transform, batch_size=4, process_index=0, process_count=3)


def test_worker_processes_are_deterministic_and_resumable():
    # With workers, each worker batches its own slice of the records, so the batches
    # differ from the single-process ones; they are still fixed by seed and resumable.
    flags.FLAGS.mark_as_parsed()

    source = list(range(24))  # 12 records per worker: three full batches each

    def make():
        return make_dataset(source, transform, batch_size=4, seed=5, num_workers=2, num_epochs=1)

    first = _take(iter(make()), 6)
    assert all(np.array_equal(x, y) for x, y in zip(first, _take(iter(make()), 6)))
    assert sorted(np.concatenate([b[:, 0] for b in first])) == source
    it = iter(make())
    _take(it, 2)
    state = it.get_state()
    resumed = iter(make())
    resumed.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(first[2:], _take(resumed, 4)))


def test_packing_fills_rows_with_the_token_stream():
    docs = [list(range(1, 4)), list(range(10, 16)), list(range(20, 22)), list(range(30, 35))]

    def unpadded(i):
        return {"input_ids": np.asarray(docs[i], np.int32), "loss_mask": np.ones(len(docs[i]), bool)}

    rows = list(make_dataset(list(range(4)), unpadded, batch_size=1, shuffle=False,
                             num_epochs=1, pack_length=4))
    stream = [t for d in docs for t in d]
    got = np.concatenate([r.student.input_ids[0][r.student.attention_mask[0]] for r in rows])
    assert got.tolist() == stream[: len(got)]
    assert all(r.student.input_ids.shape == (1, 4) and r.teacher is None for r in rows)
    assert all(r.student.attention_mask[0].all() for r in rows[:-1])
