"""Tokenizers sampled from a batch's own text, for training the embedding hypernetwork.

ZeTT (arXiv 2405.07883) trains the hypernetwork on a new tokenizer every batch, so that
it learns embeddings for tokenizers in general. Each batch of texts gets a UnigramLM
tokenizer built from those texts (`sample_vocabulary`):

1. the texts are pre-tokenized (GPT-2's split pattern) and, within each pre-token,
   every substring of 1 to `max_piece_length - 1` bytes that starts at every
   `stride`-th character is counted, weighted by its length in bytes (`count_substrings`);
2. the vocabulary size is drawn from a normal distribution (`tokenizer_sample_mean`,
   `_std`) clipped to [`tokenizer_sample_min`, `tokenizer_sample_max`], and a noise
   level from a log-normal one (`tokenizer_noise_mean`, `_std`);
3. each substring's probability (its share of the weighted counts) gets Gaussian noise
   of that level; the most probable substrings of two or more bytes, after the 256
   single bytes (so every text can be spelled), make the vocabulary, their log
   probabilities its Unigram scores;
4. the base tokenizer's special tokens come first (ids 0..k-1), and every piece is
   decomposed into base tokens for the hypernetwork (`hypernet.PieceDecomposer`,
   remembered across batches).

The texts are then encoded with the sampled tokenizer (`tokenizers`' Unigram model: the
Viterbi segmentation runs in Rust), one row per text: the base family's bos, then the
text's pieces, cut at `block_size`.

Implementation: the counting is vectorised numpy (a `[starts, max_piece_length]` byte
window matrix, one `np.unique` over fixed-width keys), the tokenizer is
`tokenizers.models.Unigram`. Neither numba nor Rust of our own is needed: the counting
is a few sorts, the segmentation is a well-kept library's, and the one Python loop left
(decomposing pieces never seen before) shrinks as the cache fills.
`tools/benchmarks/zett_hn.py` measures tokenizers/s and tokens/s.

`SampleTokenizer` is a Grain `RandomMap` over batches of texts (it runs in the data
workers, seeded per batch, so a run's tokenizers are reproducible); `make_dataset`
builds the whole pipeline from the `train`-scoped source.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import grain
import numpy as np
import tokenizers
from absl import logging
from flax import struct
from tokenizers import decoders, models, normalizers, pre_tokenizers

from tokenkit import constants
from tokenkit.batch import Batch, SideBatch
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.data import pipeline, sources
from tokenkit.losses import build_space_mask
from tokenkit.models.hypernet import PieceDecomposer, pack_parts

# GPT-2's pre-tokenization pattern (contractions, letters, digits, other symbols, spaces),
# which the upstream's sampler also uses.
SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Score of the special-token pieces: never chosen by the segmentation.
_SPECIAL_SCORE = -1e6
# Log probability given to substrings the noise pushed below zero.
_NOISED_OUT = -1e5
# The newline byte's position among the 256 byte pieces (they follow the special tokens).
_NEWLINE_BYTE = 0x0A


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TokenizerSamplerConfig:
    """How tokenizers are sampled and batches encoded (see the module docstring).

    tokenizer_sample_min / _mean / _max / _std: the vocabulary size (the 256 bytes and
      the pieces; the base's special tokens come on top).
    tokenizer_noise_mean / _std: the noise level is log-normal with median
      `tokenizer_noise_mean` and log-std `tokenizer_noise_std`.
    max_piece_length: pieces are shorter than this many bytes.
    stride: substrings start at every `stride`-th character of a pre-token.
    block_size: tokens per row (bos included).
    sample_text_span: cut texts longer than `block_size * MAX_CHARS_PER_TOKEN`
      characters at a random start (else at the beginning).
    add_prefix_space: put a space before each text, as SentencePiece models do.
    hn_surface_maxlen: the longest decomposition of a piece into base tokens (longer
      ones are cut; counted in `SampledBatch.truncated`).
    pad_to_multiple_of: the vocabulary arrays are padded to a fixed size, a multiple of
      this, so that every batch has the same shapes.
    include_chats: texts of chat records (their messages joined by newlines) are used
      too; else only `text` records.
    texts_per_batch: records per batch (per process: divided by the process count); the
      tokenizer is sampled from all of them and their pieces are packed into the rows
      (short texts share a row, separated by a newline). None: one per row. More texts
      than rows suit short records (chats); texts left when the rows are full are
      dropped (and counted).
    n_token_subsample: carry only this many vocabulary rows per batch (the upstream's
      option): the special tokens, every piece the batch uses, and random other pieces.
      The hypernetwork then predicts, and the softmax normalises over, these rows only;
      None: the whole sampled vocabulary.
    """

    tokenizer_sample_min: int = 2048
    tokenizer_sample_mean: int = 3072
    tokenizer_sample_max: int = 4096
    tokenizer_sample_std: int = 512
    tokenizer_noise_mean: float = 1e-5
    tokenizer_noise_std: float = 4.0
    max_piece_length: int = 16
    stride: int = 4
    block_size: int = 128
    sample_text_span: bool = True
    add_prefix_space: bool = False
    hn_surface_maxlen: int = 8
    pad_to_multiple_of: int = 64
    include_chats: bool = True
    texts_per_batch: int | None = None
    n_token_subsample: int | None = None

    def __post_init__(self) -> None:
        lo, mean, hi = self.tokenizer_sample_min, self.tokenizer_sample_mean, self.tokenizer_sample_max
        if not 256 < lo <= hi:
            raise ValueError(
                f"tokenizer_sample_min ({lo}) must exceed the 256 bytes and be at most "
                f"tokenizer_sample_max ({hi})."
            )
        if not lo <= mean <= hi:
            raise ValueError(f"tokenizer_sample_mean ({mean}) is outside [{lo}, {hi}].")
        if self.max_piece_length < 2 or self.stride < 1 or self.block_size < 2:
            raise ValueError(
                f"max_piece_length ({self.max_piece_length}) must be >= 2, stride "
                f"({self.stride}) >= 1 and block_size ({self.block_size}) >= 2."
            )


@struct.dataclass
class SampledVocab:
    """A sampled tokenizer's vocabulary as the hypernetwork reads it (padded rows False).

    parts, mask: `[V, S]` decompositions into base tokens; copied: `[V]` rows copied from
    their one part (special tokens); valid: `[V]` real rows; space_mask: `[V]` pieces
    starting with a space, tab or newline, or special.
    """

    parts: Any
    mask: Any
    copied: Any
    valid: Any
    space_mask: Any


@struct.dataclass
class SampledBatch:
    """Rows encoded with one sampled tokenizer, and its vocabulary.

    `vocab_size`, `truncated` (pieces whose decomposition was cut), `noise` and
    `dropped` (texts left over when the rows were full) are host-only statistics
    (`for_device()` drops them).
    """

    rows: Batch
    vocab: SampledVocab
    vocab_size: Any = None
    truncated: Any = None
    noise: Any = None
    dropped: Any = None

    def for_device(self) -> SampledBatch:
        return self.replace(rows=self.rows.for_device(), vocab_size=None, truncated=None,
                            noise=None, dropped=None)


def vocabulary_rows(config: TokenizerSamplerConfig, num_special: int) -> int:
    """The fixed row count of every batch's vocabulary (specials + the maximum size, or
    `n_token_subsample`, padded to `pad_to_multiple_of`)."""
    n = num_special + config.tokenizer_sample_max
    if config.n_token_subsample is not None:
        n = config.n_token_subsample
    return -(-n // config.pad_to_multiple_of) * config.pad_to_multiple_of


def _splitter() -> pre_tokenizers.Split:
    return pre_tokenizers.Split(tokenizers.Regex(SPLIT_PATTERN), behavior="removed", invert=True)


@dataclasses.dataclass(frozen=True)
class SubstringCounts:
    """Distinct substrings: `table[i, :lengths[i]]` are substring i's bytes; `scores[i]`
    is its count times its length."""

    table: np.ndarray
    lengths: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def piece(self, i: int) -> bytes:
        return self.table[i, : self.lengths[i]].tobytes()


def count_substrings(pretokens: Sequence[bytes], max_piece_length: int, stride: int) -> SubstringCounts:
    """The substrings of `pretokens` that start at every `stride`-th UTF-8 character of a
    pre-token and have 1 to `max_piece_length - 1` bytes within it (they may end inside a
    character), with their length-weighted counts."""
    width = max_piece_length - 1
    pretokens = [p for p in pretokens if p]
    if not pretokens:
        return SubstringCounts(np.zeros((0, width), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    lengths = np.fromiter(map(len, pretokens), np.int64, len(pretokens))
    data = np.frombuffer(b"".join(pretokens), np.uint8)
    ends = np.cumsum(lengths)
    end_of = np.repeat(ends, lengths)
    char_start = (data & 0xC0) != 0x80
    char_index = np.cumsum(char_start) - 1
    within = char_index - np.repeat(char_index[ends - lengths], lengths)
    starts = np.flatnonzero(char_start & (within % stride == 0))
    remaining = end_of[starts] - starts
    windows = np.lib.stride_tricks.sliding_window_view(
        np.concatenate([data, np.zeros(width, np.uint8)]), width
    )[starts]
    keys = []
    for k in range(1, width + 1):
        chosen = windows[remaining >= k]
        if not len(chosen):
            break
        key = np.zeros((len(chosen), width + 1), np.uint8)
        key[:, :k] = chosen[:, :k]
        key[:, width] = k  # the length tells a trailing zero byte from padding
        keys.append(key)
    flat = np.ascontiguousarray(np.concatenate(keys)).view(np.dtype((np.void, width + 1))).ravel()
    unique, counts = np.unique(flat, return_counts=True)
    table = unique.view(np.uint8).reshape(-1, width + 1)
    sizes = table[:, width].astype(np.int64)
    return SubstringCounts(table[:, :width], sizes, counts * sizes)


@dataclasses.dataclass(frozen=True)
class SampledTokenizer:
    """One sampled tokenizer: `tokenizer` encodes text (no special tokens added);
    `pieces[i]` is id i's byte-level spelling (the base's special tokens first)."""

    tokenizer: tokenizers.Tokenizer
    pieces: list[str]
    num_special: int
    noise: float


def sample_vocabulary(
    texts: Sequence[str],
    config: TokenizerSamplerConfig,
    special_tokens: Sequence[str],
    rng: np.random.Generator,
) -> SampledTokenizer:
    """A UnigramLM tokenizer sampled from `texts` (see the module docstring)."""
    splitter = _splitter()
    pretokens = [
        piece.encode("utf-8")
        for text in texts
        for piece, _ in splitter.pre_tokenize_str((" " + text) if config.add_prefix_space else text)
    ]
    counts = count_substrings(pretokens, config.max_piece_length, config.stride)
    size = int(rng.normal(config.tokenizer_sample_mean, config.tokenizer_sample_std))
    size = min(max(size, config.tokenizer_sample_min), config.tokenizer_sample_max)
    noise = 0.0
    if config.tokenizer_noise_mean > 0:
        noise = float(rng.lognormal(math.log(config.tokenizer_noise_mean), config.tokenizer_noise_std))
    total = max(float(counts.scores.sum()), 1.0)
    probs = counts.scores / total + (rng.normal(0.0, noise, len(counts)) if noise > 0 else 0.0)
    logp = np.full(len(counts), _NOISED_OUT)
    np.log(probs, out=logp, where=probs > 0)
    candidates = np.flatnonzero(counts.lengths > 1)
    order = candidates[np.argsort(-logp[candidates], kind="stable")][: max(size - 256, 0)]
    floor = float(np.log(counts.scores.min() / total)) if len(counts) else -20.0
    pieces = list(special_tokens) + list(constants.BYTE_CHARS)
    pieces += [constants.bytes_to_chars(counts.piece(i)) for i in order]
    scores = [_SPECIAL_SCORE] * len(special_tokens) + [floor] * 256 + logp[order].tolist()
    tokenizer = tokenizers.Tokenizer(models.Unigram(list(zip(pieces, scores)), unk_id=None,
                                                    byte_fallback=False))
    if config.add_prefix_space:
        tokenizer.normalizer = normalizers.Prepend(" ")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [_splitter(), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return SampledTokenizer(tokenizer, pieces, len(special_tokens), noise)


def record_text(record: Mapping[str, Any], include_chats: bool) -> str:
    """The text a record contributes: its `text`, or its messages' contents joined by
    newlines (chat records, when `include_chats`); "" for neither."""
    if record.get("text"):
        return str(record["text"])
    if include_chats and record.get("messages"):
        return "\n".join(str(m.get("content", "")) for m in record["messages"])
    return ""


def subsample_vocabulary(
    used: np.ndarray, size: int, num_special: int, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """Ids of the rows a batch carries when the vocabulary is subsampled: the special
    tokens (first, keeping their ids), the ids in `used`, then random other ids, `budget`
    in all (or the whole vocabulary, when smaller)."""
    present = np.unique(used)
    present = present[present >= num_special]
    if num_special + len(present) > budget:
        raise ValueError(
            f"The batch uses {len(present)} distinct pieces (+{num_special} special tokens), more "
            f"than n_token_subsample={budget}; raise it (at most rows x block_size are needed)."
        )
    rest = np.setdiff1d(np.arange(num_special, size), present)
    extra = rng.choice(rest, min(budget - num_special - len(present), len(rest)), replace=False)
    return np.concatenate([np.arange(num_special), present, np.sort(extra)]).astype(np.int64)


def pack_rows(
    sequences: Sequence[Sequence[int]], rows: int, block_size: int, bos: int | None, separator: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Packs token sequences greedily into `rows` rows of `block_size` ids.

    Each row starts with `bos` (if any); sequences sharing a row are separated by
    `separator` (a newline). A sequence longer than a row is cut (its row is flagged in
    `truncated`); sequences left when the rows are full are dropped (counted).

    Returns `(ids int32 [rows, L], attention bool [rows, L], truncated bool [rows], dropped)`.
    """
    ids = np.zeros((rows, block_size), np.int32)
    attention = np.zeros((rows, block_size), bool)
    truncated = np.zeros(rows, bool)
    head = [] if bos is None else [bos]
    row, fill = -1, block_size
    used = 0
    for seq in sequences:
        seq = list(seq)
        if not seq:
            used += 1
            continue
        if fill + 1 + len(seq) > block_size:  # start a new row
            row += 1
            if row == rows:
                break
            piece = (head + seq)[:block_size]
            truncated[row] = len(head) + len(seq) > block_size
            fill = 0
        else:
            piece = [separator] + seq
        ids[row, fill : fill + len(piece)] = piece
        attention[row, fill : fill + len(piece)] = True
        fill += len(piece)
        used += 1
    return ids, attention, truncated, len(sequences) - used


