"""Log-likelihoods of token sequences and texts under a `Transformer`, batched and jitted.

Three layers, each usable alone:

- `next_token_logprobs(logits, input_ids)`: per-token log-probs and greedy flags from
  logits (pure; for callers with their own forward pass);
- `score_sequences(model, variables, sequences, score_from)`: sums of log-probs of the
  tokens `score_from..` of each id sequence. Sequences are grouped into length buckets
  (`buckets`, right padding) and fixed-size batches, so each bucket compiles once;
  results come back in input order and do not depend on padding or grouping;
- `score_texts(model, variables, tokenizer, texts)`: per text, the natural-log
  likelihood of its tokens (the first token, bos or not, has no prediction and is not
  scored), the number of scored tokens, its UTF-8 bytes and bits per byte
  (`-loglik / ln 2 / n_bytes`). Texts longer than `max_length` tokens are scored in
  sliding windows (each window `max_length` tokens, later windows scoring `stride` new
  tokens with the rest as context), and the number of windowed texts is logged.

Logits of vocabulary rows beyond the tokenizer's size (padding from
`surgery.replace_vocabulary`) are masked out of the softmax. Byte-level models with
input-id expansion pass `expansion` (a `models.expand.Expansion`); the expanded ids are
computed inside the jitted step from the batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tokenkit.byteify import ByteifyTokenizer
from tokenkit.models.expand import Expansion
from tokenkit.models.surgery import logit_mask
from tokenkit.models.transformer import Transformer
from tokenkit.progress import Progress

DEFAULT_MAX_LENGTH = 2048
MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SequenceScore:
    """Log-likelihood of the scored tokens of one sequence.

    Attributes:
      loglik: sum of the natural-log probabilities of the scored tokens.
      n_tokens: how many tokens were scored.
      is_greedy: every scored token is the argmax of its prediction (True if none).
    """

    loglik: float
    n_tokens: int
    is_greedy: bool


@dataclasses.dataclass(frozen=True)
class TextScore:
    """Log-likelihood of one text (see the module docstring).

    Attributes:
      loglik: natural-log likelihood of the text's tokens after the first.
      n_tokens: the number of tokens scored (tokens of the text plus bos, minus one).
      n_bytes: UTF-8 bytes of the text.
      n_windows: forward windows used (1 unless the text exceeded `max_length`).
    """

    loglik: float
    n_tokens: int
    n_bytes: int
    n_windows: int = 1

    @property
    def bits_per_byte(self) -> float | None:
        """`-loglik / ln 2 / n_bytes`; None for an empty text."""
        if self.n_bytes == 0:
            return None
        return -self.loglik / math.log(2) / self.n_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "loglik": self.loglik,
            "n_tokens": self.n_tokens,
            "n_bytes": self.n_bytes,
            "bits_per_byte": self.bits_per_byte,
        }


def next_token_logprobs(logits: jax.Array, input_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-prob of each token given the ones before it, and whether it was the argmax.

    Args:
      logits: `[B, L, V]` (already masked where needed).
      input_ids: `[B, L]`.

    Returns:
      float32 `[B, L]` log-probs and bool `[B, L]` greedy flags; entry `i` is token `i`
      predicted from position `i - 1`, entry 0 (no prediction) is 0 / True.
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    targets = input_ids[:, 1:]
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logp, axis=-1) == targets
    pad = ((0, 0), (1, 0))
    return jnp.pad(picked, pad), jnp.pad(greedy, pad, constant_values=True)


def _score_batch(
    model: Transformer,
    variables: Mapping[str, Any],
    input_ids: jax.Array,
    attention_mask: jax.Array,
    score_mask: jax.Array,
    vocab_mask: jax.Array | None,
    expansion: Expansion | None,
) -> tuple[jax.Array, jax.Array]:
    expanded = None if expansion is None else expansion.apply(input_ids, attention_mask)
    out = model.apply(variables, input_ids, attention_mask, expanded_input_ids=expanded)
    logits = out.logits.astype(jnp.float32)
    if vocab_mask is not None:
        logits = logits + vocab_mask
    logp, greedy = next_token_logprobs(logits, input_ids)
    loglik = jnp.sum(jnp.where(score_mask, logp, 0.0), axis=-1)
    all_greedy = jnp.all(greedy | ~score_mask, axis=-1)
    return loglik, all_greedy


_score_batch_jit = jax.jit(_score_batch, static_argnames=("model",))


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Powers of two from `MIN_BUCKET` below `max_length`, then `max_length`."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}.")
    buckets = []
    size = MIN_BUCKET
    while size < max_length:
        buckets.append(size)
        size *= 2
    return tuple(buckets) + (max_length,)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `length` tokens."""
    for size in sorted(buckets):
        if length <= size:
            return size
    raise ValueError(f"A sequence of {length} tokens exceeds the largest bucket ({max(buckets)}).")


