"""The Grain pipeline: order and shard each source per process, mix, encode, batch.

    source -> this process's records in their training order   (`process_records`)
             random access: shuffle(seed) -> repeat -> every process_count-th record
             stream: the source's own shard, order and epochs (`sources.StreamOrder`)
           -> map(transform) -> [pack] -> batch -> prefetch in `num_workers` processes

A `sources.Mixture` orders each component like a source (with seed `seed + i`) and
mixes them with Grain's `IterDataset.mix`: records before encoding and batching
(`mix_languages=True`) or whole batches of one component each (`False`). The transform
(encoding with both tokenizers, alignment, loss masks) runs inside the Grain worker
processes so the accelerator does not wait for the tokenizers. The iterator's state is
small (positions) and goes into every checkpoint, one file per process; a restored
iterator continues with exactly the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import numpy as np
from absl import logging

from tokenkit.batch import Batch, SideBatch
from tokenkit.data import sources

Transform = Callable[[Mapping[str, Any]], Any]


class _MapTransform(grain.transforms.Map):
    """Wraps a callable for Grain (which wants a `Map` to pickle into workers)."""

    def __init__(self, fn: Transform):
        self.fn = fn

    def map(self, element: Mapping[str, Any]) -> Any:
        return self.fn(element)


class _AddFields(grain.transforms.Map):
    """Adds a `Tagged` source's fields to each record."""

    def __init__(self, fields: Mapping[str, Any]):
        self.fields = dict(fields)

    def map(self, element: Mapping[str, Any]) -> dict[str, Any]:
        return {**element, **self.fields}


def process_records(
    source: Any,
    *,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int,
    process_count: int,
) -> grain.MapDataset | grain.IterDataset:
    """This process's records of one source (not a mixture), in training order.

    Random-access sources come back as a `MapDataset` (so a following `map` runs on
    Grain's read threads), streams as the source's `IterDataset`. Logs how many records
    the process reads per epoch (streams log their count at the end of each epoch).
    """
    if isinstance(source, sources.Mixture):
        raise TypeError("process_records takes one source; make_dataset mixes a Mixture.")
    if isinstance(source, sources.Tagged):
        inner = process_records(source.source, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                                process_index=process_index, process_count=process_count)
        return inner.map(_AddFields(source.fields))
    if isinstance(source, sources.StreamSource):
        logging.info("Process %d of %d reads its shard of %r.", process_index, process_count, source)
        return source.ordered(sources.StreamOrder(
            seed=seed, shuffle=shuffle, num_epochs=num_epochs,
            shard_index=process_index, num_shards=process_count,
        ))
    if isinstance(source, grain.IterDataset):
        raise TypeError(
            f"{source!r} is an IterDataset that is not a tokenkit StreamSource, so it cannot "
            "be sharded per process; wrap it in a StreamSource subclass."
        )
    total = len(source)
    share = len(range(process_index, total, process_count))
    if share == 0:
        raise ValueError(
            f"{_describe(source)} has {total} records, too few for {process_count} processes."
        )
    logging.info(
        "Process %d of %d reads %d of the %d records of %s per epoch.",
        process_index, process_count, share, total, _describe(source),
    )
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    dataset = dataset.repeat(num_epochs)
    if process_count > 1:
        dataset = dataset[process_index::process_count]
    return dataset


def _describe(source: Any) -> str:
    return repr(source) if not isinstance(source, (list, tuple)) else f"a {type(source).__name__}"


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
      source: a random-access source, a `sources.StreamSource`, a `sources.Tagged` one,
        or a `sources.Mixture` of them (see the module docstring).
      transform: record -> one `Batch` row of fixed-shape numpy arrays (or, with
        `pack_length`, a dict of variable-length `input_ids` / `loss_mask`).
      batch_size: the *global* batch size; each process produces its share.
      seed: fixes the order (and each epoch's reshuffle).
      shuffle: shuffle (random access: a full permutation per epoch; streams: see the
        source).
      num_epochs: passes over the data (None: forever). A mixture ends when its first
        component does.
      num_workers: Grain worker processes (0: encode in the main process).
      process_index, process_count: this process's shard (default: JAX's process).
      pack_length: concatenate the transform's variable-length outputs into one stream
        and cut it into student rows of `pack_length` (pretraining-style packing: every
        position holds a real token, and an example attends to the ones before it in
        its row).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
    if batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {process_count} processes."
        )
    rows = batch_size // process_count

    def encoded(component: Any, component_seed: int) -> grain.IterDataset:
        records = process_records(
            component, seed=component_seed, shuffle=shuffle, num_epochs=num_epochs,
            process_index=process_index, process_count=process_count,
        )
        dataset = records.map(_MapTransform(transform))
        if isinstance(dataset, grain.MapDataset):
            dataset = dataset.to_iter_dataset()
        return dataset

    def batched(dataset: grain.IterDataset) -> grain.IterDataset:
        if pack_length is not None:
            dataset = grain.experimental.ConcatThenSplitIterDataset(
                dataset, length_struct={k: pack_length for k in PACKED_KEYS}
            ).map(_PackedRow())
        return dataset.batch(rows, drop_remainder=True)

    if isinstance(source, sources.Mixture):
        logging.info(
            "Mixing %d sources (%s) with proportions %s.", len(source.components),
            "records" if source.mix_languages else "batches",
            [round(p, 4) for p in source.proportions],
        )
        parts = [encoded(c, seed + i) for i, c in enumerate(source.components)]
        if source.mix_languages:
            dataset = batched(grain.IterDataset.mix(parts, list(source.proportions)))
        else:
            dataset = grain.IterDataset.mix([batched(p) for p in parts], list(source.proportions))
    else:
        dataset = batched(encoded(source, seed))
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
