"""Record sources: JSONL, Parquet, Hugging Face `datasets` (loaded, saved or streamed),
seqio Tasks, and weighted mixtures of them.

Every source yields records normalised to `{"text": str}` or `{"messages": [{"role",
"content"}, ...]}` (both keys may be present; extra fields pass through). Two families:

- random access (`JsonlSource`, `ParquetSource`, `HFDatasetSource`, `HFSavedSource`):
  `len` and `[i]`; the pipeline shuffles, repeats and shards them by index. JSONL files
  are validated while their line offsets are indexed, so a malformed record is reported
  with its file and line before training starts, or skipped and counted when asked.
- streams (`StreamSource`: `SeqioSource`, `HFStreamingSource`): read in order; the
  pipeline hands each a `StreamOrder` (seed, shuffle, epochs, this process's shard) and
  the source shards itself (seqio's `ShardInfo`, `datasets.distributed`). Grain worker
  processes subdivide a process's shard further. The iterator's state is small and
  JSON-serialisable; a restore continues exactly without replaying the stream from its
  start (see each class for how).

JSONL and Parquet files (and their glob patterns) and saved datasets may be remote
(`gs://bucket/data/*.jsonl`, see `tokenkit.storage`); a remote JSONL record is one
ranged read.

`Tagged` adds fixed fields (`lang_code`) to a source's records; `Mixture` combines
sources with sampling weights (the pipeline mixes them with Grain). `make_source` builds
any of these from Gin settings and refuses settings its `kind` does not use.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import glob
import importlib
import json
import logging as std_logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gin
import grain
import numpy as np
from absl import logging

from tokenkit import storage
from tokenkit.progress import Progress

ROLES = ("system", "user", "assistant")


class MalformedRecordError(ValueError):
    """A record that is not valid JSON or has neither `text` nor valid `messages`."""


def validate_record(record: Any) -> dict[str, Any]:
    """Checks a record's shape; returns it, or raises `MalformedRecordError` saying why."""
    if not isinstance(record, dict):
        raise MalformedRecordError(f"expected a JSON object, got {type(record).__name__}")
    text, messages = record.get("text"), record.get("messages")
    if text is None and messages is None:
        raise MalformedRecordError(
            f"record has neither 'text' nor 'messages' (keys: {sorted(record)})"
        )
    if text is not None and not isinstance(text, str):
        raise MalformedRecordError(f"'text' must be a string, got {type(text).__name__}")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise MalformedRecordError("'messages' must be a non-empty list")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise MalformedRecordError(f"message {i} needs a string 'content'")
            if message.get("role") not in ROLES:
                raise MalformedRecordError(
                    f"message {i} has role {message.get('role')!r}; valid: {', '.join(ROLES)}"
                )
    return record


@dataclass(frozen=True)
class _Span:
    file: int
    offset: int
    length: int


class JsonlSource(grain.sources.RandomAccessDataSource):
    """Random access over the lines of one or more JSONL files.

    Args:
      paths: files (or glob patterns) to read, in order.
      skip_malformed: skip (and count in the log) records that fail validation instead
        of raising an error naming the file and line.
    """

    def __init__(self, paths: Sequence[str | Path] | str, *, skip_malformed: bool = False):
        self.paths = _expand(paths)
        offsets, files, lengths = [], [], []
        self.skipped: list[str] = []
        total_bytes = sum(_size(p) for p in self.paths)
        progress = Progress(total_bytes, "indexing JSONL", unit="B", every_s=10)
        for file_index, path in enumerate(self.paths):
            with path.open("rb") as f:
                offset = 0
                for line_number, line in enumerate(f, start=1):
                    progress.update(len(line))
                    stripped = line.strip()
                    if stripped:
                        try:
                            validate_record(json.loads(stripped))
                        except (json.JSONDecodeError, UnicodeDecodeError, MalformedRecordError) as e:
                            where = f"{path}:{line_number}"
                            if not skip_malformed:
                                raise MalformedRecordError(
                                    f"{where}: malformed record ({e}). Fix the file or set "
                                    "skip_malformed=True to skip such records."
                                ) from e
                            self.skipped.append(f"{where}: {e}")
                        else:
                            offsets.append(offset)
                            files.append(file_index)
                            lengths.append(len(line))
                    offset += len(line)
        if self.skipped:
            logging.warning(
                "Skipped %d malformed record(s) in %s; first: %s",
                len(self.skipped), [str(p) for p in self.paths], self.skipped[:3],
            )
        self._offsets = np.asarray(offsets, np.int64)
        self._files = np.asarray(files, np.int32)
        self._lengths = np.asarray(lengths, np.int64)
        if len(self._offsets) == 0:
            raise ValueError(f"No records in {[str(p) for p in self.paths]}.")

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[int(self._files[index])]
        with path.open("rb") as f:
            f.seek(int(self._offsets[index]))
            return json.loads(f.read(int(self._lengths[index])))

    def __repr__(self) -> str:
        return f"JsonlSource({[str(p) for p in self.paths]}, {len(self)} records)"


