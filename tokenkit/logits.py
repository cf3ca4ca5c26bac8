"""Logits over a padded vocabulary, and the log-probabilities read from them.

Embedding matrices are padded to a multiple of 64 rows (`models.surgery`), so a model's
logits have more columns than its tokenizer has tokens. The padding rows must never
receive probability: `mask_padded_vocab` is the one place where they are pushed out of
every softmax, and the model side (`models.side.ModelSide.forward`) applies it to every
forward pass, for training, scoring and generation alike. Everything downstream
(losses, scoring, sampling, ensembles) reads logits that are already masked.

This module sits at the bottom of the package (it imports nothing of ours), so that the
losses can share it with the models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Finite, so that sums of masked logits (ensembles average them) and `0 * x` stay
# finite; far below any real logit, so `exp(MASKED_LOGIT - max)` is exactly 0 in fp32.
MASKED_LOGIT = -1e9


def vocab_mask(num_real: int, padded_size: int | None = None) -> np.ndarray:
    """`bool[padded_size]`: True for the `num_real` real rows, False for padding rows."""
    padded_size = num_real if padded_size is None else padded_size
    if padded_size < num_real:
        raise ValueError(
            f"The tokenizer has {num_real} tokens but the model only {padded_size} embedding "
            "rows; transfer the model to this tokenizer first (python -m tokenkit.zett)."
        )
    mask = np.zeros(padded_size, dtype=bool)
    mask[:num_real] = True
    return mask


def mask_padded_vocab(logits: jax.Array, mask: jax.Array | np.ndarray | None) -> jax.Array:
    """float32 logits with the columns where `mask` is False set to `MASKED_LOGIT`.

    `mask=None` (no padding) only casts.
    """
    logits = logits.astype(jnp.float32)
    if mask is None:
        return logits
    if mask.shape[-1] != logits.shape[-1]:
        raise ValueError(
            f"The vocabulary mask has {mask.shape[-1]} rows but the logits have "
            f"{logits.shape[-1]}; build it for the padded vocabulary size."
        )
    return jnp.where(mask, logits, MASKED_LOGIT)


def next_token_logprobs(logits: jax.Array, input_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-prob of each token given the ones before it, and whether it was the argmax.

    Args:
      logits: `[B, L, V]`, already masked (see the module docstring).
      input_ids: `[B, L]`.

    Returns:
      float32 `[B, L]` log-probs and bool `[B, L]` greedy flags; entry `i` is token `i`
      predicted from position `i - 1`; entry 0 (no prediction) is 0 / True.
    """
    picked, greedy = target_logprobs(logits[:, :-1], input_ids[:, 1:])
    pad = ((0, 0), (1, 0))
    return jnp.pad(picked, pad), jnp.pad(greedy, pad, constant_values=True)


def target_logprobs(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-prob of `targets` `[B, M]` under `logits` `[B, M, V]` (already masked), and
    whether each target is the argmax. Reads the logits without materialising a
    log-softmax of the same size."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logp = picked - jax.nn.logsumexp(logits, axis=-1)
    return logp, jnp.argmax(logits, axis=-1) == targets
