import itertools
import json

import gin
import grain
import pytest

from tokenkit.data import sources
from tokenkit.data.sources import StreamOrder

RECORDS = [
    {"text": "Hallo Welt"},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    {"text": "третья"},
]


def _write_jsonl(path, lines):
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    return path


def test_jsonl_random_access(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", [json.dumps(r, ensure_ascii=False) for r in RECORDS[:2]])
    b = _write_jsonl(tmp_path / "b.jsonl", ["", json.dumps(RECORDS[2], ensure_ascii=False)])
    src = sources.JsonlSource([a, b])
    assert len(src) == 3
    assert [src[i] for i in range(3)] == RECORDS
    assert list(grain.MapDataset.source(src).shuffle(seed=1)) != RECORDS or len(src) < 3


def test_jsonl_glob(tmp_path):
    for i, r in enumerate(RECORDS):
        _write_jsonl(tmp_path / f"part{i}.jsonl", [json.dumps(r)])
    assert len(sources.JsonlSource(str(tmp_path / "part*.jsonl"))) == 3
    with pytest.raises(FileNotFoundError, match="No files match"):
        sources.JsonlSource(str(tmp_path / "nothing*.jsonl"))


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "Expecting property name"),
        ('{"txt": "typo"}', "neither 'text' nor 'messages'"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "role 'robot'; valid: system, user, assistant"),
        ('{"text": 3}', "'text' must be a string"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path, line, reason):
    path = _write_jsonl(tmp_path / "bad.jsonl", [json.dumps(RECORDS[0]), line])
    with pytest.raises(sources.MalformedRecordError, match=f"bad.jsonl:2: .*{reason}"):
        sources.JsonlSource(path)


def test_malformed_records_can_be_skipped_and_counted(tmp_path, caplog):
    path = _write_jsonl(tmp_path / "bad.jsonl", ["{oops", json.dumps(RECORDS[0]), '{"x": 1}'])
    src = sources.JsonlSource(path, skip_malformed=True)
    assert len(src) == 1 and src[0] == RECORDS[0]
    assert len(src.skipped) == 2
    assert "bad.jsonl:1" in src.skipped[0] and "bad.jsonl:3" in src.skipped[1]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        sources.JsonlSource(tmp_path / "nope.jsonl")


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": [f"row {i}" for i in range(25)]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=10)
    src = sources.ParquetSource(tmp_path / "d.parquet")
    assert len(src) == 25
    assert src[0] == {"text": "row 0"} and src[24] == {"text": "row 24"} and src[13] == {"text": "row 13"}


def test_hf_datasets_source_on_local_files(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [json.dumps({"text": t}) for t in ("a", "b")])
    src = sources.HFDatasetSource("json", data_files=str(path), cache_dir=str(tmp_path / "cache"))
    assert len(src) == 2 and src[1]["text"] == "b"




def _hf_dataset(n, offset=0):
    import datasets

    return datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(offset, offset + n)], "id": list(range(offset, offset + n))}
    )


def test_hf_saved_source_reads_saved_datasets_and_dicts(tmp_path):
    import datasets

    _hf_dataset(3).save_to_disk(str(tmp_path / "plain"))
    datasets.DatasetDict({"train": _hf_dataset(2, 10), "dev": _hf_dataset(1, 20)}).save_to_disk(
        str(tmp_path / "dict"))
    src = sources.HFSavedSource([tmp_path / "plain", tmp_path / "dict"])
    assert [src[i]["id"] for i in range(len(src))] == [0, 1, 2, 10, 11]
    assert sources.HFSavedSource(tmp_path / "dict", split="dev")[0] == {"text": "t20", "id": 20}
    with pytest.raises(ValueError, match="no split 'test'; valid: train, dev"):
        sources.HFSavedSource(tmp_path / "dict", split="test")
    with pytest.raises(ValueError, match="single Dataset.*got 'dev'"):
        sources.HFSavedSource(tmp_path / "plain", split="dev")
    with pytest.raises(FileNotFoundError, match="missing"):
        sources.HFSavedSource(tmp_path / "missing")


def _write_id_files(tmp_path, files, per_file):
    paths = []
    for f in range(files):
        path = tmp_path / f"part{f}.jsonl"
        _write_jsonl(path, [json.dumps({"text": f"r{f}-{j}", "id": 100 * f + j}) for j in range(per_file)])
        paths.append(str(path))
    return paths


def _ids(iterator, n=None):
    return [r["id"] for r in itertools.islice(iterator, n)]


