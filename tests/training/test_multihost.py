"""Which rows of the global batch each process reads (`multihost.data_shard`), on meshes
laid over processes by a stand-in sharding; sums over one process."""

import dataclasses
import signal

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tokenkit.training import multihost


@dataclasses.dataclass(frozen=True)
class _Device:
    id: int
    process_index: int


class _Layout:
    """A sharding whose devices belong to processes as `blocks` says:
    `[(process, start, stop), ...]`, one entry per device."""

    def __init__(self, blocks):
        self.blocks = blocks

    def devices_indices_map(self, shape):
        return {_Device(i, p): (slice(a, b),) + (slice(None),) * (len(shape) - 1)
                for i, (p, a, b) in enumerate(self.blocks)}


@pytest.mark.parametrize("process, blocks, expected", [
    # data axis across 2 processes, 2 devices each: halves
    (1, [(0, 0, 2), (0, 2, 4), (1, 4, 6), (1, 6, 8)], (1, 2)),
    # data x model = 2 x 2, model within a process: each holds one half twice
    (0, [(0, 0, 4), (0, 0, 4), (1, 4, 8), (1, 4, 8)], (0, 2)),
    # model axis across processes: every process holds every row
    (1, [(0, 0, 8), (0, 0, 8), (1, 0, 8), (1, 0, 8)], (0, 1)),
    # 4 processes, data over pairs of them: two distinct halves
    (3, [(0, 0, 4), (1, 0, 4), (2, 4, 8), (3, 4, 8)], (1, 2)),
])
def test_each_process_reads_the_rows_its_devices_hold(monkeypatch, process, blocks, expected):
    monkeypatch.setattr(jax, "process_index", lambda: process)
    assert multihost.data_shard(_Layout(blocks), (8, 5)) == expected


def test_interleaved_rows_are_refused(monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    with pytest.raises(ValueError, match="not one contiguous block"):
        multihost.data_shard(_Layout([(0, 0, 2), (1, 2, 4), (0, 4, 6), (1, 6, 8)]), (8,))
    with pytest.raises(ValueError, match="equal, disjoint blocks"):
        multihost.data_shard(_Layout([(0, 0, 6), (1, 4, 8)]), (8,))


def test_one_process_reads_everything_and_sums_alone():
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:4])
    assert multihost.data_shard(NamedSharding(mesh, P("data")), (8,)) == (0, 1)
    assert multihost.sum_over_processes({"b": np.int64(2), "a": 1.5}) == {"a": 1.5, "b": 2.0}
    assert multihost.preemption_signals() == (signal.SIGTERM,)
    assert not multihost.preemption_service_running()
