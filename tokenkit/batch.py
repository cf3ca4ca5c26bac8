"""The training batch as a typed pytree, shared by the data pipeline and the losses.

A batch holds, per side (the student, and the teacher when there is one), right-padded
token ids with their attention and loss masks, and the chunk ids of every chunking the
losses need (`tokenkit.align`). It is a pytree (flax struct dataclasses), so it passes
through Grain's batching, `jax.device_put`, `jit`, the micro-batch split of the train
step and `LossContext` unchanged, and its field names are checked by Python instead of
being string keys built and parsed in many places.

    batch.student.input_ids          int32 [B, Ls]
    batch.student.attention_mask     bool  [B, Ls]   real tokens
    batch.student.loss_mask          bool  [B, Ls]   tokens the losses train on
    batch.student.truncated          bool  [B]       host only: cut by max_length
    batch.teacher                    the same for the teacher, or None
    batch.chunks["unconstrained"]    ChunkIds(teacher int32 [B, Lt], student int32 [B, Ls])

`truncated` flags are counted on the host and dropped by `for_device()` before the
batch goes to the accelerators. This module imports nothing of ours: it sits below both
`tokenkit.data` and `tokenkit.losses`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import struct

SIDES = ("student", "teacher")


@struct.dataclass
class SideBatch:
    """One model's view of a batch (see the module docstring)."""

    input_ids: Any
    attention_mask: Any
    loss_mask: Any
    truncated: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        """`(rows, length)`."""
        return tuple(self.input_ids.shape[-2:])

    def num_tokens(self) -> int:
        """Real tokens in the batch (host arrays)."""
        return int(np.sum(self.attention_mask))

    def num_truncated(self) -> int:
        """Rows cut by the maximum length (host arrays; 0 when not recorded)."""
        return 0 if self.truncated is None else int(np.sum(self.truncated))


@struct.dataclass
class ChunkIds:
    """One chunking of a teacher/student pair of rows: `k >= 0` is the chunk a token
    belongs to (chunk `k` spells the same bytes on both sides), -1 no chunk."""

    teacher: Any
    student: Any


@struct.dataclass
class Batch:
    """A batch of examples (see the module docstring)."""

    student: SideBatch
    teacher: SideBatch | None = None
    chunks: Mapping[str, ChunkIds] = struct.field(default_factory=dict)

    def side(self, name: str) -> SideBatch:
        """The `student` or `teacher` side; an error if the batch has no such side."""
        if name not in SIDES:
            raise ValueError(f"Unknown side {name!r}; valid: {', '.join(SIDES)}.")
        side = getattr(self, name)
        if side is None:
            raise ValueError(f"The batch has no {name} side (a run without a teacher).")
        return side

    def chunking(self, kind: str, needed_by: str = "a loss") -> ChunkIds:
        """The chunk ids of `kind`; an error naming who needs them and what the batch has."""
        if kind not in self.chunks:
            raise KeyError(
                f"{needed_by} needs the {kind!r} chunk ids; the batch has "
                f"{sorted(self.chunks) or 'none'} (the pipeline computes the chunkings the "
                "losses declare in Loss.chunkings)."
            )
        return self.chunks[kind]

    def sides(self) -> dict[str, SideBatch]:
        """The sides present, by name."""
        return {name: getattr(self, name) for name in SIDES if getattr(self, name) is not None}

    def for_device(self) -> Batch:
        """The batch without its host-only fields (the truncation flags)."""
        strip = lambda side: None if side is None else side.replace(truncated=None)  # noqa: E731
        return self.replace(student=strip(self.student), teacher=strip(self.teacher))
