"""Orbax checkpoints of a training run: train state plus the data iterator's position.

A checkpoint holds what a run cannot recompute: the trainable parameters, the optimizer
state, the step, the RNG key, any loss-aggregation state, and the Grain iterator's state
(one file per process, so every host resumes its own shard). Frozen weights are reloaded
from their source on resume. Saving is asynchronous; the last `keep` checkpoints stay.
A workdir with checkpoints is resumed, never wiped. The workdir may be remote
(`gs://bucket/run`, see `tokenkit.storage`): Orbax writes there directly.

In a multi-process run every process calls `save` and `restore` (Orbax coordinates
them: each process writes its shards of the arrays, process 0 the metadata).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import gin
import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from tokenkit import storage
from tokenkit.training import multihost

CHECKPOINT_DIR = "checkpoints"


@gin.configurable(denylist=["workdir"])
class Checkpointer:
    """Saves and restores `(state, data iterator)` pairs under `workdir/checkpoints`.

    Args:
      workdir: the run's directory (local or remote).
      keep: how many of the latest checkpoints to keep.
      async_save: write in a background thread while training continues.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, async_save: bool = True) -> None:
        self.directory = storage.path(workdir) / CHECKPOINT_DIR
        if storage.scheme(self.directory) == "gs" and not _installed("google.cloud.storage"):
            logging.warning(
                "Orbax deletes checkpoints beyond keep=%d on gs:// with google-cloud-storage, "
                "which is not installed: pip install google-cloud-storage.", keep,
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None = None) -> None:
        """Starts saving `state` (and the iterator's position) as checkpoint `step`."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        logging.info("Saving checkpoint %d to %s.", step, self.directory)

    def restore(
        self, step: int, abstract_state: Any, data_iterator: Any | None = None
    ) -> Any:
        """Restores checkpoint `step` into the shapes/shardings of `abstract_state`.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct` (with shardings) or arrays;
        `data_iterator`, if given, is moved to the saved position in place.
        """
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("Restored checkpoint %d from %s.", step, self.directory)
        return restored["state"]

    def reached_preemption(self, step: int) -> bool:
        """Whether JAX's preemption service says every process stops after `step`
        (SIGTERM to any process of a multi-process run; all processes call this at
        every step and get the same answer)."""
        if not multihost.preemption_service_running():
            return False
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def abstract_like(tree: Any) -> Any:
    """`ShapeDtypeStruct`s (with shardings) describing a tree of arrays."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )
