"""Random but realistic loss contexts for the loss tests."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

import jax

from tests.losses.chunkings import make_batch
from tokenkit.batch import Batch, ChunkIds, SideBatch
from tokenkit.logits import mask_padded_vocab
from tokenkit.losses.context import LossContext, ModelOutputs, TokenizerConstants

CHUNKINGS = ("unconstrained", "space", "unbiased")


def as_batch(flat: dict) -> Batch:
    """The typed batch of a flat test batch (`input_ids_student`, `chunks_teacher_space`,
    ... : the layout the dense references read)."""

    def side(name):
        if f"input_ids_{name}" not in flat:
            return None
        return SideBatch(*(flat[f"{key}_{name}"] for key in ("input_ids", "attention_mask", "loss_mask")))

    chunks = {
        kind: ChunkIds(flat[f"chunks_teacher_{kind}"], flat[f"chunks_student_{kind}"])
        for kind in CHUNKINGS if f"chunks_teacher_{kind}" in flat and f"chunks_student_{kind}" in flat
    }
    return Batch(student=side("student"), teacher=side("teacher"), chunks=chunks)


def as_flat(batch: Batch | None) -> dict | None:
    """The flat test layout of a typed batch (inverse of `as_batch`)."""
    if batch is None:
        return None
    flat = {}
    for name, side in batch.sides().items():
        for key in ("input_ids", "attention_mask", "loss_mask"):
            flat[f"{key}_{name}"] = getattr(side, key)
    for kind, chunks in batch.chunks.items():
        flat[f"chunks_teacher_{kind}"] = chunks.teacher
        flat[f"chunks_student_{kind}"] = chunks.student
    return flat


def masked_outputs(logits, constants: TokenizerConstants, **fields) -> ModelOutputs:
    """Model outputs as the model side hands them to the losses: padded rows masked."""
    return ModelOutputs(mask_padded_vocab(logits, constants.vocab_mask), **fields)


@dataclasses.dataclass
class Setup:
    """A context plus the raw pieces the dense references take."""

    ctx: LossContext
    batch: dict
    student_logits: jnp.ndarray
    teacher_logits: jnp.ndarray
    student_constants: TokenizerConstants
    teacher_constants: TokenizerConstants

    def student_outputs(self, logits, **fields) -> ModelOutputs:
        return masked_outputs(logits, self.student_constants, **fields)

    def teacher_outputs(self, logits, **fields) -> ModelOutputs:
        return masked_outputs(logits, self.teacher_constants, **fields)

    def with_batch(self, flat: dict) -> LossContext:
        """The context with another (flat) batch."""
        return dataclasses.replace(self.ctx, batch=as_batch(flat))

    def dense_constants(self) -> dict:
        return dict(
            student_vocab_mask=self.student_constants.vocab_mask,
            teacher_vocab_mask=self.teacher_constants.vocab_mask,
            student_space_mask=self.student_constants.space_mask,
            teacher_space_mask=self.teacher_constants.space_mask,
            student_eos=self.student_constants.eos_token_id,
            teacher_eos=self.teacher_constants.eos_token_id,
        )


def constants(rng: np.random.Generator, vocab: int, real: int, eos: int, space_fraction=0.3) -> TokenizerConstants:
    vocab_mask = np.arange(vocab) < real
    space_mask = (rng.random(vocab) < space_fraction) & vocab_mask
    return TokenizerConstants(jnp.asarray(space_mask), jnp.asarray(vocab_mask), eos)


def make_setup(
    seed: int = 0,
    *,
    batch_size: int = 3,
    len_teacher: int = 24,
    len_student: int = 32,
    vocab_teacher: int = 72,
    vocab_student: int = 64,
    hidden_teacher: int = 6,
    hidden_student: int = 5,
    n_layers: int = 2,
    student_bytes: bool = False,
    logit_scale: float = 2.0,
    prompt_prob: float = 0.5,
) -> Setup:
    """Chunked batch, random logits / hidden states / q,k,v, padded vocabularies."""
    real_t, real_s = vocab_teacher - 8, vocab_student - 4
    batch, _ = make_batch(
        seed, batch_size, len_teacher, len_student, real_t, real_s,
        student_bytes=student_bytes, prompt_prob=prompt_prob,
    )
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    rng = np.random.default_rng(seed + 1000)

    def normal(*shape, scale=1.0):
        return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)

    t_logits = normal(batch_size, len_teacher, vocab_teacher, scale=logit_scale)
    s_logits = normal(batch_size, len_student, vocab_student, scale=logit_scale)
    t_const = constants(rng, vocab_teacher, real_t, eos=real_t - 1)
    s_const = constants(rng, vocab_student, real_s, eos=real_s - 2)
    def outputs(logits, length, hidden, vocab, constants):
        return masked_outputs(
            logits, constants,
            hidden_states=tuple(normal(batch_size, length, hidden) for _ in range(n_layers + 1)),
            attentions=tuple(
                tuple(normal(batch_size, length, width) for width in (4, 2, 2)) for _ in range(n_layers)
            ),
            output_embeddings=normal(vocab, hidden),
        )

    teacher = outputs(t_logits, len_teacher, hidden_teacher, vocab_teacher, t_const)
    student = outputs(s_logits, len_student, hidden_student, vocab_student, s_const)
    mapping = jnp.asarray(rng.integers(0, real_t, size=real_s), jnp.int32)
    ctx = LossContext(
        batch=as_batch(batch),
        student=student,
        student_constants=s_const,
        teacher=teacher,
        teacher_constants=t_const,
        mined_mapping=mapping,
    )
    return Setup(ctx, batch, s_logits, t_logits, s_const, t_const)


def split_rows(batch, rows: slice):
    return jax.tree.map(lambda x: x[rows], batch)


def split_context(ctx: LossContext, rows: slice) -> LossContext:
    """The context of the micro-batch `rows`, with the whole batch as the global batch."""

    def outputs(o: ModelOutputs | None):
        if o is None:
            return None
        take = lambda x: x[rows]  # noqa: E731
        return ModelOutputs(
            take(o.logits),
            hidden_states=None if o.hidden_states is None else tuple(map(take, o.hidden_states)),
            attentions=None if o.attentions is None else tuple(tuple(map(take, a)) for a in o.attentions),
            output_embeddings=o.output_embeddings,
        )

    return dataclasses.replace(
        ctx,
        batch=split_rows(ctx.batch, rows),
        global_batch=ctx.batch,
        student=outputs(ctx.student),
        teacher=outputs(ctx.teacher),
    )
