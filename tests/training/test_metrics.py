import numpy as np
import pytest

from tests.fake_gcs import fake_gcs  # noqa: F401  (fixture)
from tokenkit.training.metrics import MetricsWriter, read_metrics


def test_jsonl_and_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path)
    writer.write(1, {"loss": np.float32(2.5), "lr": 1e-3})
    writer.write(2, {"loss": float("nan")})
    writer.write(2, {"bpb": 1.25}, split="eval")
    writer.close()
    records = read_metrics(tmp_path)
    assert records[0] == {"step": 1, "split": "train", "loss": 2.5, "lr": 1e-3}
    assert records[1]["loss"] == "nan"
    assert records[2] == {"step": 2, "split": "eval", "bpb": 1.25}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_truncate_after_resume_point(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 6):
        writer.write(step, {"loss": step})
    assert writer.truncate_after(3) == 2
    writer.write(4, {"loss": 40})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1), (2, 2), (3, 3), (4, 40)
    ]


def test_non_scalar_is_refused(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="scalars"):
        writer.write(1, {"x": np.ones(3)})
    writer.close()


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_wandb_without_package_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="tokenkit\\[wandb\\]"):
        MetricsWriter(tmp_path, tensorboard=False, wandb_project="p")


def test_remote_workdir_gets_the_files_on_schedule_and_on_close(fake_gcs):
    bucket = fake_gcs / "b" / "run"
    writer = MetricsWriter("gs://b/run", upload_interval_s=3600)
    writer.write(1, {"loss": 1.0})
    assert not (bucket / "metrics.jsonl").exists()  # not due yet
    writer.write(2, {"loss": 2.0})
    writer.close()
    assert [r["step"] for r in read_metrics("gs://b/run")] == [1, 2]
    assert list((bucket / "tensorboard").glob("events.out.tfevents.*"))

    resumed = MetricsWriter("gs://b/run", tensorboard=False, upload_interval_s=0)
    assert resumed.truncate_after(1) == 1  # the resumed run's log continues at step 1
    resumed.write(2, {"loss": 20.0})
    assert [(r["step"], r["loss"]) for r in read_metrics("gs://b/run")] == [(1, 1.0), (2, 20.0)]
    resumed.close()
