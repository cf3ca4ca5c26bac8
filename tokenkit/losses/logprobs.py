"""From logits to the per-position log-probabilities the losses compare.

ALM and SFT only need, at each position, three reductions over the vocabulary: the log
normaliser `log sum_v exp z_v`, the logit of the next token, and the log-sum-exp over a
subset (tokens starting with a space). `position_stats` computes exactly these, with a
hand-written backward pass that forms the `[B, L, V]` gradient in one fused expression
(`g_norm softmax + g_subset subset_softmax + g_next onehot`) from the logits and the
`[B, L]` normalisers, so no `[B, L, V]` intermediate (log-softmax, probabilities) is
ever stored. SFT and ALM call it with identical arguments, so inside one `jit` XLA
computes it once.

Logits arrive with the padded vocabulary rows already masked (`tokenkit.logits`, applied
by the model side), so a masked row has probability exactly 0 and no gradient here.
Log-probabilities are clipped at 0 as upstream (rounding can push a log-softmax a hair
above 0 and the binarised ALM divergences need `log p <= 0`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp



def log_softmax(logits: jax.Array) -> jax.Array:
    """Full `[B, L, V]` log-probabilities (clipped at 0), for losses over whole distributions."""
    return jnp.minimum(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), 0.0)


def _log_sum_exp(z: jax.Array, where: jax.Array | None) -> jax.Array:
    """log sum exp over the last axis (restricted to `where`), shifted by its max; -inf if empty."""
    if where is not None:
        z = jnp.where(where, z, -jnp.inf)
    m = jnp.max(z, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    return m[..., 0] + jnp.log(jnp.sum(jnp.exp(z - m), axis=-1))


def _stats_forward(logits, next_ids, subset):
    z = logits.astype(jnp.float32)
    log_norm = _log_sum_exp(z, None)
    subset_log_norm = _log_sum_exp(z, subset)
    next_logit = jnp.take_along_axis(z, next_ids[..., None], axis=-1)[..., 0]
    return (log_norm, next_logit, subset_log_norm), (logits, next_ids, subset, log_norm, subset_log_norm)


@jax.custom_vjp
def _stats(logits, next_ids, subset):
    return _stats_forward(logits, next_ids, subset)[0]


def _stats_backward(residuals, cotangents):
    logits, next_ids, subset, log_norm, subset_log_norm = residuals
    g_norm, g_next, g_subset = cotangents
    z = logits.astype(jnp.float32)
    softmax = jnp.exp(z - log_norm[..., None])
    subset_softmax = jnp.where(subset, jnp.exp(z - subset_log_norm[..., None]), 0.0)
    onehot = jnp.arange(z.shape[-1], dtype=jnp.int32) == next_ids[..., None]
    grad = g_norm[..., None] * softmax + g_subset[..., None] * subset_softmax + jnp.where(onehot, g_next[..., None], 0.0)
    return grad.astype(logits.dtype), None, None


_stats.defvjp(_stats_forward, _stats_backward)


class PositionStats(NamedTuple):
    """Per-position reductions of one side's logits, each `[B, L]`.

    log_norm: log of the softmax normaliser. next_logit: the (masked) logit of the next
    input token (at the last position: of token 0, unused). subset_log_norm: log-sum-exp
    over the subset (-inf if it is empty).
    """

    log_norm: jax.Array
    next_logit: jax.Array
    subset_log_norm: jax.Array

    def next_token_logprobs(self) -> jax.Array:
        """`[B, L-1]`: entry p is log P(x_{p+1} | x_{<=p}), clipped at 0."""
        return jnp.minimum(self.next_logit - self.log_norm, 0.0)[:, :-1]

    def next_token_cross_entropy(self) -> jax.Array:
        """`[B, L-1]`: -log P(x_{p+1} | x_{<=p}), unclipped."""
        return (self.log_norm - self.next_logit)[:, :-1]

    def subset_logprobs(self) -> jax.Array:
        """`[B, L]`: log P(next token in the subset), clipped at 0.

        Finite where the subset's probability underflows in fp32 (a dense
        `log(probs @ subset)` gives -inf there).
        """
        return jnp.minimum(self.subset_log_norm - self.log_norm, 0.0)


def position_stats(logits: jax.Array, input_ids: jax.Array, subset: jax.Array) -> PositionStats:
    """The reductions ALM and SFT need from (masked) `logits [B, L, V]` (see the module
    docstring); `subset` is `bool[V]`, False on padded rows."""
    ids = input_ids.astype(jnp.int32)
    next_ids = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
    return PositionStats(*_stats(logits, next_ids, subset.astype(bool)))


def token_logprobs_at(logits: jax.Array, log_norm: jax.Array, token_id: int) -> jax.Array:
    """`[B, L]`: log P(next token == token_id), clipped at 0, given the log normaliser."""
    return jnp.minimum(logits[..., token_id].astype(jnp.float32) - log_norm, 0.0)
