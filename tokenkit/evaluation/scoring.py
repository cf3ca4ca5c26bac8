"""Log-likelihoods of token sequences and texts under a model, batched and jitted.

Three layers, each usable alone:

- `tokenkit.logits.next_token_logprobs(logits, input_ids)`: per-token log-probs and
  greedy flags from (masked) logits, for callers with their own forward pass;
- `score_sequences(model, sequences, score_from)`: sums of log-probs of the tokens
  `score_from..` of each id sequence, run through the model side's one forward pass
  (`tokenkit.models.side`, which applies input-id expansion and masks the padded
  vocabulary). Rows (a sequence alone, or a shared context and its continuations, see
  below) are batched by `plan_batches`: sorted by length, each
  padded to the smallest bucket length that holds it (`default_buckets`: four steps per
  doubling, so a sequence is padded by less than a quarter of its length), as many rows
  per batch as fit `tokens_per_batch`, and no empty rows (a bucket's last batch has
  exactly the rows left). The vocabulary head runs only where a scored token is
  predicted (a continuation after a long context pays for its own tokens), over a
  width of one to eight eighths of the bucket (`head_width`). Each
  (rows, length, width) shape compiles once per process, and once per machine with the
  persistent compilation cache (`tokenkit.entry`). Sequences with the same unscored
  tokens (lm-eval's choices of one question) run them once (`shared_prefixes`,
  `pack_groups`): a row holds the context, then each sequence's scored tokens as its
  own segment, positioned after the context and attending to it and to itself, so a
  four-choice question costs one context and four continuations, not four of each.
  Results come back in input order and do not depend on padding, grouping or sharing;
- `score_texts(model, texts)`: per text, the natural-log likelihood of its tokens (the
  first token, bos or not, has no prediction and is not scored), the number of scored
  tokens, its UTF-8 bytes and bits per byte (`-loglik / ln 2 / n_bytes`). Texts longer
  than `max_length` tokens are scored in sliding windows (each window `max_length`
  tokens, later windows scoring `stride` new tokens with the rest as context), and the
  number of windowed texts is logged.

`model` is anything with a model side's attributes and `params` (an
`evaluation.model.EvalModel`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from tokenkit import prompts
from tokenkit.logits import target_logprobs
from tokenkit.models.expand import Expansion
from tokenkit.models.side import Forward, check_tokenizer_fits
from tokenkit.progress import Progress

DEFAULT_MAX_LENGTH = 2048
DEFAULT_TOKENS_PER_BATCH = 8192
MIN_BUCKET = 16
# Buckets per doubling of the length (see `default_buckets`).
BUCKETS_PER_OCTAVE = 4
# Shortest context run once for several sequences (see `shared_prefixes`): a shorter one
# (a lone bos) saves little and would pack unrelated sequences into long rows.
MIN_SHARED_PREFIX = 8


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


@functools.partial(jax.jit, static_argnames=("forward",))
def _score_packed_batch(
    forward: Forward,
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array,
    expanded_input_ids: jax.Array | None,
    logit_positions: jax.Array,
    targets: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Per-prediction log-probs and greedy flags `[R, W]` of packed rows (a context and
    the continuations that share it, see `Transformer.__call__`), at `logit_positions`
    against `targets`."""
    logits = forward(params, input_ids, attention_mask, positions=positions,
                     segment_ids=segment_ids, expanded_input_ids=expanded_input_ids,
                     logit_positions=logit_positions).logits
    return target_logprobs(logits, targets)


# A packed row: per model scored in lockstep, its context length; then the indices of
# the sequences that follow the context, each as its own segment.
Row = tuple[tuple[int, ...], list[int]]


