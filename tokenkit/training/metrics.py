"""Metrics: JSONL and TensorBoard event files in the workdir, Weights & Biases optional.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step
(`{"step": 10, "split": "train", "loss": ...}`); on resume, lines past the restored
step are dropped so a resumed run's log reads as if it had never stopped.

A remote workdir (`gs://bucket/run`, see `tokenkit.storage`) gets the same files: they
are written into a local staging directory and uploaded whole (JSONL and TensorBoard
event files are appended to, which object stores cannot do) at most every
`upload_interval_s` seconds, on resume and when the writer closes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gin
import numpy as np
from absl import logging

from tokenkit import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _scalar(value: Any) -> float | int | str:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"Metric values must be scalars, got shape {array.shape}.")
    item = array.item()
    return item if isinstance(item, (int, str)) and not isinstance(item, bool) else float(item)


def read_metrics(workdir: storage.Location) -> list[dict[str, Any]]:
    """All records of a workdir's `metrics.jsonl` (empty if there is none)."""
    path = storage.path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@gin.configurable(denylist=["workdir", "config", "enabled"])
class MetricsWriter:
    """Writes scalar metrics to JSONL, TensorBoard and (optionally) W&B.

    Args:
      workdir: the run's directory, local or remote (None: log lines only).
      tensorboard: also write TensorBoard event files under `workdir/tensorboard`.
      wandb_project: if set, log to this Weights & Biases project (needs the `wandb`
        extra); `wandb_name` names the run.
      upload_interval_s: for a remote workdir, the least time between uploads of the
        files (each upload copies them whole).
      enabled: False on processes other than 0.
    """

    def __init__(
        self,
        workdir: storage.Location | None,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_name: str | None = None,
        upload_interval_s: float = 30.0,
        config: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.workdir = storage.path(workdir) if workdir is not None else None
        self.enabled = enabled and self.workdir is not None
        self._tb = None
        self._wandb = None
        self._staging: tempfile.TemporaryDirectory | None = None
        self._upload_interval_s = upload_interval_s
        self._uploaded_at = time.monotonic()
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if storage.is_remote(self.workdir):
            self._staging = tempfile.TemporaryDirectory(prefix="tokenkit-metrics-")
            self._local = Path(self._staging.name)
            remote = self.workdir / METRICS_FILE
            if remote.exists():  # a resumed run appends to what is there
                (self._local / METRICS_FILE).write_bytes(remote.read_bytes())
        else:
            self._local = Path(os.fspath(self.workdir))
        self._jsonl = open(self._local / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self._local / TENSORBOARD_DIR))
        if wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise ImportError(
                    "wandb_project is set but wandb is not installed: "
                    "pip install 'tokenkit[wandb]'."
                ) from e
            self._wandb = wandb.init(
                project=wandb_project, name=wandb_name, config=dict(config or {}),
                dir=str(self._local), resume="allow",
            )

    def truncate_after(self, step: int) -> int:
        """Drops records with `step > step` (called on resume); returns how many."""
        if not self.enabled:
            return 0
        self._jsonl.close()
        records = read_metrics(self._local)
        kept = [r for r in records if r.get("step", -1) <= step]
        path = self._local / METRICS_FILE
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        self._jsonl = open(path, "a", encoding="utf-8")
        self._upload(force=True)
        dropped = len(records) - len(kept)
        if dropped:
            logging.info("Dropped %d metric records past the restored step %d.", dropped, step)
        return dropped

    def _upload(self, *, force: bool = False) -> None:
        """Copies the staged files to a remote workdir (when due, or `force`)."""
        if self._staging is None:
            return
        now = time.monotonic()
        if not force and now - self._uploaded_at < self._upload_interval_s:
            return
        storage.upload_tree(self._local, self.workdir)
        self._uploaded_at = now

    def write(self, step: int, metrics: Mapping[str, Any], *, split: str = "train") -> None:
        """Logs a dict of scalars for `step`; non-finite values are kept as strings."""
        values = {k: _scalar(v) for k, v in metrics.items()}
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )
        logging.info("[%s] step %d: %s", split, step, shown)
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        for k, v in values.items():
            record[k] = v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
        self._jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in values.items()}, step=step)
        self._upload()

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._upload(force=True)
        if self._staging is not None:
            self._staging.cleanup()
            self._staging = None
