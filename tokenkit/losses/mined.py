"""`baseline_mined`: minimum-edit-distance logit mapping (Wan et al., 2024).

Every student target token (position >= 1, loss-masked, in an unconstrained chunk)
gets one KL term on the student's prediction of it:

- if its chunk is one-to-one (exactly one target token on each side), the target is
  the teacher's prediction of its own token in that chunk, carried into the student
  vocabulary by `mined_mapping` (student id -> the teacher id of least edit distance,
  `int32[Vs]`, see `tokenkit.tokenizer_info`);
- otherwise the target is the one-hot distribution of the student's token (logits
  100 / -100000, as in the DSKD reference code).

A negative entry of `mined_mapping` marks a student token with no teacher counterpart:
the mapped target gives it no probability. `MinedOptions.max_distance` makes those
entries (`tokenizer_info.limit_mined_mapping`): with 0, the target of a one-to-one
token is the teacher's distribution over the tokens both vocabularies spell alike,
rather than every student token taking the logit of its nearest teacher token (which,
between a 49k and a 152k vocabulary, hands each of the 112k unshared student tokens a
copy of some teacher token's probability).

The sum is divided by the number of such student targets in the global batch.

Differences from the upstream code, which pairs the two models' predictions *after* a
one-to-one chunk while the one-hot terms supervise the predictions *of* tokens, and
shifts the loss mask by one: here each student target gets exactly one term, both kinds
on the prediction of the token itself; and the global normaliser counts one-to-one
chunks correctly (upstream's `a == 1 & b` binds as `a == (1 & b)`).
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp

from tokenkit.losses import chunks as chunklib
from tokenkit.losses.context import LossContext, masked_logits, safe_divide
from tokenkit.losses.divergences import forward_kl

ONEHOT_HIGH = 100.0
ONEHOT_LOW = -100_000.0


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MinedOptions:
    """Static options of `baseline_mined`.

    Attributes:
      kd_temp: softmax temperature of both sides.
      max_distance: student tokens whose edit distance to their nearest teacher token
        exceeds this get no mapped probability (None: every token keeps its mapping, as
        in the upstream).
    """

    kd_temp: float = 2.0
    max_distance: int | None = None

    def __post_init__(self):
        if self.kd_temp <= 0:
            raise ValueError(f"Invalid kd_temp={self.kd_temp}; must be > 0.")
        if self.max_distance is not None and self.max_distance < 0:
            raise ValueError(f"Invalid max_distance={self.max_distance}; must be >= 0 or None.")


def _targets(batch, name: str):
    """Chunk ids of targets (positions >= 1 in the loss and a chunk), both sides, and C."""
    t_ids, s_ids = chunklib.loss_chunk_ids(batch, "unconstrained", name)
    num_chunks = chunklib.num_chunk_slots(t_ids.shape[1], s_ids.shape[1])
    return t_ids[:, 1:], s_ids[:, 1:], num_chunks


def baseline_mined_loss(
    ctx: LossContext, options: MinedOptions | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mapped-teacher KL on one-to-one tokens, one-hot KL elsewhere; see the module docstring."""
    options = MinedOptions() if options is None else options
    name = "baseline_mined"
    teacher, t_const = ctx.frozen_teacher(name)
    if ctx.mined_mapping is None:
        raise ValueError(f"{name} needs context.mined_mapping (student id -> teacher id).")
    s_vocab = ctx.student_constants.vocab_mask
    vocab_size = s_vocab.shape[0]
    mapping = ctx.mined_mapping.astype(jnp.int32)
    if mapping.shape[0] > vocab_size:
        raise ValueError(f"mined_mapping has {mapping.shape[0]} entries, more than the student vocabulary {vocab_size}.")
    # Padded student rows map to teacher id 0; the student vocabulary mask hides them.
    mapping = jnp.pad(mapping, (0, vocab_size - mapping.shape[0]))
    has_counterpart = mapping >= 0

    t_ids, s_ids, num_chunks = _targets(ctx.batch, name)
    t_counts = chunklib.chunk_token_counts(t_ids, num_chunks)
    s_counts = chunklib.chunk_token_counts(s_ids, num_chunks)
    one_to_one = (t_counts == 1) & (s_counts == 1)
    # Index (into the shifted rows) of each chunk's teacher target: unique when 1:1.
    shifted_positions = jnp.broadcast_to(jnp.arange(t_ids.shape[1], dtype=jnp.int32), t_ids.shape)
    teacher_row = chunklib.chunk_max(shifted_positions, t_ids, num_chunks, empty=0)

    is_target = s_ids >= 0
    chunk_of = jnp.maximum(s_ids, 0)
    token_one_to_one = jnp.take_along_axis(one_to_one, chunk_of, axis=1) & is_target
    token_teacher_row = jnp.take_along_axis(teacher_row, chunk_of, axis=1)

    teacher_logits = teacher.logits[:, :-1]
    mapped = chunklib.gather_positions(teacher_logits, token_teacher_row)[..., jnp.maximum(mapping, 0)]
    mapped = masked_logits(mapped, s_vocab & has_counterpart)
    targets = ctx.batch.student.input_ids[:, 1:].astype(jnp.int32)
    onehot = jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32)
    onehot_logits = masked_logits(onehot * ONEHOT_HIGH + (1 - onehot) * ONEHOT_LOW, s_vocab)
    teacher_side = jnp.where(token_one_to_one[..., None], mapped, onehot_logits)
    kl = forward_kl(ctx.student.logits[:, :-1], teacher_side, kd_temp=options.kd_temp)

    _, global_s_ids, _ = _targets(ctx.step_batch, name)
    total = jnp.sum(jnp.where(is_target, kl, 0.0))
    loss = safe_divide(total, jnp.sum(global_s_ids >= 0))
    return loss, {
        "mined_one_to_one_mask_sum": jnp.sum(one_to_one).astype(jnp.float32),
        "mined_onehot_mask_sum": jnp.sum(is_target & ~token_one_to_one).astype(jnp.float32),
    }
