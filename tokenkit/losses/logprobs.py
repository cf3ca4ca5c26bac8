"""From logits to the per-position log-probabilities the losses compare.

Everything is fp32 and follows `jax.nn.log_softmax` step for step (shift by the
stop-gradient max, subtract the log of the summed exponentials), so values match a
dense `log_softmax` exactly; but only the reductions the losses need are formed, never
a second `[B, L, V]` array in the forward pass.

Log-probabilities are clipped at 0: rounding can push a log-softmax entry a hair above
0, and the binarised ALM divergences need `log p <= 0`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenkit.losses.context import masked_logits


def _shift(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logits - max, log sum exp(logits - max)), as inside `jax.nn.log_softmax`."""
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return shifted, jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))


def log_softmax(logits: jax.Array, vocab_mask: jax.Array) -> jax.Array:
    """Full `[B, L, V]` log-probabilities (clipped at 0), for losses over whole distributions."""
    return jnp.minimum(jax.nn.log_softmax(masked_logits(logits, vocab_mask), axis=-1), 0.0)


def _next_token(
    logits: jax.Array, vocab_mask: jax.Array, input_ids: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(shifted logit of the next token, log normaliser), both `[B, L-1]`."""
    shifted, log_norm = _shift(masked_logits(logits[:, :-1], vocab_mask))
    ids = input_ids[:, 1:, None].astype(jnp.int32)
    return jnp.take_along_axis(shifted, ids, axis=-1)[..., 0], log_norm


def next_token_logprobs(
    logits: jax.Array, vocab_mask: jax.Array, input_ids: jax.Array
) -> jax.Array:
    """`[B, L-1]`: entry p is log P(input_ids[p+1] | input_ids[:p+1]), clipped at 0."""
    target, log_norm = _next_token(logits, vocab_mask, input_ids)
    return jnp.minimum(target - log_norm, 0.0)


def next_token_cross_entropy(
    logits: jax.Array, vocab_mask: jax.Array, input_ids: jax.Array
) -> jax.Array:
    """`[B, L-1]`: -log P(input_ids[p+1] | ...), unclipped (the SFT loss)."""
    target, log_norm = _next_token(logits, vocab_mask, input_ids)
    return log_norm - target


def subset_logprobs(logits: jax.Array, vocab_mask: jax.Array, subset: jax.Array) -> jax.Array:
    """`[B, L]`: log P(next token is in `subset`) at every position, clipped at 0.

    Computed as a log-sum-exp over the subset with its own max, so it stays finite
    where the subset's probability underflows in fp32 (a dense `log(probs @ subset)`
    gives -inf there). -inf only when the subset is empty.
    """
    masked = masked_logits(logits, vocab_mask)
    shifted, log_norm = _shift(masked)
    in_subset = jnp.where(subset, shifted, -jnp.inf)
    subset_max = jax.lax.stop_gradient(jnp.max(in_subset, axis=-1, keepdims=True))
    subset_max = jnp.where(jnp.isfinite(subset_max), subset_max, 0.0)
    subset_sum = jnp.sum(jnp.where(subset, jnp.exp(shifted - subset_max), 0.0), axis=-1)
    return jnp.minimum(jnp.log(subset_sum) + subset_max[..., 0] - log_norm, 0.0)


def token_logprobs_at(logits: jax.Array, vocab_mask: jax.Array, token_id: int) -> jax.Array:
    """`[B, L]`: log P(next token == token_id) at every position, clipped at 0."""
    shifted, log_norm = _shift(masked_logits(logits, vocab_mask))
    return jnp.minimum(shifted[..., token_id] - log_norm, 0.0)