class ParquetSource(grain.sources.RandomAccessDataSource):
    """Random access over the rows of Parquet files (one row group in memory at a time)."""

    def __init__(self, paths: Sequence[str | Path] | str, *, columns: Sequence[str] | None = None):
        self.paths = _expand(paths)
        self.columns = list(columns) if columns else None
        self._index: list[tuple[int, int, int]] = []  # (file, row group, rows before)
        starts = [0]
        for file_index, path in enumerate(self.paths):
            with _parquet_file(path) as parquet:
                meta = parquet.metadata
            for group in range(meta.num_row_groups):
                self._index.append((file_index, group, starts[-1]))
                starts.append(starts[-1] + meta.row_group(group).num_rows)
        self._starts = np.asarray(starts, np.int64)
        self._cache: tuple[int, list[dict[str, Any]]] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        group_pos = int(np.searchsorted(self._starts, index, side="right") - 1)
        if self._cache is None or self._cache[0] != group_pos:
            file_index, group, _ = self._index[group_pos]
            with _parquet_file(self.paths[file_index]) as parquet:
                table = parquet.read_row_group(group, columns=self.columns)
            self._cache = (group_pos, table.to_pylist())
        record = self._cache[1][index - int(self._starts[group_pos])]
        return validate_record(record)

    def __repr__(self) -> str:
        return f"ParquetSource({[str(p) for p in self.paths]}, {len(self)} records)"


class _HFRows(grain.sources.RandomAccessDataSource):
    """Random access over the rows of a `datasets.Dataset` (memory-mapped Arrow)."""

    dataset: Any
    origin: str

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return validate_record(dict(self.dataset[int(index)]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.origin}, {len(self)} records)"


class HFDatasetSource(_HFRows):
    """A Hugging Face `datasets` split loaded in full (a hub name, or a builder over local
    files); the pipeline shuffles and shards it by index.

    `HFDatasetSource("json", data_files="data/corpus/train.jsonl")` reads local files;
    `HFDatasetSource("allenai/tulu-3-sft-mixture", split="train")` loads from the hub.
    """

    def __init__(self, path: str, *, split: str = "train", name: str | None = None,
                 data_files: Any = None, **kwargs: Any):
        import datasets

        self.origin = f"{path!r}, split={split!r}"
        self.dataset = datasets.load_dataset(
            path, name=name, split=split, data_files=data_files, **kwargs
        )


class HFSavedSource(_HFRows):
    """Datasets written by `Dataset.save_to_disk` (read with `datasets.load_from_disk`),
    several directories concatenated in order.

    Args:
      paths: the saved directories.
      split: the split to take where a directory holds a `DatasetDict` (default
        `train`); an error where it holds a single `Dataset`.
    """

    def __init__(self, paths: Sequence[str | Path] | str, *, split: str | None = None):
        import datasets

        if isinstance(paths, (str, Path)):
            paths = [paths]
        if not paths:
            raise ValueError("HFSavedSource needs at least one directory in `paths`.")
        parts = []
        for path in paths:
            if not storage.path(path).is_dir():
                raise FileNotFoundError(f"Saved dataset directory {str(path)!r} does not exist.")
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                name = split or "train"
                if name not in loaded:
                    raise ValueError(
                        f"{str(path)!r} has no split {name!r}; valid: {', '.join(loaded)}."
                    )
                loaded = loaded[name]
            elif split is not None:
                raise ValueError(
                    f"{str(path)!r} holds a single Dataset, not a DatasetDict; leave the "
                    f"split unset (got {split!r})."
                )
            parts.append(loaded)
        self.origin = f"{[str(p) for p in paths]}" + (f", split={split!r}" if split else "")
        self.dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# ---------------------------------------------------------------------------- streams


