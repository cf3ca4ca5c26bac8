import json

import grain
import pytest

from tokenkit.data import sources

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


def test_make_source_rejects_unknown_kind():
    with pytest.raises(ValueError, match="valid: jsonl, parquet, hf, seqio"):
        sources.make_source("csv")


@pytest.mark.seqio
def test_seqio_task_is_checkpointable(tmp_path):
    import seqio
    import tensorflow as tf

    lines = [f"line {i}" for i in range(12)]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    name = "tokenkit_test_lines"
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name,
            source=seqio.TextLineDataSource({"train": str(tmp_path / "t.txt")}),
            preprocessors=[lambda ds: ds.map(lambda x: {"targets": x})],
            output_features={"targets": seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.string, rank=0)},
        )
    ds = sources.SeqioSource(name, shuffle=False)
    it = iter(ds)
    first = [next(it)["text"] for _ in range(5)]
    assert first == lines[:5]
    state = it.get_state()
    rest = [r["text"] for r in it]
    again = iter(ds)
    again.set_state(state)
    assert [r["text"] for r in again] == rest == lines[5:]