class SampleTokenizer(grain.transforms.RandomMap):
    """A group of texts -> a `SampledBatch`: a tokenizer sampled from all of them, the
    texts encoded with it and packed into the batch's rows.

    Args:
      base: the base model's tokenizer (its special tokens, bos and decompositions).
      config: the sampler's settings.
      batch_rows: rows per batch (the texts are packed into them).
    """

    def __init__(self, base: ByteifyTokenizer, config: TokenizerSamplerConfig, batch_rows: int):
        self.base = base
        self.config = config
        self.batch_rows = batch_rows
        self.decomposer = PieceDecomposer(base)
        self.special_tokens = list(base.all_special_tokens)
        self.rows = vocabulary_rows(config, len(self.special_tokens))
        bos = base.bos_token_id
        self.bos = None if bos is None else self.special_tokens.index(base.convert_ids_to_tokens(bos))

    def _span(self, text: str, rng: np.random.Generator) -> str:
        limit = constants.MAX_CHARS_PER_TOKEN * self.config.block_size
        if len(text) <= limit:
            return text
        start = int(rng.integers(0, len(text) - limit + 1)) if self.config.sample_text_span else 0
        return text[start : start + limit]

    def random_map(self, texts: Any, rng: np.random.Generator) -> SampledBatch:
        c = self.config
        texts = [self._span(str(t), rng) for t in texts]
        sampled = sample_vocabulary(texts, c, self.special_tokens, rng)
        encodings = sampled.tokenizer.encode_batch(texts, add_special_tokens=False)
        ids, attention, truncated_rows, dropped = pack_rows(
            [e.ids for e in encodings], self.batch_rows, c.block_size, self.bos,
            sampled.num_special + _NEWLINE_BYTE,
        )
        n = len(sampled.pieces)
        k = sampled.num_special
        # Which vocabulary rows the batch carries: all, or (n_token_subsample) the special
        # tokens, every piece the rows use and random others, renumbered in that order.
        chosen = np.arange(n)
        if c.n_token_subsample is not None:
            chosen = subsample_vocabulary(ids[attention], n, k, c.n_token_subsample, rng)
            renumber = np.zeros(n, np.int32)
            renumber[chosen] = np.arange(len(chosen), dtype=np.int32)
            ids = np.where(attention, renumber[ids], 0).astype(np.int32)
        pieces = [sampled.pieces[i] for i in chosen]
        # Specials copy the base's rows; every other piece is decomposed.
        base_vocab = self.base.get_vocab()
        decompositions = [[base_vocab[t]] for t in self.special_tokens]
        decompositions += [self.decomposer(p) for p in pieces[k:]]
        parts, mask, truncated = pack_parts(decompositions, c.hn_surface_maxlen)
        pad = self.rows - len(chosen)
        copied = np.zeros(self.rows, bool)
        copied[:k] = True
        vocab = SampledVocab(
            parts=np.pad(parts, ((0, pad), (0, 0))),
            mask=np.pad(mask, ((0, pad), (0, 0))),
            copied=copied,
            valid=np.arange(self.rows) < len(chosen),
            space_mask=build_space_mask(pieces, list(range(k)), padded_size=self.rows),
        )
        rows = Batch(student=SideBatch(
            input_ids=ids, attention_mask=attention, loss_mask=attention.copy(),
            truncated=truncated_rows,
        ))
        return SampledBatch(rows=rows, vocab=vocab, vocab_size=np.int32(n),
                            truncated=np.int32(truncated), noise=np.float32(sampled.noise),
                            dropped=np.int32(dropped))


