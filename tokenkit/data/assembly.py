"""A run's training data: from the configured source to batches of the run's tokenizers.

`build_data` assembles, for the trainer, the Grain dataset of a run: the `train`-scoped
source (`sources.make_source`), the encoders of the student (and teacher) tokenizer
(`encoding`), the aligner for the chunkings the losses declare (`tokenkit.align`, with
the tokenizer pair's bias matrices for `unbiased`), packing for teacher-less runs, and
the pipeline (`pipeline.make_dataset`). `DataConfig` holds the user's settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gin
import grain
import jax
import numpy as np

from tokenkit.align import Aligner
from tokenkit.batch import Batch, SideBatch
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.data import encoding, pipeline, sources
from tokenkit.data.pairs import TokenizerPair
from tokenkit.tokenizer_info import TokenizerPairData

# Records longer than this many rows are cut (and counted) when packing; shorter ones
# are split across rows by the packer.
PACK_RECORD_ROWS = 16


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training and validation texts come from and how they are encoded.

    train_source / eval_source: built with `tokenkit.data.sources.make_source` (Gin:
      `train/make_source.paths = [...]`, `eval/make_source.paths = [...]`).
    batch_size: the global batch (rows per optimizer step, over all processes).
    num_workers: Grain worker processes encoding and aligning (0: the main process).
    max_teacher_length / max_student_length: row lengths (longer examples are cut and
      counted).
    use_chat_template, chat_template_mode, loss_mask_mode: see `encoding.SideEncoder`.
    eval_texts: how many validation texts (`text` records) the bits-per-byte
      evaluation scores.
    eval_chats: how many validation conversations (`messages` records) whose last,
      assistant message is scored given the rest through the chat template
      (`answer_bits_per_byte`: the same bytes for every tokenizer, template tokens only
      condition).
    eval_max_length: longest forward pass of the evaluation (longer texts are windowed).
    pack: for runs without a teacher, concatenate examples into full rows of
      `max_student_length` instead of padding each (pretraining-style; several times
      fewer wasted positions on short chat records).
    """

    batch_size: int = 16
    num_workers: int = 0
    max_teacher_length: int = 512
    max_student_length: int = 512
    use_chat_template: bool = True
    chat_template_mode: str = "direct_encode"
    loss_mask_mode: str | None = None
    eval_texts: int = 64
    eval_chats: int = 128
    eval_max_length: int = 1024
    pack: bool = False


def make_aligner(
    teacher: ByteifyTokenizer,
    student: ByteifyTokenizer,
    chunkings: Sequence[str],
    pair: TokenizerPair | None,
    pair_data: TokenizerPairData | None,
) -> Aligner | None:
    """The aligner of a run (None when no loss needs chunk ids)."""
    if not chunkings:
        return None
    bias = None
    threshold = (pair or TokenizerPair()).unbiased_threshold
    if "unbiased" in chunkings:
        if pair_data is None or pair_data.bias1 is None:
            raise ValueError(
                "The `unbiased` chunking (alm_unbiased, alm) needs TokenizerPair.path with "
                "bias matrices (tools/compute_tokenizer_info.py)."
            )
        bias = pair_data.bias_matrices
    return Aligner(teacher, student, bias_matrices=bias, bias_threshold=threshold)


def build_data(
    config: DataConfig,
    *,
    student: ByteifyTokenizer,
    teacher: ByteifyTokenizer | None,
    chunkings: Sequence[str],
    seed: int,
    pair: TokenizerPair | None = None,
    pair_data: TokenizerPairData | None = None,
    shard: tuple[int, int] | None = None,
) -> tuple[grain.IterDataset, Batch]:
    """The run's Grain dataset, and one example row (shapes and fields of a batch).

    The example comes from encoding the first record directly, so the iterator stays
    untouched (a checkpoint at step 0 holds the true start of the data). `shard`:
    `(index, count)` of the rows of each global batch this process reads (default: JAX's
    process index and count; see `training.multihost.data_shard`).
    """

    def side_encoder(tokenizer: ByteifyTokenizer, max_length: int) -> encoding.SideEncoder:
        return encoding.SideEncoder(
            tokenizer, max_length, use_chat_template=config.use_chat_template,
            chat_template_mode=config.chat_template_mode, loss_mask_mode=config.loss_mask_mode,
        )

    with gin.config_scope("train"):
        source = sources.make_source()
    if config.pack:
        if teacher is not None:
            raise ValueError("DataConfig.pack is for runs without a teacher (e.g. losses=['sft']).")
        transform: Any = encoding.StreamEncoder(
            side_encoder(student, PACK_RECORD_ROWS * config.max_student_length)
        )
        row = np.zeros(config.max_student_length)
        example = Batch(student=SideBatch(input_ids=row.astype(np.int32),
                                          attention_mask=row.astype(bool),
                                          loss_mask=row.astype(bool)))
    else:
        aligner = None if teacher is None else make_aligner(teacher, student, chunkings, pair, pair_data)
        transform = encoding.PairEncoder(
            teacher=side_encoder(teacher, config.max_teacher_length) if teacher else None,
            student=side_encoder(student, config.max_student_length),
            aligner=aligner, chunkings=tuple(chunkings),
        )
        record = sources.first_record(source)
        example = transform(record).for_device()
    dataset = pipeline.make_dataset(
        source, transform, batch_size=config.batch_size, seed=seed,
        num_workers=config.num_workers,
        pack_length=config.max_student_length if config.pack else None,
        process_index=None if shard is None else shard[0],
        process_count=None if shard is None else shard[1],
    )
    return dataset, jax.tree.map(lambda x: np.asarray(x)[None], example)
