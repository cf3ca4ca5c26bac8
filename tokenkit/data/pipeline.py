"""The Grain pipeline: shuffle, shard per process, encode in workers, batch.

    source -> shuffle(seed) -> repeat -> this process's shard -> map(transform)
           -> batch -> prefetch in `num_workers` processes

The transform (encoding with both tokenizers, alignment, loss masks) runs inside the
Grain worker processes so the accelerator does not wait for the tokenizers. The
iterator's state is small (a position) and goes into every checkpoint; a restored
iterator continues with exactly the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from tokenkit.batch import Batch, SideBatch

Transform = Callable[[Mapping[str, Any]], Any]


class _MapTransform(grain.transforms.Map):
    """Wraps a callable for Grain (which wants a `Map` to pickle into workers)."""

    def __init__(self, fn: Transform):
        self.fn = fn

    def map(self, element: Mapping[str, Any]) -> Any:
        return self.fn(element)


def make_dataset(
    source: Any,
    transform: Transform,
    *,
    batch_size: int = 16,
    seed: int = 1234,
    shuffle: bool = True,
    num_epochs: int | None = None,
    num_workers: int = 0,
    worker_buffer_size: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    pack_length: int | None = None,
) -> grain.IterDataset:
    """An iterable of batches (`Batch`es of `[batch_size // process_count, ...]` arrays).

    Args:
      source: a random-access source (`tokenkit.data.sources`) or an `IterDataset`
        (seqio), whose order and sharding are then the source's own.
      transform: record -> one `Batch` row of fixed-shape numpy arrays (or, with
        `pack_length`, a dict of variable-length `input_ids` / `loss_mask`).
      batch_size: the *global* batch size; each process produces its share.
      seed: fixes the order (and each epoch's reshuffle).
      num_epochs: passes over the data (None: forever).
      num_workers: Grain worker processes (0: encode in the main process).
      pack_length: concatenate the transform's variable-length outputs into one stream
        and cut it into student rows of `pack_length` (pretraining-style packing: every
        position holds a real token, and an example attends to the ones before it in
        its row).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {process_count} processes."
        )
    if isinstance(source, grain.IterDataset):
        dataset = source.map(_MapTransform(transform))
    else:
        dataset = grain.MapDataset.source(source)
        if shuffle:
            dataset = dataset.shuffle(seed=seed)
        dataset = dataset.repeat(num_epochs)
        if process_count > 1:
            dataset = dataset[process_index::process_count]
        dataset = dataset.map(_MapTransform(transform)).to_iter_dataset()
    if pack_length is not None:
        dataset = grain.experimental.ConcatThenSplitIterDataset(
            dataset, length_struct={k: pack_length for k in PACKED_KEYS}
        ).map(_PackedRow())
    dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
    if num_workers > 0:
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=num_workers, per_worker_buffer_size=worker_buffer_size
            )
        )
    return dataset


PACKED_KEYS = ("input_ids", "loss_mask")


class _PackedRow(grain.transforms.Map):
    """A packed row (the packer's dict) as a student-only `Batch` row; every position
    the packer filled is real."""

    def map(self, element: Mapping[str, np.ndarray]) -> Batch:
        return Batch(student=SideBatch(
            input_ids=element["input_ids"],
            attention_mask=element["input_ids_segment_ids"] > 0,
            loss_mask=element["loss_mask"],
            truncated=np.bool_(False),
        ))
