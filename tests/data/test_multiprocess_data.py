"""Two real JAX processes (`jax.distributed` on the CPU, two devices each, started by
`tools/multiprocess.py`) build the same pipeline for every source kind; their records
must be disjoint and together equal a one-process run's. The processes run this file as
a script (`_worker`), with no process index or count passed to the data code: it takes
them from JAX.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tools import multiprocess

REPO = Path(__file__).resolve().parents[2]
SEED = 7
PROCESSES = 2


def record_id(record):
    """The record's id (seqio lines are `line <id>`)."""
    value = record["id"] if "id" in record else record["text"].split()[1]
    return {"id": np.int64(value)}


def _write_jsonl(path: Path, ids) -> str:
    path.write_text("".join(json.dumps({"text": f"t{i}", "id": i}) + "\n" for i in ids))
    return str(path)


def write_sources(root: Path) -> dict[str, dict]:
    """Every source kind over local data, as `make_source` settings (24 records each)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(100, 124)], "id": list(range(100, 124))}),
                   root / "d.parquet", row_group_size=5)
    datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(300, 324)], "id": list(range(300, 324))}
                               ).save_to_disk(str(root / "saved"))
    (root / "lines.txt").write_text("".join(f"line {i}\n" for i in range(600, 624)))
    return {
        "jsonl": dict(kind="jsonl", paths=[_write_jsonl(root / "a.jsonl", range(0, 10)),
                                           _write_jsonl(root / "b.jsonl", range(10, 24))]),
        "parquet": dict(kind="parquet", paths=[str(root / "d.parquet")]),
        "hf": dict(kind="hf", hf_path="json", hf_kwargs={
            "data_files": _write_jsonl(root / "hf.jsonl", range(200, 224))}),
        "hf_saved": dict(kind="hf_saved", paths=[str(root / "saved")]),
        # 4 files: each process streams whole files; 3 files: every other record
        "hf_streaming_files": dict(kind="hf", hf_path="json", streaming=True, shuffle_buffer_size=5,
                                   hf_kwargs={"data_files": [_write_jsonl(root / f"s{k}.jsonl", range(400 + 6 * k, 406 + 6 * k))
                                                             for k in range(4)]}),
        "hf_streaming_records": dict(kind="hf", hf_path="json", streaming=True, shuffle_buffer_size=5,
                                     hf_kwargs={"data_files": [_write_jsonl(root / f"r{k}.jsonl", range(500 + 8 * k, 508 + 8 * k))
                                                               for k in range(3)]}),
        "seqio": dict(kind="seqio", seqio_name="tokenkit_mp_lines", lines=str(root / "lines.txt")),
    }


def _register_seqio_task(lines: str) -> None:
    import seqio
    import tensorflow as tf

    if "tokenkit_mp_lines" not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            "tokenkit_mp_lines",
            source=seqio.TextLineDataSource({"train": lines}),
            preprocessors=[lambda ds: ds.map(lambda x: {"targets": x})],
            output_features={"targets": seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.string, rank=0)},
        )


def read_ids(settings: dict, cache_dir: str, **kwargs) -> list[int]:
    """The ids one process reads in one epoch (global batch 2: one row per process)."""
    from tokenkit.data.pipeline import make_dataset
    from tokenkit.data.sources import make_source

    settings = dict(settings)
    if settings["kind"] == "seqio":
        _register_seqio_task(settings.pop("lines"))
    if settings["kind"] == "hf" and not settings.get("streaming"):
        settings["hf_kwargs"] = {**settings["hf_kwargs"], "cache_dir": cache_dir}
    batches = make_dataset(make_source(**settings), record_id, batch_size=PROCESSES, seed=SEED,
                           num_epochs=1, **kwargs)
    return [int(i) for batch in batches for i in batch["id"]]


def _worker(specs_file: str, out_pattern: str) -> None:
    import jax

    from tokenkit import entry

    entry.maybe_initialize_distributed()  # from the group's JAX_* variables
    out_file = out_pattern.format(process_id=jax.process_index())
    specs = json.loads(Path(specs_file).read_text())
    out = {"process": [jax.process_index(), jax.process_count(), jax.local_device_count()]}
    for name, settings in specs.items():
        out[name] = read_ids(settings, cache_dir=str(Path(out_file).parent / f"cache{jax.process_index()}"))
    Path(out_file).write_text(json.dumps(out))
    jax.distributed.shutdown()


def run_two_processes(tmp_path: Path, specs: dict[str, dict]) -> list[dict]:
    """Runs `_worker` in two processes joined by `jax.distributed`; their outputs."""
    specs_file = tmp_path / "specs.json"
    specs_file.write_text(json.dumps(specs))
    pattern = str(tmp_path / "process{process_id}.json")
    results = multiprocess.run([sys.executable, __file__, str(specs_file), pattern],
                               num_processes=PROCESSES, devices_per_process=2,
                               log_dir=tmp_path / "logs", timeout=600)
    multiprocess.check(results)
    return [json.loads(Path(pattern.format(process_id=i)).read_text()) for i in range(PROCESSES)]


def _check_split(specs: dict[str, dict], results: list[dict], tmp_path: Path) -> None:
    assert [r["process"] for r in results] == [[0, 2, 2], [1, 2, 2]]
    for name, settings in specs.items():
        single = read_ids(settings, cache_dir=str(tmp_path / "cache_single"))
        first, second = results[0][name], results[1][name]
        assert len(single) == 24, name
        assert first and second and not set(first) & set(second), name
        assert sorted(first + second) == sorted(single), name


@pytest.mark.slow
def test_two_jax_processes_read_disjoint_shards_of_every_source(tmp_path):
    specs = {k: v for k, v in write_sources(tmp_path / "data").items() if k != "seqio"}
    _check_split(specs, run_two_processes(tmp_path, specs), tmp_path)


@pytest.mark.slow
@pytest.mark.seqio
def test_two_jax_processes_read_disjoint_shards_of_a_seqio_task(tmp_path):
    specs = {"seqio": write_sources(tmp_path / "data")["seqio"]}
    _check_split(specs, run_two_processes(tmp_path, specs), tmp_path)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