@dataclasses.dataclass(frozen=True)
class StreamOrder:
    """How one process reads a stream: set by the pipeline, not by the user.

    seed: the order's seed (the same on every process, so shards stay disjoint).
    shuffle: shuffle as far as the source can (see each source).
    num_epochs: passes over the data (None: forever); each pass reshuffles.
    shard_index, num_shards: this process's shard.
    """

    seed: int = 0
    shuffle: bool = False
    num_epochs: int | None = 1
    shard_index: int = 0
    num_shards: int = 1

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"The seed of a stream order must be >= 0, got {self.seed}.")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(
                f"shard_index {self.shard_index} is not in [0, num_shards={self.num_shards})."
            )
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be None or >= 1, got {self.num_epochs}.")


class EpochReader(Iterator[dict[str, Any]]):
    """One pass of one shard over a stream; `state()` is where it stands (JSON values)."""

    def state(self) -> Any:
        raise NotImplementedError


class StreamSource(grain.IterDataset):
    """A source read in order, which shards itself (see the module docstring).

    Subclasses implement `_open` (per-iterator setup, e.g. resolving files once) and
    `_read_epoch` (one epoch of one shard, from its start or from a reader's saved
    state). This class adds epochs, the worker split (Grain calls `set_slice` in each
    worker process: shard `i` of `n` becomes shard `i + n * k` of `n * w` in worker `k`
    of `w`, so an every-n-th-record split gives a process the same records with or
    without workers), counting and the iterator state.
    """

    def __init__(self, order: StreamOrder = StreamOrder()):
        super().__init__()
        self.order = order
        self._worker = (0, 1)  # (index, count) of the Grain worker reading this copy

    def ordered(self, order: StreamOrder) -> StreamSource:
        """A copy read in `order` (the source itself is not changed)."""
        out = copy.copy(self)
        out.order = order
        out._worker = (0, 1)
        return out

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Grain's hook for worker processes: read every `sl.step`-th part of the shard."""
        start, stop, step = sl.start or 0, sl.stop, sl.step or 1
        if stop is not None or sequential_slice or not 0 <= start < step:
            raise ValueError(
                f"{self!r} can only be split into interleaved parts (slice(k, None, w)); "
                f"got {sl} (sequential_slice={sequential_slice})."
            )
        self._worker = (start, step)

    @property
    def shard(self) -> tuple[int, int]:
        """`(index, count)` of the part this copy reads: process shard x worker part."""
        worker, workers = self._worker
        return self.order.shard_index + self.order.num_shards * worker, self.order.num_shards * workers

    def _open(self) -> Any:
        """Per-iterator setup, passed to every `_read_epoch` (default: nothing)."""
        return None

    def _read_epoch(self, context: Any, epoch: int, state: Any) -> EpochReader:
        raise NotImplementedError

    def __iter__(self) -> _StreamIterator:
        return _StreamIterator(self)


