import json

import grain
import numpy as np
import pytest
from absl import flags

from tokenkit.data import sources
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


# --- mixtures and stream sources -------------------------------------------------------


def record_id(record):
    """A record's id and language as one row (lang 0 when untagged)."""
    return {"x": np.asarray([record["id"], {"en": 1, "de": 2}.get(record.get("lang_code"), 0)], np.int64)}


def _jsonl_ids(path, ids):
    path.write_text("".join(json.dumps({"text": f"t{i}", "id": i}) + "\n" for i in ids))
    return str(path)


def _mixture(tmp_path, mix_languages):
    en = sources.make_source("jsonl", paths=[_jsonl_ids(tmp_path / "en.jsonl", range(0, 40))], lang_code="en")
    de = sources.make_source("hf", hf_path="json", streaming=True, shuffle_buffer_size=5, lang_code="de",
                             hf_kwargs={"data_files": [_jsonl_ids(tmp_path / f"de{k}.jsonl", range(1000 + 10 * k, 1010 + 10 * k))
                                                       for k in range(2)]})
    return sources.Mixture((en, de), weights=(3.0, 1.0), mix_languages=mix_languages)


@pytest.mark.parametrize("mix_languages", [True, False])
def test_mixture_follows_weights_and_resumes_exactly(tmp_path, mix_languages):
    def make():
        return make_dataset(_mixture(tmp_path, mix_languages), record_id, batch_size=4, seed=2)

    batches = _take(iter(make()), 20)
    langs = np.concatenate([b[:, 1] for b in batches])
    assert np.sum(langs == 1) == 3 * np.sum(langs == 2) == 60  # weights 3:1 (deterministic interleaving)
    per_batch = [set(b[:, 1].tolist()) for b in batches]
    if mix_languages:
        assert any(len(s) == 2 for s in per_batch)
    else:
        assert all(len(s) == 1 for s in per_batch)  # each batch from one component
    en_ids = [i for b in batches for i, lang in b if lang == 1]
    assert sorted(en_ids[:40]) == list(range(40))  # every record once per epoch
    de_ids = [i for b in batches for i, lang in b if lang == 2]
    assert sorted(de_ids[:20]) == list(range(1000, 1020))

    it = iter(make())
    _take(it, 7)
    state = json.loads(json.dumps(it.get_state()))
    resumed = iter(make())
    resumed.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(batches[7:], _take(resumed, 13)))


@pytest.mark.slow
def test_mixture_with_workers_resumes_exactly(tmp_path):
    flags.FLAGS.mark_as_parsed()

    def make():
        return make_dataset(_mixture(tmp_path, True), record_id, batch_size=4, seed=2, num_workers=2)

    it = iter(make())
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 5)
    assert {lang for b in expected for lang in b[:, 1]} == {1, 2}
    resumed = iter(make())
    resumed.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(expected, _take(resumed, 5)))


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_streams_are_sharded_by_process_and_worker(tmp_path, workers):
    flags.FLAGS.mark_as_parsed()
    files = [_jsonl_ids(tmp_path / f"p{k}.jsonl", range(100 * k, 100 * k + 6)) for k in range(4)]
    source = sources.HFStreamingSource("json", data_files=files, shuffle_buffer_size=3)

    def ids(**kwargs):
        batches = list(make_dataset(source, record_id, seed=1, num_epochs=1, **kwargs))
        return np.concatenate([b["x"][:, 0] for b in batches]).tolist()

    everything = ids(batch_size=2, process_index=0, process_count=1)
    assert sorted(everything) == sorted(i for k in range(4) for i in range(100 * k, 100 * k + 6))
    shards = [ids(batch_size=2, process_index=i, process_count=2, num_workers=workers) for i in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(everything)


def test_foreign_iter_datasets_are_refused():
    with pytest.raises(TypeError, match="cannot be sharded per process"):
        make_dataset(grain.MapDataset.source(SOURCE).to_iter_dataset(), transform, batch_size=4,
                     process_index=0, process_count=1)


def test_too_few_records_for_the_processes_is_an_error():
    with pytest.raises(ValueError, match="has 2 records, too few for 4 processes"):
        make_dataset([0, 1], transform, batch_size=4, process_index=3, process_count=4)