@pytest.mark.parametrize("buffer", [None, 4])
def test_hf_streaming_resumes_exactly_at_every_position(tmp_path, buffer):
    files = _write_id_files(tmp_path, 4, 4)
    stream = sources.HFStreamingSource("json", data_files=files, shuffle_buffer_size=buffer).ordered(
        StreamOrder(seed=3, shuffle=True, num_epochs=2))
    full = _ids(iter(stream))
    assert len(full) == 32 and sorted(full[:16]) == sorted(full[16:]) == sorted(set(full))
    assert full[:16] != full[16:]  # each epoch in a new order
    if buffer:  # the same file order, with each block of `buffer` records permuted
        plain = _ids(iter(sources.HFStreamingSource("json", data_files=files).ordered(stream.order)))
        blocks = [slice(k, k + buffer) for k in range(0, 32, buffer)]
        assert all(sorted(full[b]) == sorted(plain[b]) for b in blocks) and full != plain
    for cut in range(0, 33):
        it = iter(stream)
        head = _ids(it, cut)
        state = json.loads(json.dumps(it.get_state()))  # as the checkpoint stores it
        resumed = iter(stream)
        resumed.set_state(state)
        assert head + _ids(resumed) == full, cut


@pytest.mark.parametrize("files, shards", [(4, 2), (3, 2), (1, 3)])
def test_hf_streaming_shards_are_disjoint_and_complete(tmp_path, files, shards):
    paths = _write_id_files(tmp_path, files, 6)
    src = sources.HFStreamingSource("json", data_files=paths, shuffle_buffer_size=3)
    parts = [
        _ids(iter(src.ordered(StreamOrder(seed=1, shuffle=True, shard_index=i, num_shards=shards))))
        for i in range(shards)
    ]
    everything = sorted(_ids(iter(src.ordered(StreamOrder(seed=1, shuffle=True)))))
    assert sorted(itertools.chain(*parts)) == everything
    assert len(everything) == files * 6 and all(parts)


def test_worker_slices_subdivide_the_process_shards(tmp_path):
    src = sources.HFStreamingSource("json", data_files=_write_id_files(tmp_path, 1, 12))
    everything = _ids(iter(src))
    parts = {}
    for i in range(2):
        shard = src.ordered(StreamOrder(shard_index=i, num_shards=2))
        for k in range(3):
            worker = shard.ordered(shard.order)
            worker.set_slice(slice(k, None, 3))
            assert worker.shard == (i + 2 * k, 6)
            parts[i, k] = _ids(iter(worker))
        # every-n-th-record splitting: the workers read exactly the process's records
        assert sorted(sum((parts[i, k] for k in range(3)), [])) == sorted(_ids(iter(shard)))
    assert sorted(sum(parts.values(), [])) == sorted(everything) and all(parts.values())
    with pytest.raises(ValueError, match="interleaved parts"):
        src.ordered(StreamOrder()).set_slice(slice(0, 5))


def test_stream_state_refuses_another_shard(tmp_path):
    src = sources.HFStreamingSource("json", data_files=_write_id_files(tmp_path, 2, 2))
    it = iter(src.ordered(StreamOrder(shard_index=0, num_shards=2)))
    next(it)
    other = iter(src.ordered(StreamOrder(shard_index=1, num_shards=2)))
    with pytest.raises(ValueError, match=r"shard \[0, 2\].*reads shard \[1, 2\]"):
        other.set_state(it.get_state())


def test_empty_shard_is_an_error(tmp_path):
    src = sources.HFStreamingSource("json", data_files=_write_id_files(tmp_path, 1, 1))
    with pytest.raises(ValueError, match="shard 1 of 2 no records"):
        list(src.ordered(StreamOrder(shard_index=1, num_shards=2)))


def test_make_source_rejects_unknown_kind():
    with pytest.raises(ValueError, match="valid: jsonl, parquet, hf, hf_saved, seqio, mixture"):
        sources.make_source("csv")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="jsonl", paths=["x"], hf_split="dev"),
         "kind='jsonl'.*does not read hf_split='dev'; kind 'jsonl' reads: paths, skip_malformed, lang_code"),
        (dict(kind="hf", hf_path="json", shuffle_buffer_size=8),
         "shuffle_buffer_size=8 applies only with streaming=True"),
        (dict(kind="hf", hf_path="json", hf_kwargs={"streaming": True}),
         r"Set make_source.streaming instead of hf_kwargs\['streaming'\]"),
        (dict(kind="hf", hf_path="json", streaming=True, shuffle_buffer_size=0),
         "shuffle_buffer_size must be a positive integer or None, got 0"),
        (dict(kind="jsonl"), "needs paths"),
        (dict(kind="seqio"), "needs seqio_name"),
        (dict(kind="mixture", components=[[0]], lang_code="en"), "does not read lang_code"),
        (dict(kind="mixture", components=[[0], [1]], weights=[1.0]), "2 components needs as many weights, got 1"),
        (dict(kind="mixture", components=[[0], [1]], weights=[1.0, -2]), r"positive finite.*\[-2\]"),
    ],
)
def test_make_source_validates_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sources.make_source(**kwargs)


def test_nested_mixture_is_refused():
    inner = sources.Mixture(([0], [1]))
    with pytest.raises(ValueError, match="component 1 is itself a mixture"):
        sources.Mixture(([2], inner))