class _StreamIterator(grain.DatasetIterator):
    """Epochs over a `StreamSource`; state `{shard, epoch, read, reader}`."""

    def __init__(self, source: StreamSource):
        super().__init__()
        self._source = source
        self._shard = list(source.shard)
        self._context: Any = None
        self._opened = False
        self._epoch = 0
        self._read = 0  # records read in this epoch
        self._reader: EpochReader | None = None
        self._done = False

    def _reader_for(self, state: Any) -> EpochReader:
        if not self._opened:
            self._context = self._source._open()
            self._opened = True
        return self._source._read_epoch(self._context, self._epoch, state)

    def __next__(self) -> dict[str, Any]:
        while not self._done:
            if self._reader is None:
                self._reader = self._reader_for(None)
            try:
                record = next(self._reader)
            except StopIteration:
                self._end_epoch()
                continue
            self._read += 1
            return record
        raise StopIteration

    def _end_epoch(self) -> None:
        index, count = self._shard
        logging.info(
            "%r: shard %d of %d read %d records in epoch %d.",
            self._source, index, count, self._read, self._epoch,
        )
        if self._read == 0:
            raise ValueError(
                f"{self._source!r} gave shard {index} of {count} no records in epoch "
                f"{self._epoch}: the data has fewer records (or files) than shards "
                "(processes x Grain workers)."
            )
        self._epoch += 1
        self._read = 0
        self._reader = None
        num_epochs = self._source.order.num_epochs
        self._done = num_epochs is not None and self._epoch >= num_epochs

    def get_state(self) -> dict[str, Any]:
        return {
            "shard": self._shard,
            "epoch": self._epoch,
            "read": self._read,
            "done": self._done,
            "reader": None if self._reader is None else self._reader.state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if list(state["shard"]) != self._shard:
            raise ValueError(
                f"The saved state of {self._source!r} is for shard {state['shard']} "
                f"(index, count); this iterator reads shard {self._shard}. Resume with the "
                "same number of processes and Grain workers."
            )
        self._epoch, self._read, self._done = state["epoch"], state["read"], state["done"]
        self._reader = None if state["reader"] is None else self._reader_for(state["reader"])


class SeqioSource(StreamSource):
    """A seqio Task or Mixture (a `tf.data` pipeline) as a sharded, resumable stream.

    Each process (and Grain worker) passes its shard to seqio as `ShardInfo`: seqio
    splits by file where there are at least as many files as shards, by record
    otherwise. Epoch `e` is seqio's dataset with seed `seed + e` (shuffled by seqio's
    buffer when the order shuffles). The state is the number of records consumed in the
    epoch; a restore rebuilds the epoch and skips them inside `tf.data` (`skip`), which
    reads but does not decode them in Python. Records take their `text_field` (default
    `targets`) as `text`. Requires the `seqio` extra.

    Args:
      task_or_mixture: a registered seqio Task or Mixture name.
      split: the split to read.
      text_field: the feature holding the text.
      modules: modules to import before the lookup (they register the Task; needed in
        Grain worker processes, which start fresh).
    """

    def __init__(self, task_or_mixture: str, *, split: str = "train", text_field: str = "targets",
                 modules: Sequence[str] = (), order: StreamOrder = StreamOrder()):
        super().__init__(order)
        self.name = task_or_mixture
        self.split = split
        self.text_field = text_field
        self.modules = tuple(modules)

    def __repr__(self) -> str:
        return f"SeqioSource({self.name!r}, split={self.split!r})"

    def _open(self) -> Any:
        import seqio

        for module in self.modules:
            importlib.import_module(module)
        try:
            return seqio.get_mixture_or_task(self.name)
        except ValueError as e:
            raise ValueError(
                f"No seqio Task or Mixture {self.name!r} is registered (import the module "
                f"that registers it via seqio_modules): {e}"
            ) from e

    def _read_epoch(self, context: Any, epoch: int, state: Any) -> EpochReader:
        return _SeqioReader(self, context, epoch, int(state or 0))


class _SeqioReader(EpochReader):
    def __init__(self, source: SeqioSource, provider: Any, epoch: int, consumed: int):
        import seqio

        index, count = source.shard
        ds = provider.get_dataset(
            sequence_length=None, split=source.split, shuffle=source.order.shuffle,
            seed=source.order.seed + epoch, shard_info=seqio.ShardInfo(index, count),
            num_epochs=1, use_cached=False,
        )
        if consumed:
            ds = ds.skip(consumed)
        self._field = source.text_field
        self._name = source.name
        self._it = ds.as_numpy_iterator()
        self._consumed = consumed

    def __next__(self) -> dict[str, Any]:
        example = next(self._it)
        if self._field not in example:
            raise KeyError(
                f"seqio {self._name!r} has no feature {self._field!r} (text_field); valid: "
                f"{', '.join(sorted(example))}."
            )
        value = example[self._field]
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        self._consumed += 1
        return {"text": str(value)}

    def state(self) -> int:
        return self._consumed


class HFStreamingSource(StreamSource):
    """A Hugging Face `datasets` split streamed (`load_dataset(..., streaming=True)`).

    Sharding: `datasets.distributed.split_dataset_by_node` gives each process (and
    worker) whole files when their number divides into the shards, and otherwise every
    `n`-th record (each process then reads all records and keeps its own; logged).
    Shuffling: the file order is reshuffled every epoch (`IterableDataset.shuffle` with
    a seed of the order's seed and the epoch); with `shuffle_buffer_size`, records are also shuffled in consecutive blocks of that
    many (the whole block is held in memory, per worker).
    Resumption: the state holds `datasets`' own `IterableDataset.state_dict()` (file and
    record position) taken at the start of the current block and the number of the
    block's records already given out; a restore seeks there (`load_state_dict`),
    refills the block (at most `shuffle_buffer_size` records) and continues exactly.
    `datasets`' own shuffle buffer is not used: its contents are not part of its state,
    so a restore would drop them.

    Args:
      path: a hub name or a builder (`json`, `parquet`, `text`, ...).
      split: the split to stream.
      shuffle_buffer_size: records per shuffled block (None: records within a file
        keep their order).
      load_kwargs: passed to `datasets.load_dataset` (`data_files`, `name`, ...).
    """

    def __init__(self, path: str, *, split: str = "train", shuffle_buffer_size: int | None = None,
                 order: StreamOrder = StreamOrder(), **load_kwargs: Any):
        super().__init__(order)
        if shuffle_buffer_size is not None and (
            isinstance(shuffle_buffer_size, bool) or not isinstance(shuffle_buffer_size, int)
            or shuffle_buffer_size < 1
        ):
            raise ValueError(
                f"shuffle_buffer_size must be a positive integer or None, got {shuffle_buffer_size!r}."
            )
        for reserved in ("streaming", "split"):
            if reserved in load_kwargs:
                raise ValueError(
                    f"Pass {reserved!r} as HFStreamingSource's own argument, not in the "
                    f"load_dataset arguments ({load_kwargs[reserved]!r})."
                )
        self.path = path
        self.split = split
        self.shuffle_buffer_size = shuffle_buffer_size
        self.load_kwargs = dict(load_kwargs)

    def __repr__(self) -> str:
        return f"HFStreamingSource({self.path!r}, split={self.split!r})"

    def _open(self) -> Any:
        import datasets

        stream = datasets.load_dataset(self.path, split=self.split, streaming=True, **self.load_kwargs)
        if not isinstance(stream, datasets.IterableDataset):
            raise ValueError(f"{self!r} did not give one streamed split (got {type(stream).__name__}).")
        index, count = self.shard
        files = getattr(stream, "num_shards", None) or getattr(stream, "n_shards", 1)
        if count > 1 and files % count:
            logging.warning(
                "%r: %d file(s) do not divide into %d shards (processes x workers); every "
                "shard reads all records and keeps one in %d.", self, files, count, count,
            )
        logging.info("%r: %d file(s); this is shard %d of %d.", self, files, index, count)
        return stream

    def _read_epoch(self, context: Any, epoch: int, state: Any) -> EpochReader:
        return _HFStreamReader(self, context, epoch, state)


class _BufferWarningFilter(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return "shuffle buffer of a dataset without the buffer content" not in record.getMessage()


def _quiet_buffer_warning() -> None:
    logger = std_logging.getLogger("datasets.iterable_dataset")
    if not any(isinstance(f, _BufferWarningFilter) for f in logger.filters):
        logger.addFilter(_BufferWarningFilter())


class _HFStreamReader(EpochReader):
    """One epoch of one shard. `datasets` fills its live position only once iteration
    has begun, so the position of a block is read after the previous block (the first
    block starts where the epoch or the restored state starts)."""

    def __init__(self, source: HFStreamingSource, stream: Any, epoch: int, state: Any):
        from datasets.distributed import split_dataset_by_node

        index, count = source.shard
        if source.order.shuffle:
            # The file order of each epoch comes from a shuffle seeded by (seed, epoch),
            # the same on every process. `set_epoch` is not used: its reshuffle is seeded
            # by the epoch alone (datasets 5.2), and epochs 0 and 1 came out in the same
            # order in our tests. A buffer of one record only reorders files
            # (records are shuffled in our blocks, whose position `state_dict` restores
            # exactly) and never holds a record between two yields, so nothing is lost
            # on a restore; `datasets`' warning that a restore empties it is filtered out.
            _quiet_buffer_warning()
            epoch_seed = int(np.random.SeedSequence([source.order.seed, epoch]).generate_state(1)[0])
            stream = stream.shuffle(seed=epoch_seed, buffer_size=1)
        self._stream = split_dataset_by_node(stream, rank=index, world_size=count)
        self._block_size = source.shuffle_buffer_size if source.order.shuffle else None
        self._rng_key = (source.order.seed, epoch)
        self._start = None if state is None else state["position"]  # None: the epoch's start
        if self._start is not None:
            self._stream.load_state_dict(self._start)
        self._it = iter(self._stream)
        self._started = False
        self._block_number = 0 if state is None else state["block"]
        self._block: list[dict[str, Any]] = []
        self._taken = 0
        if self._block_size and state is not None and state["taken"]:
            self._next_block()
            self._taken = state["taken"]

    def _position(self) -> Any:
        return self._stream.state_dict() if self._started else self._start

    def _next_block(self) -> None:
        self._start = self._position()
        self._started = True
        block = [validate_record(dict(r)) for _, r in zip(range(self._block_size), self._it)]
        order = np.random.default_rng([*self._rng_key, self._block_number]).permutation(len(block))
        self._block = [block[i] for i in order]
        self._taken = 0

    def __next__(self) -> dict[str, Any]:
        if not self._block_size:
            self._started = True
            return validate_record(dict(next(self._it)))
        if self._taken == len(self._block):
            if self._block:
                self._block_number += 1
            self._next_block()
            if not self._block:
                raise StopIteration
        record = self._block[self._taken]
        self._taken += 1
        return record

    def state(self) -> dict[str, Any]:
        if not self._block_size:
            return {"position": self._position(), "block": 0, "taken": 0}
        return {"position": self._start, "block": self._block_number, "taken": self._taken}


# --------------------------------------------------------------- tags and mixtures


@dataclasses.dataclass(frozen=True)
class Tagged:
    """A source whose records all get the same extra fields (e.g. `lang_code`)."""

    source: Any
    fields: Mapping[str, Any]

    def __len__(self) -> int:
        if isinstance(self.source, StreamSource):
            raise TypeError(f"{self.source!r} is a stream; it has no length.")
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.source[index], **self.fields}


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Sources sampled with weights (the pipeline mixes them with Grain's `mix`).

    components: the sources (random access, streams, or `Tagged` ones; not mixtures).
    weights: one positive weight per component (None: equal); normalised.
    mix_languages: True: records of all components are mixed within each batch; False:
      every batch holds records of one component, the batches are mixed (the upstream
      tokenkit's `mix_languages`).
    """

    components: tuple[Any, ...]
    weights: tuple[float, ...] | None = None
    mix_languages: bool = True

    def __post_init__(self) -> None:
        if not self.components:
            raise ValueError("A mixture needs at least one component.")
        for i, component in enumerate(self.components):
            if isinstance(component, Mixture) or (
                isinstance(component, Tagged) and isinstance(component.source, Mixture)
            ):
                raise ValueError(
                    f"Mixture component {i} is itself a mixture; list its sources in the "
                    "outer mixture instead."
                )
        if self.weights is not None:
            weights = tuple(self.weights)
            if len(weights) != len(self.components):
                raise ValueError(
                    f"A mixture of {len(self.components)} components needs as many weights, "
                    f"got {len(weights)}: {list(weights)}."
                )
            bad = [w for w in weights if not (isinstance(w, (int, float)) and np.isfinite(w) and w > 0)]
            if bad:
                raise ValueError(f"Mixture weights must be positive finite numbers; got {bad}.")

    @property
    def proportions(self) -> tuple[float, ...]:
        """The weights normalised to sum to 1."""
        weights = self.weights or (1.0,) * len(self.components)
        return tuple(float(w) / sum(weights) for w in weights)


def iter_records(source: Any) -> Iterator[dict[str, Any]]:
    """Every record of `source` once, in its stored order, unsharded (e.g. to pick
    evaluation texts or an example record); a mixture gives its components in turn."""
    if isinstance(source, Mixture):
        for component in source.components:
            yield from iter_records(component)
    elif isinstance(source, Tagged):
        for record in iter_records(source.source):
            yield {**record, **source.fields}
    elif isinstance(source, StreamSource):
        yield from source.ordered(StreamOrder())
    elif isinstance(source, grain.IterDataset):
        raise TypeError(f"{source!r} is not a StreamSource; tokenkit cannot read it in order.")
    else:
        for i in range(len(source)):
            yield source[i]


def first_record(source: Any) -> dict[str, Any]:
    """The first record of `source` (see `iter_records`)."""
    for record in iter_records(source):
        return record
    raise ValueError(f"{source!r} has no records.")


# ---------------------------------------------------------------------------- Gin


def _size(path: Path | storage.epath.Path) -> int:
    stat = path.stat()
    return stat.st_size if hasattr(stat, "st_size") else stat.length


@contextlib.contextmanager
def _parquet_file(path: Path | storage.epath.Path) -> Iterator[Any]:
    """A `pyarrow.parquet.ParquetFile` of a local or remote file."""
    import pyarrow.parquet as pq

    if isinstance(path, Path):
        yield pq.ParquetFile(path)
        return
    with path.open("rb") as f:
        yield pq.ParquetFile(f)


def _expand_remote(pattern: str) -> list[storage.epath.Path]:
    """Files named by a remote URL or URL pattern (`gs://bucket/data/*.jsonl`)."""
    path = storage.path(pattern)
    if not any(c in pattern for c in "*?["):
        if not path.is_file():
            raise FileNotFoundError(f"Data file {pattern!r} does not exist.")
        return [path]
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    matches = sorted(storage.path("/".join(parts[:first])).glob("/".join(parts[first:])), key=str)
    if not matches:
        raise FileNotFoundError(f"No files match {pattern!r}.")
    return matches


def _expand(paths: Sequence[str | Path] | str) -> list[Path | storage.epath.Path]:
    """Files named by paths or glob patterns (relative to the working directory), local
    or remote (`gs://...`, see `tokenkit.storage`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path | storage.epath.Path] = []
    for p in paths:
        if storage.is_remote(p):
            out.extend(_expand_remote(str(p)))
            continue
        p = Path(p).expanduser()
        if any(c in str(p) for c in "*?["):
            matches = sorted(glob.glob(str(p), recursive=True))
            if not matches:
                raise FileNotFoundError(f"No files match {str(p)!r}.")
            out.extend(Path(m) for m in matches)
        elif not p.is_file():
            raise FileNotFoundError(f"Data file {str(p)!r} does not exist.")
        else:
            out.append(p)
    return out


# The parameters of `make_source` each kind reads (`lang_code`: every kind but mixture).
KIND_PARAMETERS: dict[str, tuple[str, ...]] = {
    "jsonl": ("paths", "skip_malformed", "lang_code"),
    "parquet": ("paths", "lang_code"),
    "hf": ("hf_path", "hf_split", "hf_kwargs", "streaming", "shuffle_buffer_size", "lang_code"),
    "hf_saved": ("paths", "hf_split", "lang_code"),
    "seqio": ("seqio_name", "seqio_split", "seqio_text_field", "seqio_modules", "lang_code"),
    "mixture": ("components", "weights", "mix_languages"),
}
SOURCE_KINDS = tuple(KIND_PARAMETERS)


@gin.configurable
def make_source(
    kind: str = "jsonl",
    *,
    paths: Sequence[str] | str | None = None,
    skip_malformed: bool | None = None,
    hf_path: str | None = None,
    hf_split: str | None = None,
    hf_kwargs: Mapping[str, Any] | None = None,
    streaming: bool | None = None,
    shuffle_buffer_size: int | None = None,
    seqio_name: str | None = None,
    seqio_split: str | None = None,
    seqio_text_field: str | None = None,
    seqio_modules: Sequence[str] | None = None,
    components: Sequence[Any] | None = None,
    weights: Sequence[float] | None = None,
    mix_languages: bool | None = None,
    lang_code: str | None = None,
) -> Any:
    """Builds one source from Gin settings; a setting the `kind` does not read is an error.

    kind: `jsonl` (paths, skip_malformed), `parquet` (paths), `hf` (hf_path, hf_split
      [train], hf_kwargs for `load_dataset`, streaming [False], shuffle_buffer_size for
      streaming), `hf_saved` (paths of `save_to_disk` directories, hf_split where they
      hold a DatasetDict), `seqio` (seqio_name, seqio_split [train], seqio_text_field
      [targets], seqio_modules), `mixture` (components: sources, usually
      `[@en/make_source(), @de/make_source()]`; weights; mix_languages [True]).
    lang_code: a `lang_code` field added to every record (any kind but mixture).

    See the source classes and `Mixture` for the meaning of each setting.
    """
    if kind not in KIND_PARAMETERS:
        raise ValueError(f"Unknown source kind {kind!r}; valid: {', '.join(SOURCE_KINDS)}.")
    given = {
        "paths": paths, "skip_malformed": skip_malformed, "hf_path": hf_path,
        "hf_split": hf_split, "hf_kwargs": hf_kwargs, "streaming": streaming,
        "shuffle_buffer_size": shuffle_buffer_size, "seqio_name": seqio_name,
        "seqio_split": seqio_split, "seqio_text_field": seqio_text_field,
        "seqio_modules": seqio_modules, "components": components, "weights": weights,
        "mix_languages": mix_languages, "lang_code": lang_code,
    }
    unused = {k: v for k, v in given.items() if v is not None and k not in KIND_PARAMETERS[kind]}
    if unused:
        raise ValueError(
            f"make_source(kind={kind!r}) does not read "
            f"{', '.join(f'{k}={v!r}' for k, v in unused.items())}; kind {kind!r} reads: "
            f"{', '.join(KIND_PARAMETERS[kind])}."
        )
    source = _build_source(kind, given)
    return Tagged(source, {"lang_code": lang_code}) if lang_code is not None else source


def _require(kind: str, name: str, value: Any, what: str) -> Any:
    if not value:
        raise ValueError(f"make_source(kind={kind!r}) needs {name} ({what}).")
    return value


def _build_source(kind: str, given: Mapping[str, Any]) -> Any:
    if kind == "jsonl":
        paths = _require(kind, "paths", given["paths"], "JSONL files or glob patterns")
        return JsonlSource(paths, skip_malformed=bool(given["skip_malformed"]))
    if kind == "parquet":
        return ParquetSource(_require(kind, "paths", given["paths"], "Parquet files or glob patterns"))
    if kind == "hf_saved":
        paths = _require(kind, "paths", given["paths"], "directories written by save_to_disk")
        return HFSavedSource(paths, split=given["hf_split"])
    if kind == "hf":
        path = _require(kind, "hf_path", given["hf_path"], "a hub name or a builder like 'json'")
        split = given["hf_split"] or "train"
        kwargs = dict(given["hf_kwargs"] or {})
        for reserved, use in (("split", "hf_split"), ("streaming", "streaming")):
            if reserved in kwargs:
                raise ValueError(f"Set make_source.{use} instead of hf_kwargs[{reserved!r}].")
        if given["streaming"]:
            return HFStreamingSource(path, split=split, shuffle_buffer_size=given["shuffle_buffer_size"],
                                     **kwargs)
        if given["shuffle_buffer_size"] is not None:
            raise ValueError(
                f"shuffle_buffer_size={given['shuffle_buffer_size']!r} applies only with "
                "streaming=True (a loaded dataset is shuffled in full by the pipeline)."
            )
        return HFDatasetSource(path, split=split, **kwargs)
    if kind == "seqio":
        name = _require(kind, "seqio_name", given["seqio_name"], "a registered Task or Mixture")
        return SeqioSource(name, split=given["seqio_split"] or "train",
                           text_field=given["seqio_text_field"] or "targets",
                           modules=tuple(given["seqio_modules"] or ()))
    components = _require(kind, "components", given["components"],
                          "sources, e.g. [@en/make_source(), @de/make_source()]")
    mix_languages = given["mix_languages"]
    return Mixture(tuple(components), None if given["weights"] is None else tuple(given["weights"]),
                   mix_languages=True if mix_languages is None else bool(mix_languages))