def _vocab_mask(model: Transformer, num_real_tokens: int | None) -> np.ndarray | None:
    vocab_size = model.config.vocab_size
    if num_real_tokens is None or num_real_tokens == vocab_size:
        return None
    if num_real_tokens > vocab_size:
        raise ValueError(
            f"The tokenizer has {num_real_tokens} tokens but the model only {vocab_size} "
            "embedding rows; transfer the model to this tokenizer first (python -m tokenkit.zett)."
        )
    return logit_mask(num_real_tokens, vocab_size)


def score_sequences(
    model: Transformer,
    variables: Mapping[str, Any],
    sequences: Sequence[Sequence[int]],
    score_from: int | Sequence[int] = 1,
    *,
    batch_size: int = 8,
    buckets: Sequence[int] | None = None,
    num_real_tokens: int | None = None,
    expansion: Expansion | None = None,
    pad_id: int = 0,
    show_progress: bool = True,
) -> list[SequenceScore]:
    """Sums the log-probs of tokens `score_from[i]..` of each sequence (input order kept).

    Args:
      model, variables: the `Transformer` and its `{"params": ..., ["lora": ...]}`.
      sequences: token ids; each must fit the largest bucket.
      score_from: first scored position per sequence (or one for all); at least 1.
      batch_size: rows per forward pass (a short last batch is padded with dummy rows,
        so every call of a bucket has the same shape).
      buckets: padded lengths (default `default_buckets(longest sequence)`).
      num_real_tokens: the tokenizer's size; logits of rows beyond it are masked.
      expansion: input-id expansion (the params need `expand_embedder`).
      pad_id: id written into padding positions (masked; any valid id).
      show_progress: log progress lines.
    """
    n = len(sequences)
    starts = [score_from] * n if isinstance(score_from, int) else list(score_from)
    if len(starts) != n:
        raise ValueError(f"score_from has {len(starts)} entries for {n} sequences.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if n == 0:
        return []
    for i, (seq, start) in enumerate(zip(sequences, starts)):
        if start < 1:
            raise ValueError(f"score_from[{i}] = {start}: the first token has no prediction.")
        if len(seq) == 0:
            raise ValueError(f"Sequence {i} is empty.")
    longest = max(len(s) for s in sequences)
    if buckets is None:
        buckets = default_buckets(max(longest, 2))
    vocab_mask = _vocab_mask(model, num_real_tokens)
    by_bucket: dict[int, list[int]] = {}
    for i, seq in enumerate(sequences):
        by_bucket.setdefault(bucket_length(len(seq), buckets), []).append(i)

    loglik = np.zeros(n, np.float64)
    greedy = np.zeros(n, bool)
    progress = Progress(n, "scoring", unit="sequences", enabled=show_progress)
    for size in sorted(by_bucket):
        members = by_bucket[size]
        for first in range(0, len(members), batch_size):
            rows = members[first : first + batch_size]
            ids = np.full((batch_size, size), pad_id, np.int32)
            mask = np.zeros((batch_size, size), np.int32)
            score = np.zeros((batch_size, size), bool)
            mask[len(rows):, 0] = 1  # dummy rows: one real token, nothing scored
            for r, i in enumerate(rows):
                seq = sequences[i]
                ids[r, : len(seq)] = seq
                mask[r, : len(seq)] = 1
                score[r, starts[i] : len(seq)] = True
            batch_loglik, batch_greedy = _score_batch_jit(
                model, variables, ids, mask, score, vocab_mask, expansion
            )
            batch_loglik, batch_greedy = jax.device_get((batch_loglik, batch_greedy))
            loglik[rows] = batch_loglik[: len(rows)]
            greedy[rows] = batch_greedy[: len(rows)]
            progress.update(len(rows))
    progress.close()
    return [
        SequenceScore(float(loglik[i]), max(len(s) - st, 0), bool(greedy[i]))
        for i, (s, st) in enumerate(zip(sequences, starts))
    ]


def encode_texts(
    tokenizer: ByteifyTokenizer, texts: Sequence[str], *, add_bos: bool | None = None
) -> list[list[int]]:
    """Ids of each text (no special tokens added), after the family's bos if `add_bos`.

    `add_bos=None` adds bos when the family has one; True for a family without bos is
    an error.
    """
    bos = tokenizer.bos_token_id
    if add_bos and bos is None:
        raise ValueError(
            f"add_bos=True but the {tokenizer.family.name} family of {tokenizer!r} has no bos "
            "token; use add_bos=False (or None)."
        )
    prefix = [bos] if (add_bos or add_bos is None) and bos is not None else []
    return [prefix + tokenizer.encode(text, add_special_tokens=False) for text in texts]


def windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows `(start, end, score_from)` over a sequence of `length` tokens.

    The first window is `[0, max_length)` scoring positions 1..; each later window ends
    `stride` tokens further (or at the end) and scores only its new tokens, with the
    `max_length - stride` tokens before them as context. Together the windows score
    positions 1..length-1 exactly once.
    """
    if not 1 <= stride < max_length:
        raise ValueError(f"stride must be in 1..max_length-1 ({max_length - 1}), got {stride}.")
    end = min(length, max_length)
    spans = [(0, end, 1)]
    while end < length:
        new_end = min(end + stride, length)
        start = new_end - max_length
        spans.append((start, new_end, end - start))
        end = new_end
    return spans


def score_texts(
    model: Transformer,
    variables: Mapping[str, Any],
    tokenizer: ByteifyTokenizer,
    texts: Sequence[str],
    *,
    add_bos: bool | None = None,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    buckets: Sequence[int] | None = None,
    expansion: Expansion | None = None,
    show_progress: bool = True,
) -> list[TextScore]:
    """Scores each text (see the module docstring for the quantities).

    Args:
      model, variables: the `Transformer` and its variables.
      tokenizer: the model's `ByteifyTokenizer`.
      texts: the texts; empty ones score 0 with 0 tokens.
      add_bos: see `encode_texts`.
      max_length: longest forward pass in tokens (default: the model's
        `max_position_embeddings`, at most `DEFAULT_MAX_LENGTH`); longer texts are
        scored in sliding windows.
      stride: new tokens per later window (default `max_length // 2`).
      batch_size, buckets, expansion, show_progress: see `score_sequences`.

    Raises:
      ValueError: the tokenizer has more tokens than the model has embedding rows.
    """
    _vocab_mask(model, len(tokenizer))  # fail before encoding anything
    if max_length is None:
        max_length = min(model.config.max_position_embeddings, DEFAULT_MAX_LENGTH)
    if stride is None:
        stride = max(max_length // 2, 1)
    encoded = encode_texts(tokenizer, texts, add_bos=add_bos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    pieces: list[list[int]] = []
    piece_from: list[int] = []
    owner: list[int] = []
    n_windows = [0] * len(texts)
    for t, ids in enumerate(encoded):
        if len(ids) < 2:
            continue  # nothing to predict
        for start, end, first in windows(len(ids), max_length, stride):
            pieces.append(ids[start:end])
            piece_from.append(first)
            owner.append(t)
            n_windows[t] += 1
    windowed = sum(1 for w in n_windows if w > 1)
    if windowed:
        logging.info(
            "%d of %d texts exceed max_length=%d tokens and are scored in sliding windows "
            "(stride %d).", windowed, len(texts), max_length, stride,
        )
    if buckets is None:
        buckets = default_buckets(max_length)
    scores = score_sequences(
        model,
        variables,
        pieces,
        piece_from,
        batch_size=batch_size,
        buckets=buckets,
        num_real_tokens=len(tokenizer),
        expansion=expansion,
        pad_id=pad_id,
        show_progress=show_progress,
    )
    loglik = [0.0] * len(texts)
    n_tokens = [0] * len(texts)
    for t, score in zip(owner, scores):
        loglik[t] += score.loglik
        n_tokens[t] += score.n_tokens
    return [
        TextScore(
            loglik=loglik[t],
            n_tokens=n_tokens[t],
            n_bytes=len(text.encode("utf-8")),
            n_windows=n_windows[t],
        )
        for t, text in enumerate(texts)
    ]