def test_mixture_from_gin_with_scoped_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    en = _write_jsonl(tmp_path / "en.jsonl", [json.dumps({"text": "hello"})])
    pq.write_table(pa.table({"text": ["hallo", "welt"]}), tmp_path / "de.parquet")
    gin.clear_config()
    try:
        gin.parse_config(f"""
            train/make_source.kind = 'mixture'
            train/make_source.components = [@en/make_source(), @de/make_source()]
            train/make_source.weights = [3, 1]
            train/make_source.mix_languages = False
            en/make_source.paths = ['{en}']
            en/make_source.lang_code = 'en'
            de/make_source.kind = 'parquet'
            de/make_source.paths = ['{tmp_path / "de.parquet"}']
            de/make_source.lang_code = 'de'
        """)
        with gin.config_scope("train"):
            mixture = sources.make_source()
    finally:
        gin.clear_config()
    assert isinstance(mixture, sources.Mixture) and not mixture.mix_languages
    assert mixture.proportions == (0.75, 0.25)
    assert [type(c.source).__name__ for c in mixture.components] == ["JsonlSource", "ParquetSource"]
    assert list(sources.iter_records(mixture)) == [
        {"text": "hello", "lang_code": "en"}, {"text": "hallo", "lang_code": "de"},
        {"text": "welt", "lang_code": "de"},
    ]
    assert sources.first_record(mixture) == {"text": "hello", "lang_code": "en"}


def test_hf_streaming_from_make_source(tmp_path):
    files = _write_id_files(tmp_path, 2, 2)
    src = sources.make_source("hf", hf_path="json", hf_kwargs={"data_files": files}, streaming=True,
                              shuffle_buffer_size=2, lang_code="xx")
    assert isinstance(src.source, sources.HFStreamingSource) and src.source.shuffle_buffer_size == 2
    assert sources.first_record(src) == {"text": "r0-0", "id": 0, "lang_code": "xx"}
    with pytest.raises(TypeError, match="is a stream; it has no length"):
        len(src)


def _register_seqio_lines(tmp_path, n):
    import seqio
    import tensorflow as tf

    lines = [f"line {i}" for i in range(n)]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    name = f"tokenkit_test_lines_{n}"
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.TextLineDataSource({"train": str(tmp_path / "t.txt")}),
        preprocessors=[lambda ds: ds.map(lambda x: {"targets": x})],
        output_features={"targets": seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.string, rank=0)},
    )
    return name, lines


@pytest.mark.seqio
def test_seqio_task_is_sharded_and_resumes_from_a_count(tmp_path):
    name, lines = _register_seqio_lines(tmp_path, 12)
    src = sources.SeqioSource(name)
    assert [r["text"] for r in src.ordered(StreamOrder())] == lines
    shards = [[r["text"] for r in src.ordered(StreamOrder(shard_index=i, num_shards=2))] for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(lines) and not set(shards[0]) & set(shards[1])

    ordered = src.ordered(StreamOrder(seed=4, shuffle=True, num_epochs=2, shard_index=1, num_shards=2))
    full = [r["text"] for r in ordered]
    assert sorted(full[:6]) == sorted(full[6:]) == sorted(shards[1])
    for cut in (0, 3, 6, 7):
        it = iter(ordered)
        head = [next(it)["text"] for _ in range(cut)]
        state = it.get_state()
        assert state["reader"] in (None, cut % 6 or 6)  # a count, not the records
        resumed = iter(ordered)
        resumed.set_state(json.loads(json.dumps(state)))
        assert head + [r["text"] for r in resumed] == full


@pytest.mark.seqio
def test_seqio_names_missing_task_and_field(tmp_path):
    with pytest.raises(ValueError, match="No seqio Task or Mixture 'no_such_task'"):
        next(iter(sources.SeqioSource("no_such_task")))
    name, _ = _register_seqio_lines(tmp_path, 2)
    with pytest.raises(KeyError, match="no feature 'inputs'.*valid: targets"):
        next(iter(sources.SeqioSource(name, text_field="inputs")))


def test_the_documented_mixture_builds():
    """The tested Gin block of docs/data.md parses and builds the mixture it describes."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    doc = (repo / "docs" / "data.md").read_text()
    block = doc.split("<!-- tested: tests/data/test_sources.py -->\n```gin\n", 1)[1].split("```", 1)[0]
    block = block.replace("'data/", f"'{repo}/data/")
    gin.clear_config()
    try:
        gin.parse_config(block)
        with gin.config_scope("train"):
            mixture = sources.make_source()
    finally:
        gin.clear_config()
    chat, prose = mixture.components
    assert mixture.proportions == (0.75, 0.25) and mixture.mix_languages
    assert isinstance(chat.source, sources.JsonlSource) and chat.fields == {"lang_code": "en"}
    assert isinstance(prose.source, sources.HFStreamingSource) and prose.source.shuffle_buffer_size == 1000
    assert "messages" in sources.first_record(chat) and "text" in sources.first_record(prose)
