"""Record sources: local JSONL and Parquet, Hugging Face `datasets`, seqio Tasks.

Every source yields records normalised to `{"text": str}` or `{"messages": [{"role",
"content"}, ...]}` (both keys may be present; extra fields pass through). JSONL and
Parquet sources are random access (Grain shuffles and shards them by index); JSONL files
are validated while their line offsets are indexed, so a malformed record is reported
with its file and line before training starts, or skipped and counted when asked.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gin
import grain
import numpy as np
from absl import logging

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
        total_bytes = sum(p.stat().st_size for p in self.paths)
        progress = Progress(total_bytes, "indexing JSONL", unit="B", every_s=10)
        for file_index, path in enumerate(self.paths):
            with open(path, "rb") as f:
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
        with open(path, "rb") as f:
            f.seek(int(self._offsets[index]))
            return json.loads(f.read(int(self._lengths[index])))

    def __repr__(self) -> str:
        return f"JsonlSource({[str(p) for p in self.paths]}, {len(self)} records)"


class ParquetSource(grain.sources.RandomAccessDataSource):
    """Random access over the rows of Parquet files (one row group in memory at a time)."""

    def __init__(self, paths: Sequence[str | Path] | str, *, columns: Sequence[str] | None = None):
        import pyarrow.parquet as pq

        self.paths = _expand(paths)
        self.columns = list(columns) if columns else None
        self._index: list[tuple[int, int, int]] = []  # (file, row group, rows before)
        starts = [0]
        for file_index, path in enumerate(self.paths):
            meta = pq.ParquetFile(path).metadata
            for group in range(meta.num_row_groups):
                self._index.append((file_index, group, starts[-1]))
                starts.append(starts[-1] + meta.row_group(group).num_rows)
        self._starts = np.asarray(starts, np.int64)
        self._cache: tuple[int, list[dict[str, Any]]] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        import pyarrow.parquet as pq

        group_pos = int(np.searchsorted(self._starts, index, side="right") - 1)
        if self._cache is None or self._cache[0] != group_pos:
            file_index, group, _ = self._index[group_pos]
            table = pq.ParquetFile(self.paths[file_index]).read_row_group(
                group, columns=self.columns
            )
            self._cache = (group_pos, table.to_pylist())
        record = self._cache[1][index - int(self._starts[group_pos])]
        return validate_record(record)


class HFDatasetSource(grain.sources.RandomAccessDataSource):
    """A Hugging Face `datasets` split (a hub name, or a builder over local files).

    `HFDatasetSource("json", data_files="data/corpus/train.jsonl")` reads local files;
    `HFDatasetSource("allenai/tulu-3-sft-mixture", split="train")` loads from the hub.
    """

    def __init__(self, path: str, *, split: str = "train", name: str | None = None,
                 data_files: Any = None, **kwargs: Any):
        import datasets

        self.dataset = datasets.load_dataset(
            path, name=name, split=split, data_files=data_files, **kwargs
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return validate_record(dict(self.dataset[int(index)]))


class SeqioSource(grain.IterDataset):
    """A seqio Task or Mixture as a checkpointable Grain iterable.

    seqio datasets are `tf.data` pipelines, not random access; determinism comes from
    seqio's own seed, and the iterator's state is the number of records consumed (a
    restore replays the deterministic stream up to that point). Requires the `seqio`
    extra. Records take their `text_field` (default `targets`) as `text`.
    """

    def __init__(self, task_or_mixture: str, *, split: str = "train", seed: int = 0,
                 shuffle: bool = True, text_field: str = "targets",
                 shard_index: int = 0, num_shards: int = 1):
        super().__init__()
        self.name = task_or_mixture
        self.split = split
        self.seed = seed
        self.shuffle = shuffle
        self.text_field = text_field
        self.shard = (shard_index, num_shards)

    def __iter__(self) -> _SeqioIterator:
        return _SeqioIterator(self)


class _SeqioIterator(grain.DatasetIterator):
    def __init__(self, source: SeqioSource):
        super().__init__()
        self._source = source
        self._consumed = 0
        self._it = self._fresh()

    def _fresh(self) -> Iterator[dict[str, Any]]:
        import seqio

        src = self._source
        provider = seqio.get_mixture_or_task(src.name)
        ds = provider.get_dataset(
            sequence_length=None, split=src.split, shuffle=src.shuffle, seed=src.seed,
            shard_info=seqio.ShardInfo(*src.shard), num_epochs=1, use_cached=False,
        )
        for example in ds.as_numpy_iterator():
            value = example[src.text_field]
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            yield {"text": str(value)}

    def __next__(self) -> dict[str, Any]:
        record = next(self._it)
        self._consumed += 1
        return record

    def get_state(self) -> dict[str, Any]:
        return {"consumed": self._consumed}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it = self._fresh()
        for _ in range(state["consumed"]):
            next(self._it)
        self._consumed = state["consumed"]


def _expand(paths: Sequence[str | Path] | str) -> list[Path]:
    """Files named by paths or glob patterns (relative to the working directory)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
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


SOURCE_KINDS = ("jsonl", "parquet", "hf", "seqio")


@gin.configurable
def make_source(
    kind: str = "jsonl",
    *,
    paths: Sequence[str] | str = (),
    skip_malformed: bool = False,
    hf_path: str | None = None,
    hf_split: str = "train",
    hf_kwargs: dict[str, Any] | None = None,
    seqio_name: str | None = None,
    seqio_split: str = "train",
) -> Any:
    """Builds one source from Gin settings (see the classes for the meaning).

    `kind` is one of `jsonl`, `parquet`, `hf`, `seqio`.
    """
    if kind == "jsonl":
        return JsonlSource(paths, skip_malformed=skip_malformed)
    if kind == "parquet":
        return ParquetSource(paths)
    if kind == "hf":
        if not hf_path:
            raise ValueError("kind='hf' needs hf_path (a hub name or a builder like 'json').")
        return HFDatasetSource(hf_path, split=hf_split, **(hf_kwargs or {}))
    if kind == "seqio":
        if not seqio_name:
            raise ValueError("kind='seqio' needs seqio_name (a registered Task or Mixture).")
        return SeqioSource(seqio_name, split=seqio_split)
    raise ValueError(f"Unknown source kind {kind!r}; valid: {', '.join(SOURCE_KINDS)}.")