def shared_prefixes(
    sequences: Sequence[Sequence[Sequence[int]]],
    starts: Sequence[Sequence[int]],
    min_length: int = MIN_SHARED_PREFIX,
) -> list[Row]:
    """Groups of requests worth scoring with one run of their common context.

    For one model, or several scored in lockstep (an ensemble's members, each with its
    own ids of the same requests): `sequences[m][i]` and `starts[m][i]` are request i's
    ids and first scored index under model m. A group is two or more requests whose
    unscored tokens are the same under every model, at least `min_length` of them under
    each: `(context length per model, indices)`.
    """
    by_prefix: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for i in range(len(sequences[0])):
        if all(own[i] >= min_length for own in starts):
            key = tuple(tuple(seqs[i][: own[i]]) for seqs, own in zip(sequences, starts))
            by_prefix.setdefault(key, []).append(i)
    return [(tuple(map(len, key)), rows) for key, rows in by_prefix.items() if len(rows) > 1]


def pack_groups(
    groups: Sequence[Row], lengths: Sequence[Sequence[int]], max_length: int
) -> list[Row]:
    """Groups (`shared_prefixes`, or a sequence alone with its unscored tokens as the
    context) cut into packed rows of at most `max_length` tokens under every model (the
    context once, then each sequence's scored tokens); `lengths[m][i]` is sequence i's
    length under model m.

    Raises:
      ValueError: a sequence does not fit a row with its context alone.
    """
    rows = []
    for contexts, members in groups:
        row: list[int] = []
        used = list(contexts)
        for i in members:
            own = [lengths[m][i] - context for m, context in enumerate(contexts)]
            for m, context in enumerate(contexts):
                if context + own[m] > max_length:
                    raise ValueError(f"Sequence {i} has {lengths[m][i]} tokens; the largest "
                                     f"bucket is {max_length}.")
            if row and any(u + o > max_length for u, o in zip(used, own)):
                rows.append((contexts, row))
                row, used = [], list(contexts)
            row.append(i)
            used = [u + o for u, o in zip(used, own)]
        rows.append((contexts, row))
    return rows


