"""The typed batch: sides, chunkings, host-only fields, and that it travels as a pytree
(Grain batching, jax tree maps) unchanged."""

import grain
import jax
import numpy as np
import pytest

from tokenkit.batch import Batch, ChunkIds, SideBatch


def _row(length: int, n: int, truncated: bool = False) -> SideBatch:
    ids = np.zeros(length, np.int32)
    ids[:n] = np.arange(1, n + 1)
    real = np.arange(length) < n
    return SideBatch(ids, real, real.copy(), np.bool_(truncated))


def _example(i: int) -> Batch:
    return Batch(
        student=_row(6, 3 + i % 2, truncated=i == 1),
        teacher=_row(4, 2),
        chunks={"unconstrained": ChunkIds(np.array([0, 1, -1, -1], np.int32),
                                          np.array([0, 0, 1, -1, -1, -1], np.int32))},
    )


def test_sides_chunkings_and_errors():
    batch = _example(0)
    assert set(batch.sides()) == {"student", "teacher"}
    assert batch.side("teacher").input_ids.shape == (4,)
    assert batch.chunking("unconstrained").student.tolist() == [0, 0, 1, -1, -1, -1]
    with pytest.raises(KeyError, match="alm_space needs the 'space' chunk ids; the batch has \\['unconstrained'\\]"):
        batch.chunking("space", "alm_space")
    with pytest.raises(ValueError, match="no teacher side"):
        Batch(student=_row(6, 3)).side("teacher")
    with pytest.raises(ValueError, match="Unknown side 'tutor'"):
        batch.side("tutor")


def test_grain_batches_rows_and_counts_stay_on_the_host():
    dataset = grain.MapDataset.range(4).map(_example).to_iter_dataset().batch(2)
    first = next(iter(dataset))
    assert isinstance(first, Batch) and first.student.input_ids.shape == (2, 6)
    assert first.chunks["unconstrained"].teacher.shape == (2, 4)
    assert first.student.num_tokens() == 3 + 4 and first.student.num_truncated() == 1
    device = first.for_device()
    assert device.student.truncated is None and device.teacher.truncated is None
    assert all(x.shape[0] == 2 for x in jax.tree.leaves(device))
    halves = jax.tree.map(lambda x: x[:1], device)
    assert halves.student.input_ids.shape == (1, 6) and isinstance(halves, Batch)
