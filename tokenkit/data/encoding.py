"""Records -> fixed-length token arrays for one tokenizer (one side of a batch).

A record is `{"text": ...}` or `{"messages": [...]}` (see `tokenkit.data.sources`).
With `use_chat_template`, messages go through the family-neutral slot-marker prompt of
`tokenkit.prompts` and plain texts through `chat_template_mode`; without it, texts are
encoded as the tokenizer would (its own bos/eos post-processing). Every example carries
a `truncated` flag so that the trainer can count (and log) what `max_length` cut.

Loss masks say which positions a loss trains on:
- `None`: every real token;
- `assistant`: only the content (and end-of-turn) of assistant messages of chat records;
  a plain `text` record (e.g. prose mixed into chat data) trains on every token;
- `dolly`, `openmath2`: everything after the corpus-specific response marker (as
  upstream), for texts that carry their prompt inline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from tokenkit import prompts
from tokenkit.batch import Batch, ChunkIds, SideBatch
from tokenkit.byteify import ByteifyTokenizer

LOSS_MASK_MODES = (None, "assistant", "dolly", "openmath2")
_MARKER_STRINGS = {
    "dolly": "### Response:\n",
    "openmath2": "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One side of one example, before padding."""

    ids: list[int]
    loss_mask: list[bool]
    truncated: bool


def _find(haystack: list[int], needle: list[int]) -> int:
    """Index just past the last occurrence of `needle` in `haystack`, or 0."""
    if not needle:
        return 0
    first = needle[0]
    end = 0
    for i, token in enumerate(haystack):
        if token == first and haystack[i : i + len(needle)] == needle:
            end = i + len(needle)
    return end


@dataclasses.dataclass
class SideEncoder:
    """Encodes records for one tokenizer into padded arrays.

    Args:
      tokenizer: a ByteifyTokenizer.
      max_length: length of the output arrays (longer examples are truncated and flagged).
      use_chat_template: encode through slot-marker prompts (see the module docstring).
      chat_template_mode: how a plain text becomes a prompt (`prompts.CHAT_TEMPLATE_MODES`).
      loss_mask_mode: one of `LOSS_MASK_MODES`.
    """

    tokenizer: ByteifyTokenizer
    max_length: int
    use_chat_template: bool = True
    chat_template_mode: str = "direct_encode"
    loss_mask_mode: str | None = None

    def __post_init__(self) -> None:
        if self.loss_mask_mode not in LOSS_MASK_MODES:
            raise ValueError(
                f"Unknown loss_mask_mode {self.loss_mask_mode!r}; valid: {list(LOSS_MASK_MODES)}."
            )
        if self.use_chat_template and self.chat_template_mode not in prompts.CHAT_TEMPLATE_MODES:
            raise ValueError(
                f"Unknown chat_template_mode {self.chat_template_mode!r}; valid: "
                f"{', '.join(prompts.CHAT_TEMPLATE_MODES)}."
            )
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}.")
        self._marker = None
        if self.loss_mask_mode in _MARKER_STRINGS:
            self._marker = self.tokenizer.encode(
                _MARKER_STRINGS[self.loss_mask_mode], add_special_tokens=False
            )
        pad = self.tokenizer.pad_token_id
        self.pad_id = 0 if pad is None else int(pad)

    def encode(self, record: Mapping[str, Any]) -> Encoded:
        """Ids and loss mask of a record (unpadded, truncated to max_length)."""
        if "messages" in record and record["messages"] is not None and self.use_chat_template:
            ids, mask, truncated = self._encode_messages(record["messages"])
        elif record.get("text") is not None:
            ids, truncated = self._encode_text(record["text"])
            mask = [True] * len(ids)
        elif "messages" in record:
            raise ValueError(
                "Record has only 'messages' but use_chat_template is False; enable the chat "
                "template or give the records a 'text' field."
            )
        else:
            raise ValueError(f"Record has neither 'text' nor 'messages': keys {sorted(record)}.")
        if self._marker is not None:
            start = _find(ids, self._marker)
            mask = [m and i >= start for i, m in enumerate(mask)]
        return Encoded(ids, mask, truncated)

    def _encode_text(self, text: str) -> tuple[list[int], bool]:
        if self.use_chat_template:
            prompt = prompts.preprocess_prompt(text, self.chat_template_mode)
            encoded = prompts.encode_prompt(prompt, self.tokenizer, max_length=self.max_length)
            return list(encoded.ids), encoded.truncated
        ids = self.tokenizer.encode(text, add_special_tokens=True)
        return ids[: self.max_length], len(ids) > self.max_length

    def _encode_messages(self, messages: list[Mapping[str, str]]) -> tuple[list[int], list[bool], bool]:
        encoded = prompts.encode_prompt(
            prompts.preprocess_messages(messages), self.tokenizer, max_length=self.max_length
        )
        if self.loss_mask_mode == "assistant":
            # The content and the end-of-turn tokens of assistant messages.
            mask = encoded.mask(roles=("assistant",), parts=("content", "end"))
        else:
            mask = [True] * len(encoded.ids)
        return list(encoded.ids), mask, encoded.truncated

    def __call__(self, record: Mapping[str, Any]) -> SideBatch:
        """One row: `input_ids`, `attention_mask`, `loss_mask` (`[max_length]`), `truncated`."""
        encoded = self.encode(record)
        n = len(encoded.ids)
        input_ids = np.full(self.max_length, self.pad_id, np.int32)
        input_ids[:n] = encoded.ids
        attention_mask = np.zeros(self.max_length, np.bool_)
        attention_mask[:n] = True
        loss_mask = np.zeros(self.max_length, np.bool_)
        loss_mask[:n] = encoded.loss_mask
        return SideBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            loss_mask=loss_mask,
            truncated=np.bool_(encoded.truncated),
        )