def row_tokens(row: Row, lengths: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(The row's longest length over the models, its scored tokens under the first.)"""
    contexts, members = row
    longest = max(context + sum(lengths[m][i] - context for i in members)
                  for m, context in enumerate(contexts))
    return longest, sum(lengths[0][i] - contexts[0] for i in members)


@dataclasses.dataclass(frozen=True)
class PackedRows:
    """A batch of packed rows of one model, as `Transformer.__call__` takes them: int32
    `[R, L]` arrays (`expanded_input_ids` None for a model without input-id expansion),
    the head's `logit_positions` and `targets` `[R, W]`, and per sequence
    `(index, row, first, end)`: its predictions are `[row, first:end]` of the head."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    expanded_input_ids: np.ndarray | None
    logit_positions: np.ndarray
    targets: np.ndarray
    spans: list[tuple[int, int, int, int]]


def pack_rows(
    model: Any, sequences: Sequence[Sequence[int]], rows: Sequence[tuple[int, list[int]]],
    length: int, width: int,
) -> PackedRows:
    """Lays out `(context length, indices)` rows of `model`'s `sequences` in `length`
    tokens: the context once (segment 0), then each sequence's tokens after the context
    (segments 1, 2, ...) at the positions that follow it. A sequence's first token
    after the context is predicted by the context's last, the others by its own."""
    n_rows = len(rows)
    ids = np.full((n_rows, length), model.pad_id, np.int32)
    mask = np.zeros((n_rows, length), np.int32)
    positions = np.zeros((n_rows, length), np.int32)
    segments = np.zeros((n_rows, length), np.int32)
    logit_positions = np.zeros((n_rows, width), np.int32)
    targets = np.zeros((n_rows, width), np.int32)
    members = [i for _, row in rows for i in row]
    expanded = None
    if model.expansion is not None:
        # Expansion reads the tokens before each one: each sequence's own, unpacked.
        whole = np.full((len(members), length), model.pad_id, np.int32)
        for m, i in enumerate(members):
            whole[m, : len(sequences[i])] = sequences[i]
        lengths = np.asarray([len(sequences[i]) for i in members])
        whole_mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
        member_expanded = np.asarray(_expand(model.expansion, whole, whole_mask))
        expanded = np.full((n_rows, length), model.expansion.none_id, np.int32)
    spans: list[tuple[int, int, int, int]] = []
    m = 0
    for r, (context, row) in enumerate(rows):
        first = sequences[row[0]]
        ids[r, :context] = first[:context]
        positions[r, :context] = np.arange(context)
        if expanded is not None:
            expanded[r, :context] = member_expanded[m, :context]
        at, head = context, 0
        for segment, i in enumerate(row, start=1):
            own = sequences[i][context:]
            k = len(own)
            ids[r, at : at + k] = own
            positions[r, at : at + k] = np.arange(context, context + k)
            segments[r, at : at + k] = segment
            if expanded is not None:
                expanded[r, at : at + k] = member_expanded[m, context : context + k]
            if k:
                logit_positions[r, head] = context - 1
                logit_positions[r, head + 1 : head + k] = np.arange(at, at + k - 1)
                targets[r, head : head + k] = own
            spans.append((i, r, head, head + k))
            at, head, m = at + k, head + k, m + 1
        mask[r, :at] = 1
    return PackedRows(ids, mask, positions, segments, expanded, logit_positions, targets, spans)


def head_width(need: int, length: int) -> int:
    """The narrowest `k / 8` of `length` (rounded up) holding `need` predictions."""
    return next(w for w in (-(-length * k // 8) for k in range(1, 9)) if w >= need)


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Bucket lengths below `max_length`, then `max_length`: multiples of `MIN_BUCKET`
    up to 64, then `BUCKETS_PER_OCTAVE` evenly spaced lengths per doubling (64, 80, 96,
    112, 128, 160, ...), so padding adds less than a quarter of a sequence's length
    while a run compiles for only a few lengths."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}.")
    buckets = []
    size = MIN_BUCKET
    while size < max_length:
        buckets.append(size)
        octave = 1 << (size.bit_length() - 1)  # the power of two at or below `size`
        size += max(MIN_BUCKET, octave // BUCKETS_PER_OCTAVE)
    return tuple(buckets) + (max_length,)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `length` tokens."""
    for size in sorted(buckets):
        if length <= size:
            return size
    raise ValueError(f"A sequence of {length} tokens exceeds the largest bucket ({max(buckets)}).")


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def plan_batches(
    lengths: Sequence[int], buckets: Sequence[int], tokens_per_batch: int, *,
    pad_rows: bool = False,
) -> list[tuple[int, int, list[int]]]:
    """Groups sequences into batches: `(bucket length, rows, indices)` each.

    Sequences go to the smallest bucket holding them, longest first within a bucket.
    A batch has `tokens_per_batch // bucket` rows (at least 1); a bucket's last batch
    has the rows that are left, or with `pad_rows` the next power of two (fewer shapes
    to compile, for callers whose compilation is dear, e.g. generation; the caller
    fills the extra rows with a dummy sequence).
    """
    if tokens_per_batch < 1:
        raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}.")
    by_bucket: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        by_bucket.setdefault(bucket_length(lengths[i], buckets), []).append(i)
    plan = []
    for size in sorted(by_bucket):
        members = by_bucket[size]
        full = max(1, tokens_per_batch // size)
        for first in range(0, len(members), full):
            rows = members[first : first + full]
            n_rows = min(full, _power_of_two_at_least(len(rows))) if pad_rows else len(rows)
            plan.append((size, n_rows, rows))
    return plan


def score_sequences(
    model: Any,
    sequences: Sequence[Sequence[int]],
    score_from: int | Sequence[int] = 1,
    *,
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
    buckets: Sequence[int] | None = None,
    share_prefixes: bool = True,
    min_shared_prefix: int = MIN_SHARED_PREFIX,
    show_progress: bool = True,
) -> list[SequenceScore]:
    """Sums the log-probs of tokens `score_from[i]..` of each sequence (input order kept).

    Args:
      model: an `EvalModel` (a model side and its params).
      sequences: token ids; each must fit the largest bucket.
      score_from: first scored position per sequence (or one for all); at least 1.
      tokens_per_batch: rows x bucket length of a batch (see `plan_batches`).
      buckets: padded lengths (default `default_buckets(longest sequence)`).
      share_prefixes: run a context common to several sequences once (see
        `shared_prefixes`; same results up to float rounding).
      min_shared_prefix: the shortest context shared.
      show_progress: log progress lines.
    """
    n = len(sequences)
    starts = [score_from] * n if isinstance(score_from, int) else list(score_from)
    if len(starts) != n:
        raise ValueError(f"score_from has {len(starts)} entries for {n} sequences.")
    if n == 0:
        return []
    for i, (seq, start) in enumerate(zip(sequences, starts)):
        if start < 1:
            raise ValueError(f"score_from[{i}] = {start}: the first token has no prediction.")
        if len(seq) == 0:
            raise ValueError(f"Sequence {i} is empty.")
    if buckets is None:
        buckets = default_buckets(max(max(len(s) for s in sequences), 2))
    starts = [min(start, len(seq)) for seq, start in zip(sequences, starts)]

    loglik = np.zeros(n, np.float64)
    greedy = np.zeros(n, bool)
    progress = Progress(n, "scoring", unit="sequences", enabled=show_progress)
    for (packed,) in packed_batches([model], [sequences], [starts], buckets, tokens_per_batch,
                                    share=share_prefixes, min_shared_prefix=min_shared_prefix):
        logp, is_greedy = jax.device_get(_score_packed_batch(
            model.forward, model.params, packed.input_ids, packed.attention_mask,
            packed.positions, packed.segment_ids, packed.expanded_input_ids,
            packed.logit_positions, packed.targets,
        ))
        add_span_scores(packed.spans, logp, is_greedy, loglik, greedy)
        progress.update(len(packed.spans))
    progress.close()
    return [
        SequenceScore(float(loglik[i]), len(s) - st, bool(greedy[i]))
        for i, (s, st) in enumerate(zip(sequences, starts))
    ]


def plan_rows(
    models: Sequence[Any], sequences: Sequence[Sequence[Sequence[int]]],
    starts: Sequence[Sequence[int]], max_length: int, *, share: bool = True,
    min_shared_prefix: int = MIN_SHARED_PREFIX,
) -> list[Row]:
    """The packed rows of requests scored by `models` in lockstep (`sequences[m][i]`,
    `starts[m][i]`: see `shared_prefixes`): requests that share a context together, the
    others alone with their unscored tokens as the context. Nothing is shared with
    `share=False` or for a LongRoPE model (its factors follow the row's length, which
    packing changes)."""
    n = len(sequences[0])
    groups = []
    if share and not any(_length_dependent_rope(model) for model in models):
        groups = shared_prefixes(sequences, starts, min_shared_prefix)
    grouped = {i for _, members in groups for i in members}
    if groups:
        saved = sum((len(members) - 1) * contexts[0] for contexts, members in groups)
        logging.info(
            "scoring: %d of %d sequences share %d contexts, each run once (%d of %d "
            "tokens saved).", len(grouped), n, len(groups), saved,
            sum(map(len, sequences[0])),
        )
    singles = [(tuple(own[i] for own in starts), [i]) for i in range(n) if i not in grouped]
    lengths = [[len(s) for s in seqs] for seqs in sequences]
    return pack_groups(groups + singles, lengths, max_length)


def packed_batches(
    models: Sequence[Any], sequences: Sequence[Sequence[Sequence[int]]],
    starts: Sequence[Sequence[int]], buckets: Sequence[int], tokens_per_batch: int, *,
    share: bool = True, min_shared_prefix: int = MIN_SHARED_PREFIX,
) -> Iterator[list[PackedRows]]:
    """The batches of `plan_rows`' rows, one `PackedRows` per model each (the models'
    spans agree when every request scores as many tokens under each model)."""
    rows = plan_rows(models, sequences, starts, max(buckets), share=share,
                     min_shared_prefix=min_shared_prefix)
    lengths = [[len(s) for s in seqs] for seqs in sequences]
    sizes = [row_tokens(row, lengths) for row in rows]
    for size, _, batch in plan_batches([longest for longest, _ in sizes], buckets,
                                       tokens_per_batch):
        width = head_width(max(sizes[b][1] for b in batch), size)
        yield [pack_rows(model, sequences[m], [(rows[b][0][m], rows[b][1]) for b in batch],
                         size, width)
               for m, model in enumerate(models)]


def add_span_scores(
    spans: Sequence[tuple[int, int, int, int]], logp: np.ndarray, is_greedy: np.ndarray,
    loglik: np.ndarray, greedy: np.ndarray,
) -> None:
    """Each sequence's sum of per-prediction log-probs and whether all were greedy, from a
    batch's head outputs `[R, W]` into `loglik[i]` / `greedy[i]`."""
    for i, r, first, end in spans:
        loglik[i] = float(np.sum(logp[r, first:end], dtype=np.float64))
        greedy[i] = bool(np.all(is_greedy[r, first:end]))


def _length_dependent_rope(model: Any) -> bool:
    config = model.config
    return config.position_kind == "rope" and config.rope.varies_with_length


@jax.jit
def _expand(expansion: Expansion, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return expansion.apply(input_ids, attention_mask)


def encode_texts(
    tokenizer: Any, texts: Sequence[str], *, add_bos: bool | None = None
) -> list[list[int]]:
    """Ids of each text, after the family's bos if `add_bos` (see `prompts.encode_text`).

    `add_bos=None` adds bos when the family has one; True for a family without bos is
    an error.
    """
    if add_bos and tokenizer.bos_token_id is None:
        raise ValueError(
            f"add_bos=True but the {tokenizer.family.name} family of {tokenizer!r} has no bos "
            "token; use add_bos=False (or None)."
        )
    bos = add_bos is None or add_bos
    return [prompts.encode_text(text, tokenizer, bos=bos) for text in texts]


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
    model: Any,
    texts: Sequence[str],
    *,
    add_bos: bool | None = None,
    max_length: int | None = None,
    stride: int | None = None,
    tokens_per_batch: int = DEFAULT_TOKENS_PER_BATCH,
    buckets: Sequence[int] | None = None,
    show_progress: bool = True,
) -> list[TextScore]:
    """Scores each text (see the module docstring for the quantities).

    Args:
      model: an `EvalModel`.
      texts: the texts; empty ones score 0 with 0 tokens.
      add_bos: see `encode_texts` (default: the model's `add_bos`).
      max_length: longest forward pass in tokens (default: the model's
        `max_position_embeddings`, at most `DEFAULT_MAX_LENGTH`); longer texts are
        scored in sliding windows.
      stride: new tokens per later window (default `max_length // 2`).
      tokens_per_batch, buckets, show_progress: see `score_sequences`.

    Raises:
      ValueError: the tokenizer has more tokens than the model has embedding rows.
    """
    tokenizer = model.tokenizer
    check_tokenizer_fits(tokenizer, model.config, model.name)  # before encoding anything
    if max_length is None:
        max_length = min(model.config.max_position_embeddings, DEFAULT_MAX_LENGTH)
    if stride is None:
        stride = max(max_length // 2, 1)
    if add_bos is None:
        add_bos = None if model.add_bos else False
    encoded = encode_texts(tokenizer, texts, add_bos=add_bos)

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
        model, pieces, piece_from, tokens_per_batch=tokens_per_batch, buckets=buckets,
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


def bits_per_byte(scores: Sequence[TextScore]) -> float:
    """Bits per UTF-8 byte over several scored texts (total log-likelihood / total bytes)."""
    n_bytes = sum(s.n_bytes for s in scores)
    return -sum(s.loglik for s in scores) / math.log(2) / max(n_bytes, 1)