class _RecordText:
    """A record's text (a picklable callable for the Grain workers)."""

    def __init__(self, include_chats: bool):
        self.include_chats = include_chats

    def __call__(self, record: Mapping[str, Any]) -> str:
        return record_text(record, self.include_chats)


class _Subset:
    """The records of a random-access source at `indices` (picklable)."""

    def __init__(self, source: Any, indices: np.ndarray):
        self.source = source
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.source[int(self.indices[index])]

    def __repr__(self) -> str:
        return f"{len(self.indices)} text records of {self.source!r}"


def text_records(source: Any) -> Any:
    """A random-access source cut to its `text` records, found by one pass over it (so
    that a corpus mostly of chats does not make each batch read and drop dozens of
    records per text); other sources unchanged (their chats are filtered per record)."""
    if isinstance(source, (sources.Mixture, sources.Tagged, sources.StreamSource)) or not hasattr(source, "__getitem__"):
        return source
    indices = np.asarray([i for i in range(len(source)) if source[i].get("text")], np.int64)
    logging.info("%d of %d records of %r have text.", len(indices), len(source), source)
    if not len(indices):
        raise ValueError(f"No record of {source!r} has a `text` (set include_chats to use its chats).")
    return _Subset(source, indices)


class _Unbatch(grain.transforms.Map):
    def map(self, batch: Any) -> str:
        return str(np.asarray(batch).ravel()[0])


