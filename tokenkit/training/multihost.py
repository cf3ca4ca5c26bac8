"""What a training run does differently when it is one of several processes.

A multi-process run (a TPU slice, several GPU hosts, or `tools/multiprocess.py` on one
machine) runs the same program in every process; JAX arrays span the devices of all of
them. Three things need the processes to agree:

- which rows of the global batch each process reads (`data_shard`): the rows its own
  devices hold under the batch sharding. With the data axis across processes each reads
  its own slice; with a model axis across processes (the batch replicated over it)
  processes holding the same rows read the same records;
- host-side counters (tokens read, truncations): each process counts its own rows and
  the logged values are summed over processes (`sum_over_processes`);
- when to stop after SIGTERM (`preemption_signals`): JAX's preemption service (started
  by `jax.distributed.initialize`) catches SIGTERM in any process and makes every
  process reach the same step (Orbax's `reached_preemption`); a Python handler would
  replace its handler, so the run installs one only when it is alone.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import Sharding


def data_shard(sharding: Sharding, global_shape: tuple[int, ...]) -> tuple[int, int]:
    """`(index, count)`: this process reads shard `index` of `count` equal, contiguous
    shards of the global batch's rows (the rows its devices hold under `sharding`).

    Raises:
      ValueError: a process's devices hold rows that are not one contiguous block, or
        processes hold overlapping but different blocks (a mesh whose data axis is
        interleaved across processes).
    """
    rows = global_shape[0]
    blocks: dict[int, set[tuple[int, int]]] = {}
    for device, index in sharding.devices_indices_map(tuple(global_shape)).items():
        start, stop, _ = index[0].indices(rows) if index else (0, rows, 1)
        blocks.setdefault(device.process_index, set()).add((start, stop))
    spans = {}
    for process, held in blocks.items():
        start, stop = min(b[0] for b in held), max(b[1] for b in held)
        covered = sorted(held)
        contiguous = covered[0][0] == start and all(
            a[1] >= b[0] for a, b in zip(covered, covered[1:])
        )
        if not contiguous:
            raise ValueError(
                f"Process {process} holds the rows {covered} of the global batch, which are "
                "not one contiguous block; order the mesh's devices by process."
            )
        spans[process] = (start, stop)
    distinct = sorted(set(spans.values()))
    size = rows // len(distinct)
    if any(stop - start != size for start, stop in distinct) or any(
        a[1] > b[0] for a, b in zip(distinct, distinct[1:])
    ):
        raise ValueError(
            f"The processes hold the row blocks {distinct} of a batch of {rows}; they must "
            "split it into equal, disjoint blocks."
        )
    return distinct.index(spans[jax.process_index()]), len(distinct)


def sum_over_processes(values: Mapping[str, float]) -> dict[str, float]:
    """`values` summed over all processes (every process must call this, with the same
    keys); a no-op with one process."""
    keys = sorted(values)
    if jax.process_count() == 1:
        return {k: float(values[k]) for k in keys}
    from jax.experimental import multihost_utils

    local = np.asarray([float(values[k]) for k in keys], np.float64)
    gathered = np.asarray(multihost_utils.process_allgather(local))
    return dict(zip(keys, (float(x) for x in gathered.reshape(-1, len(keys)).sum(0))))


def preemption_service_running() -> bool:
    """Whether JAX's preemption service runs (several processes, and
    `jax_enable_preemption_service` left on)."""
    from jax._src import distributed  # the service's handle is not public API

    return jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None


def preemption_signals() -> tuple[int, ...]:
    """The signals the training loop should catch itself: SIGTERM when this is the only
    process, none when there are several (JAX's preemption service catches it for all;
    without the service a SIGTERM ends the process, since saving in one process alone
    would wait forever for the others)."""
    if jax.process_count() == 1:
        return (signal.SIGTERM,)
    if not preemption_service_running():
        logging.warning(
            "JAX's preemption service is off (jax_enable_preemption_service): SIGTERM ends "
            "the run without saving."
        )
    return ()
