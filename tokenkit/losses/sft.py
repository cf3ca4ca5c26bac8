"""`sft`: next-token cross-entropy of the student on its own tokens.

Normalised by the number of loss-masked student targets (positions >= 1) in the
*global* batch, so the micro-batch losses of one step add up to the step's loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenkit.batch import Batch
from tokenkit.losses.context import LossContext, safe_divide
from tokenkit.losses.logprobs import position_stats


def target_count(batch: Batch) -> jax.Array:
    """Number of student tokens that are prediction targets (loss mask, position >= 1)."""
    return jnp.sum(batch.student.loss_mask[:, 1:].astype(jnp.float32))


def sft_loss(ctx: LossContext) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy over the step's loss-masked student targets."""
    ids = ctx.batch.student.input_ids
    mask = ctx.batch.student.loss_mask[:, 1:].astype(jnp.float32)
    # Same call as ALM's (space mask included) so that, together, XLA computes it once.
    ce = position_stats(ctx.student.logits, ids, ctx.student_constants.space_mask).next_token_cross_entropy()
    total = jnp.sum(ce * mask)
    loss = safe_divide(total, target_count(ctx.step_batch))
    return loss, {"micro_batch_ce": safe_divide(total, jnp.sum(mask))}