class _HasText(grain.transforms.Filter):
    def filter(self, text: str) -> bool:
        return bool(text.strip())


def make_dataset(
    base: ByteifyTokenizer,
    config: TokenizerSamplerConfig,
    *,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    source: Any = None,
) -> grain.IterDataset:
    """Batches of `batch_size` texts from the `train`-scoped source (or `source`), each
    encoded with its own sampled tokenizer, in `num_workers` Grain worker processes.

    Records without text (or chats, unless `include_chats`) are skipped.
    """
    if source is None:
        with gin.config_scope("train"):
            source = sources.make_source()
    if not config.include_chats:
        source = text_records(source)
    processes = _process_count()
    if batch_size % processes:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {processes} processes.")
    # One record per element (each process reads its own shard), then batches of texts.
    texts = pipeline.make_dataset(
        source, _RecordText(config.include_chats), batch_size=processes, seed=seed, num_workers=0,
    )
    rows = batch_size // processes
    group = rows if config.texts_per_batch is None else config.texts_per_batch // processes
    if group < rows:
        raise ValueError(
            f"texts_per_batch ({config.texts_per_batch}) must be at least batch_size ({batch_size})."
        )
    dataset = (
        texts.map(_Unbatch())
        .filter(_HasText())
        .batch(group, drop_remainder=True, batch_fn=list)
        .random_map(SampleTokenizer(base, config, rows), seed=seed)
    )
    if num_workers > 0:
        # A few batches of slack per worker absorb the spread of the sampling time.
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=4)
        )
    return dataset


def _process_count() -> int:
    import jax  # noqa: PLC0415  (the data layer only needs it for the process count)

    return jax.process_count()
