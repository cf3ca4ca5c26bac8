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

Transform = Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]]


class _MapTransform(grain.transforms.Map):
    """Wraps a callable for Grain (which wants a `Map` to pickle into workers)."""

    def __init__(self, fn: Transform):
        self.fn = fn

    def map(self, element: Mapping[str, Any]) -> Mapping[str, np.ndarray]:
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
    pack_keys: Sequence[str] = (),
) -> grain.IterDataset:
    """An iterable of batches (dicts of `[batch_size // process_count, ...]` arrays).

    Args:
      source: a random-access source (`tokenkit.data.sources`) or an `IterDataset`
        (seqio), whose order and sharding are then the source's own.
      transform: record -> dict of fixed-shape numpy arrays.
      batch_size: the *global* batch size; each process produces its share.
      seed: fixes the order (and each epoch's reshuffle).
      num_epochs: passes over the data (None: forever).
      num_workers: Grain worker processes (0: encode in the main process).
      pack_length, pack_keys: concatenate the transform's variable-length 1-D outputs
        `pack_keys` into one stream and cut it into rows of `pack_length`
        (pretraining-style packing: every position holds a real token, and an example
        attends to the ones before it in its row). Adds `attention_mask_<suffix>` for
        each packed `input_ids_<suffix>`.
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
        if not pack_keys:
            raise ValueError("pack_length needs pack_keys: the 1-D features to pack.")
        dataset = grain.experimental.ConcatThenSplitIterDataset(
            dataset, length_struct={k: pack_length for k in pack_keys}
        ).map(_PackedMasks())
    dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
    if num_workers > 0:
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=num_workers, per_worker_buffer_size=worker_buffer_size
            )
        )
    return dataset


class _PackedMasks(grain.transforms.Map):
    """Drops the packer's bookkeeping and marks every packed position as real."""

    def map(self, element: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: v for k, v in element.items()
               if not k.endswith(("_positions", "_segment_ids"))}
        for key in list(out):
            if key.startswith("input_ids"):
                mask_key = "attention_mask" + key.removeprefix("input_ids")
                out[mask_key] = element[key + "_segment_ids"] > 0
        return out

