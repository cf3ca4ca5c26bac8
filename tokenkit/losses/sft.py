"""`sft`: next-token cross-entropy of the student on its own tokens.

Normalised by the number of loss-masked student targets (positions >= 1) in the
*global* batch, so the micro-batch losses of one step add up to the step's loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenkit.losses.context import LossContext, batch_key, safe_divide
from tokenkit.losses.logprobs import position_stats


def target_count(batch, loss_name: str = "sft") -> jax.Array:
    """Number of student tokens that are prediction targets (loss mask, position >= 1)."""
    return jnp.sum(batch_key(batch, "loss_mask_student", loss_name)[:, 1:].astype(jnp.float32))


def sft_loss(ctx: LossContext) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy over the step's loss-masked student targets."""
    ids = batch_key(ctx.batch, "input_ids_student", "sft")
    mask = batch_key(ctx.batch, "loss_mask_student", "sft")[:, 1:].astype(jnp.float32)
    constants = ctx.student_constants
    # Same call as ALM's (space mask included) so that, together, XLA computes it once.
    ce = position_stats(ctx.student.logits, constants.vocab_mask, ids, constants.space_mask).next_token_cross_entropy()
    total = jnp.sum(ce * mask)
    loss = safe_divide(total, target_count(ctx.step_batch))
    return loss, {"micro_batch_ce": safe_divide(total, jnp.sum(mask))}