@dataclasses.dataclass
class PairEncoder:
    """Encodes records for a teacher and a student tokenizer and aligns them.

    Produces one row of a `tokenkit.batch.Batch`: both sides, and the chunk ids of each
    requested chunking (the aligner's side `a` is the teacher, `b` the student).

    Args:
      teacher, student: the two `SideEncoder`s (teacher None: student only, for runs
        without a teacher).
      aligner: a `tokenkit.align.Aligner` for the pair (None: no chunk ids, e.g. when
        only the SFT loss runs).
      chunkings: which chunkings to compute (`unconstrained`, `space`, `unbiased`).
    """

    teacher: SideEncoder | None
    student: SideEncoder
    aligner: Any = None
    chunkings: tuple[str, ...] = ("unconstrained", "space")

    def __call__(self, record: Mapping[str, Any]) -> Batch:
        student = self.student(record)
        teacher = None if self.teacher is None else self.teacher(record)
        chunks = {}
        if self.aligner is not None and self.chunkings and teacher is not None:
            chunkings = self.aligner.chunk_ids(
                teacher.input_ids, student.input_ids, teacher.attention_mask,
                student.attention_mask, kinds=self.chunkings,
            )
            chunks = {
                kind: ChunkIds(teacher=c.chunks_a.astype(np.int32), student=c.chunks_b.astype(np.int32))
                for kind, c in chunkings.items()
            }
        return Batch(student=student, teacher=teacher, chunks=chunks)


@dataclasses.dataclass
class StreamEncoder:
    """Encodes records for one tokenizer without padding, for packed pretraining.

    Outputs variable-length `input_ids` and `loss_mask` (a dict: the packer's format);
    the pipeline's packing (`make_dataset(pack_length=...)`) concatenates them into full
    rows and makes student-only `Batch` rows of them. The encoder's `max_length` only
    caps pathological records (flagged `truncated`).
    """

    encoder: SideEncoder

    def __call__(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        encoded = self.encoder.encode(record)
        return {
            "input_ids": np.asarray(encoded.ids, np.int32),
            "loss_mask": np.asarray(encoded.loss_mask, np.bool_),
        }
