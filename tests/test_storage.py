"""Remote locations (`tokenkit.storage`): paths, staging, and a whole run on `gs://`.

`gs://` is the local stand-in of tests/fake_gcs.py (fsspec for files, TensorStore's file
driver for Orbax's arrays); every path the code handles is a `gs://` URL.
"""

import json
from pathlib import Path

import gin
import numpy as np
import pytest

from tests.fake_gcs import fake_gcs, local_path  # noqa: F401  (fixture)
from tokenkit import entry, storage

REPO = Path(__file__).resolve().parent.parent
LLAMA3 = f"{REPO}/data/tokenizers/llama3_bpe:source=Llama3"
VALIDATION = REPO / "data" / "corpus" / "validation.jsonl"


def test_local_paths_are_absolute_and_urls_stay_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(storage.path("runs/a")) == str(tmp_path / "runs" / "a")
    assert str(storage.path("file:///tmp/x")) == "/tmp/x"
    assert str(storage.path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    assert storage.is_remote("gs://b/x") and storage.is_remote("s3://b/x")
    assert not storage.is_remote("/tmp/x") and not storage.is_remote("file:///tmp/x")
    with pytest.raises(ValueError, match="memory://.*gs://, s3://"):
        storage.path("memory://bucket/run")


def test_write_text_and_staged_directory_reach_the_bucket(fake_gcs, tmp_path):
    target = storage.write_text("gs://bucket/run/notes.txt", "hello")
    assert str(target) == "gs://bucket/run/notes.txt"
    assert (fake_gcs / "bucket" / "run" / "notes.txt").read_text() == "hello"
    with storage.staged_directory("gs://bucket/run/export") as local:
        assert not str(local).startswith("gs:")
        (local / "sub").mkdir()
        (local / "sub" / "a.bin").write_bytes(b"\x00\x01")
        (local / "config.json").write_text("{}")
        assert not (fake_gcs / "bucket" / "run" / "export").exists()  # uploaded at the end
    assert (fake_gcs / "bucket" / "run" / "export" / "sub" / "a.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in storage.path("gs://bucket/run/export").iterdir()) == ["config.json", "sub"]
    with storage.staged_directory(tmp_path / "here") as local:  # local: no staging
        assert local == tmp_path / "here" and local.is_dir()


def test_data_sources_read_remote_jsonl_and_parquet(fake_gcs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokenkit.data import sources

    lines = VALIDATION.read_text().splitlines()[:7]
    bucket = fake_gcs / "bucket" / "data"
    bucket.mkdir(parents=True)
    (bucket / "a.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (bucket / "b.jsonl").write_text("\n".join(lines[3:]) + "\n")
    records = [json.loads(line) for line in lines]
    texts = [r["text"] for r in records if "text" in r]
    pq.write_table(pa.table({"text": texts}), bucket / "t.parquet", row_group_size=2)

    jsonl = sources.make_source(kind="jsonl", paths=["gs://bucket/data/*.jsonl"])
    assert [str(p) for p in jsonl.paths] == ["gs://bucket/data/a.jsonl", "gs://bucket/data/b.jsonl"]
    assert [jsonl[i] for i in range(len(jsonl))] == records
    parquet = sources.make_source(kind="parquet", paths=["gs://bucket/data/t.parquet"])
    assert [parquet[i]["text"] for i in range(len(parquet))] == texts
    with pytest.raises(FileNotFoundError, match="gs://bucket/data/missing.jsonl"):
        sources.make_source(kind="jsonl", paths=["gs://bucket/data/missing.jsonl"])


@pytest.mark.slow
def test_a_run_with_its_workdir_and_data_in_the_bucket(fake_gcs, tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from tokenkit import score
    from tokenkit.models import init_params, make_transformer, save_pretrained
    from tokenkit.training import export, trainer
    from tokenkit.training.metrics import read_metrics
    from tokenkit.training.setup import random_init_config

    monkeypatch.chdir(tmp_path)  # a mangled `gs:/...` path would appear here
    config = random_init_config(vocab_size=4096, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    save_pretrained(tmp_path / "model", config, init_params(make_transformer(config), 0))
    data = fake_gcs / "bucket" / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text(VALIDATION.read_text())
    (data / "lines.txt").write_text("The tiny world.\nSecond line, with ünïcode.\n")
    run = "gs://bucket/runs/tiny"

    def configure(steps):
        gin.clear_config()
        entry.parse_gin([], [
            f"build_run.student_model = '{tmp_path / 'model'}'", f"build_run.student_tokenizer = '{LLAMA3}'",
            "build_run.dtype = 'float32'", "train/make_source.paths = ['gs://bucket/data/*.jsonl']",
            "eval/make_source.paths = ['gs://bucket/data/train.jsonl']", "DataConfig.batch_size = 4",
            "DataConfig.max_student_length = 32", "DataConfig.eval_texts = 1", "DataConfig.eval_chats = 1",
            "DataConfig.eval_max_length = 64", "train.losses = ['sft']", "train.n_model_parallel = 1",
            "train.log_interval = 1", f"train.steps = {steps}", "train.save_interval = 2",
            "learning_rate_schedule.decay = 'constant'",
        ], finalize=False)

    configure(3)
    trainer.train(run)
    entry.save_operative_config(run)
    configure(5)
    trainer.train(run)  # resumes from step 3
    entry.save_operative_config(run)

    where = local_path(run)
    assert sorted(int(p.name) for p in (where / "checkpoints").iterdir()) == [2, 3, 4, 5][-3:]
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train"] == [1, 2, 3, 4, 5]
    assert list((where / "tensorboard").glob("events.out.tfevents.*"))
    assert (where / "operative_config.gin").is_file()
    final = load_file(str(where / "export" / "model.safetensors"))
    assert json.loads((where / "export" / "config.json").read_text())["vocab_size"] == 4096

    gin.clear_config()
    entry.parse_gin([str(where / "operative_config.gin")], [], finalize=False)
    export.export_checkpoint(run, "gs://bucket/exports/tiny")
    exported = load_file(str(local_path("gs://bucket/exports/tiny") / "model.safetensors"))
    for name in final:
        np.testing.assert_array_equal(exported[name], final[name])

    gin.clear_config()
    records = score.score("gs://bucket/scores", model=str(where / "export"), tokenizer=LLAMA3,
                          text_file="gs://bucket/data/lines.txt")
    written = (local_path("gs://bucket/scores") / score.OUTPUT_FILE).read_text().splitlines()
    assert [json.loads(line) for line in written] == records and len(records) == 2
    assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())


def test_the_launcher_accepts_the_same_urls():
    from tools import launch

    assert launch.REMOTE_WORKDIRS == storage.REMOTE_SCHEMES


def test_a_missing_filesystem_package_is_named(monkeypatch):
    import fsspec

    def missing(kind):
        raise ImportError(f"no implementation for {kind}")

    storage._require_backend.cache_clear()
    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    try:
        with pytest.raises(ImportError, match="s3:// locations need the s3fs package"):
            storage.path("s3://bucket/run")
    finally:
        storage._require_backend.cache_clear()
