"""Exact alignment of two tokenizations of one text, and chunkings as integer chunk ids.

Two tokenizers cut the same text at different places. Walking both token sequences and
cutting wherever the bytes consumed so far coincide pairs them up into *spans* that spell
the same bytes: `["Hel", "lo"]` against `["Hello"]`. Token strings come from
`tokenkit.byteify` (one character per byte), so a token's byte length is its string
length and strings compare across tokenizers.

Special tokens are matched through the families' template slots (`tokenkit.families`):
a run of tokens filling a slot on one side (a *slot key*, e.g. Llama 3's
`<|end_header_id|>`, `ĊĊ`) is aligned with whatever slot key the other side has at the
same moment (Qwen2's `Ċ`), whatever their bytes; a slot the other family lacks (Qwen2
has no bos) makes that side's token one-sided: it is in no span's bytes. If the texts
begin with different numbers of spaces (a SentencePiece dummy prefix), the first text
token of the side with fewer gets the missing spaces prepended.

Each aligned pair of spans is a chunk. Chunkings (`KINDS`) group consecutive spans:

- `unconstrained`: every span is a chunk;
- `space`: cut only before a token that starts with a space on both sides, or after a
  slot-key span;
- `unbiased`: cut only where the pair of last tokens has tokenization bias at most a
  threshold on both sides (bias matrices from `tokenkit.tokenizer_info`), or after a
  slot-key span.

Chunks are stored as integer ids per token (`int32[B, L]`, `-1` = in no chunk: padding,
one-sided special tokens, tokens after the last common boundary), never as the
upstream's dense `[B, L, L]` matrices (`chunk_ids_to_matrix` builds those for tests).

Two implementations with one meaning:

- `get_alignment_indices` (one example, token strings, a per-token loop) and
  `reference_chunk_ids` on top of it: straightforward, used as the reference;
- `Aligner`: built once per tokenizer pair (per-id tables), then vectorized numpy over a
  whole batch: byte offsets are cumulative sums of a per-id length table, common
  boundaries are the intersection of the two sides' offsets, and slot keys are handled
  only where they occur. Memory is linear in the sequence length.

Where this deliberately differs from the upstream loop (identical results elsewhere):

- attention-masked tokens are left out wherever they are (upstream handles only trailing
  padding correctly);
- a one-sided special token is transparent (zero bytes); upstream restarts that side's
  byte count after it, which loses the alignment when such a token follows text;
- the leading-space comparison starts after the leading run of special tokens on each
  side; upstream can prepend the space to a special token (bos on one side, a text that
  starts with a space) and then loses the first alignment;
- slot keys are matched among unmasked tokens only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

KINDS: tuple[str, ...] = ("unconstrained", "space", "unbiased")
SPACE = "Ġ"  # the byte-level spelling of " "
_SLOT_NORMALIZED_CHAR = "S"  # what slot-key tokens normalize to (one per other-side token)


def _check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"Unknown chunking {kind!r}; valid chunkings: {', '.join(KINDS)}")
    return kinds


# ----------------------------------------------------------------------- slot keys


@dataclasses.dataclass(frozen=True)
class SlotKey:
    """A run of tokens filling one template slot of one side's family.

    `normalized` is None when the other family lacks the slot (the key is *one-sided*:
    its first token is skipped); otherwise one string per token whose lengths make both
    sides' slot runs equally long (`len(other) * "S"` each), so spans compare equal.
    """

    tokens: tuple[str, ...]
    normalized: tuple[str, ...] | None

    @property
    def one_sided(self) -> bool:
        return self.normalized is None


def slot_keys(family: Any, other: Any) -> tuple[SlotKey, ...]:
    """Slot keys of `family` when aligned against `other`, in matching order.

    Keys are tried in slot order; a token run filling several slots (Llama 3's eos and
    eot are both `<|eot_id|>`) is one key, at its first slot's place, with the value of
    its last slot.
    """
    keys: dict[tuple[str, ...], tuple[str, ...] | None] = {}
    other_slots = other.replacements
    for marker, tokens in family.replacements.items():
        if tokens is None:
            continue
        theirs = other_slots[marker]
        tokens = tuple(tokens)
        keys[tokens] = None if theirs is None else (_SLOT_NORMALIZED_CHAR * len(theirs),) * len(tokens)
    return tuple(SlotKey(tokens, normalized) for tokens, normalized in keys.items())


def _match_slot_key(tokens: Sequence[str], index: int, keys: Sequence[SlotKey]) -> SlotKey | None:
    for key in keys:
        if tuple(tokens[index : index + len(key.tokens)]) == key.tokens:
            return key
    return None


def _leading_space_count(tokens: Sequence[str], start: int) -> int:
    """Spaces at the start of `tokens[start:]`, across tokens (`["ĠĠ", "Ġa"]` -> 3)."""
    count = 0
    for token in tokens[start:]:
        rest = token.lstrip(SPACE)
        count += len(token) - len(rest)
        if rest:
            break
    return count


def _first_text_index(tokens: Sequence[str], special: frozenset[str]) -> int:
    """Index of the first token after the leading run of special tokens."""
    index = 0
    while index < len(tokens) and tokens[index] in special:
        index += 1
    return index


# --------------------------------------------------------------- reference (loop)


class AlignmentIndices(NamedTuple):
    """What `get_alignment_indices` returns (unpacks like the upstream 5-tuple).

    spans: `(start_a, end_a, start_b, end_b)` per aligned pair, in text order, half-open
      indices into the given token lists; consecutive spans are contiguous before
      `check` removes mismatching ones.
    normalized_a / normalized_b: per token, the string it contributes to its span: the
      token (with prepended leading spaces where normalized), `"S"...` for slot-key
      tokens, `""` for masked, one-sided special and never-reached tokens.
    special_mask_a / special_mask_b: per token, whether it is a slot-key, one-sided,
      masked or never-reached token.
    """

    spans: list[tuple[int, int, int, int]]
    normalized_a: list[str]
    normalized_b: list[str]
    special_mask_a: list[bool]
    special_mask_b: list[bool]


def get_alignment_indices(
    tokens_a: Sequence[str],
    tokens_b: Sequence[str],
    tokenizer_a: Any,
    tokenizer_b: Any,
    attention_mask_a: Sequence[bool] | np.ndarray | None = None,
    attention_mask_b: Sequence[bool] | np.ndarray | None = None,
    check: bool = True,
) -> AlignmentIndices:
    """Aligns two tokenizations (byte-level token strings) of one text.

    A per-token loop over both sequences: at each step either both current tokens start
    slot keys (aligned with each other, a span of their own), or a one-sided slot token
    is skipped, or the side that has consumed fewer bytes takes its next token; where
    both have consumed the same number of bytes, a span ends. The inputs are not
    modified.

    Args:
      tokens_a, tokens_b: token strings, as from `ByteifyTokenizer.convert_ids_to_tokens`.
      tokenizer_a, tokenizer_b: the `ByteifyTokenizer`s (their `family` and
        `all_special_tokens` are used).
      attention_mask_a, attention_mask_b: optional; tokens where they are false are left
        out (in no span's bytes).
      check: drop spans whose two sides do not spell the same string (a warning each);
        they happen only where the two texts differ.
    """
    keys_a = slot_keys(tokenizer_a.family, tokenizer_b.family)
    keys_b = slot_keys(tokenizer_b.family, tokenizer_a.family)
    kept_a = _unmasked_positions(len(tokens_a), attention_mask_a)
    kept_b = _unmasked_positions(len(tokens_b), attention_mask_b)
    toks_a = [tokens_a[p] for p in kept_a]
    toks_b = [tokens_b[p] for p in kept_b]

    # A dummy-prefix space on one side only: give the other side's first text token the
    # missing spaces, so that the byte counts agree from the start.
    first_a = _first_text_index(toks_a, frozenset(tokenizer_a.all_special_tokens))
    first_b = _first_text_index(toks_b, frozenset(tokenizer_b.all_special_tokens))
    spaces_a = _leading_space_count(toks_a, first_a)
    spaces_b = _leading_space_count(toks_b, first_b)
    if spaces_a < spaces_b and first_a < len(toks_a):
        toks_a[first_a] = SPACE * (spaces_b - spaces_a) + toks_a[first_a]
    elif spaces_b < spaces_a and first_b < len(toks_b):
        toks_b[first_b] = SPACE * (spaces_a - spaces_b) + toks_b[first_b]

    norm_a, norm_b = [""] * len(toks_a), [""] * len(toks_b)
    special_a, special_b = [True] * len(toks_a), [True] * len(toks_b)
    spans: list[tuple[int, int, int, int]] = []
    i = j = 0
    span_start_a = span_start_b = 0
    consumed_a = consumed_b = 0  # bytes since the last slot-key span
    while i < len(toks_a) and j < len(toks_b):
        key_a = _match_slot_key(toks_a, i, keys_a)
        key_b = _match_slot_key(toks_b, j, keys_b)
        skipped = False
        if key_a is not None and key_a.one_sided:
            i += 1
            skipped = True
        if key_b is not None and key_b.one_sided:
            j += 1
            skipped = True
        if skipped:
            continue
        if key_a is not None and key_b is not None:
            norm_a[i : i + len(key_a.tokens)] = key_a.normalized
            norm_b[j : j + len(key_b.tokens)] = key_b.normalized
            i += len(key_a.tokens)
            j += len(key_b.tokens)
            spans.append((span_start_a, i, span_start_b, j))
            span_start_a, span_start_b = i, j
            consumed_a = consumed_b = 0
            continue
        end_a = consumed_a + len(toks_a[i])
        end_b = consumed_b + len(toks_b[j])
        if end_a <= end_b:
            norm_a[i], special_a[i] = toks_a[i], False
            consumed_a = end_a
            i += 1
        if end_b <= end_a:
            norm_b[j], special_b[j] = toks_b[j], False
            consumed_b = end_b
            j += 1
        if end_a == end_b:
            spans.append((span_start_a, i, span_start_b, j))
            span_start_a, span_start_b = i, j

    if check:
        kept_spans = []
        for span in spans:
            text_a = "".join(norm_a[span[0] : span[1]])
            text_b = "".join(norm_b[span[2] : span[3]])
            if text_a == text_b:
                kept_spans.append(span)
            else:
                logging.warning("Alignment mismatch, span dropped: %r != %r", text_a, text_b)
        spans = kept_spans

    # Back from unmasked-only indices to the caller's indices.
    def expand(values: list, kept: np.ndarray, length: int, fill: Any) -> list:
        out = [fill] * length
        for value, position in zip(values, kept):
            out[position] = value
        return out

    ends_a = np.append(kept_a + 1, 0)  # ends_a[k - 1]: caller index after unmasked token k-1
    ends_b = np.append(kept_b + 1, 0)
    all_spans = [(int(ends_a[s[0] - 1]), int(ends_a[s[1] - 1]), int(ends_b[s[2] - 1]), int(ends_b[s[3] - 1])) for s in spans]
    return AlignmentIndices(
        all_spans,
        expand(norm_a, kept_a, len(tokens_a), ""),
        expand(norm_b, kept_b, len(tokens_b), ""),
        expand(special_a, kept_a, len(tokens_a), True),
        expand(special_b, kept_b, len(tokens_b), True),
    )


def _unmasked_positions(length: int, mask: Sequence[bool] | np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.arange(length)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != (length,):
        raise ValueError(f"Attention mask of shape {mask.shape} does not match {length} tokens")
    return np.flatnonzero(mask)


class BiasLookup:
    """Whether a (token a, token b) pair is unbiased under two bias matrices.

    A pair is unbiased when both biases are at most `threshold`; ids outside the
    matrices count as unbiased (as upstream). Stores only the pairs whose answer differs
    from that of an absent (zero) entry, as sorted int64 keys: picklable, and a batch of
    pairs is one `searchsorted`.
    """

    def __init__(self, bias1: Any, bias2: Any, threshold: float) -> None:
        from scipy import sparse

        bias1, bias2 = sparse.csr_matrix(bias1), sparse.csr_matrix(bias2)
        if bias1.shape != bias2.shape:
            raise ValueError(f"Bias matrices differ in shape: {bias1.shape} vs {bias2.shape}")
        self.shape = tuple(int(n) for n in bias1.shape)
        self.threshold = float(threshold)
        entries = [self._entries(m) for m in (bias1, bias2)]
        keys = np.union1d(entries[0][0], entries[1][0])
        values = []
        for entry_keys, entry_values in entries:  # absent entries are 0
            where = np.minimum(np.searchsorted(entry_keys, keys), max(len(entry_keys) - 1, 0))
            hit = (where < len(entry_keys)) & (entry_keys[where] == keys) if len(entry_keys) else np.zeros(len(keys), bool)
            values.append(np.where(hit, entry_values[where] if len(entry_keys) else 0.0, 0.0))
        unbiased = (values[0] <= self.threshold) & (values[1] <= self.threshold)
        self.absent_unbiased = 0.0 <= self.threshold
        self._exceptions = keys[unbiased != self.absent_unbiased]

    def _entries(self, matrix: Any) -> tuple[np.ndarray, np.ndarray]:
        """Sorted int64 keys (`row * columns + column`) and values of stored entries."""
        matrix = matrix.copy()
        matrix.sum_duplicates()
        coo = matrix.tocoo()
        keys = coo.row.astype(np.int64) * self.shape[1] + coo.col
        order = np.argsort(keys)
        return keys[order], np.asarray(coo.data, np.float64)[order]

    def __call__(self, ids_a: np.ndarray, ids_b: np.ndarray) -> np.ndarray:
        ids_a = np.asarray(ids_a, np.int64)
        ids_b = np.asarray(ids_b, np.int64)
        inside = (ids_a < self.shape[0]) & (ids_b < self.shape[1])
        keys = ids_a * self.shape[1] + ids_b
        where = np.searchsorted(self._exceptions, keys)
        found = where < len(self._exceptions)
        found[found] = self._exceptions[where[found]] == keys[found]
        return ~inside | (found != self.absent_unbiased)


def reference_chunk_ids(
    input_ids_a: np.ndarray,
    input_ids_b: np.ndarray,
    tokenizer_a: Any,
    tokenizer_b: Any,
    attention_mask_a: np.ndarray | None = None,
    attention_mask_b: np.ndarray | None = None,
    kinds: Iterable[str] = ("unconstrained", "space"),
    bias_lookup: BiasLookup | None = None,
    check: bool = True,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Chunk ids of each chunking from `get_alignment_indices`, one example at a time.

    The slow, straightforward path (the upstream's per-span loop written out); `Aligner`
    computes the same ids vectorized. Returns `{kind: (chunks_a, chunks_b)}`, int32
    arrays shaped like the inputs (`[B, L]`).
    """
    kinds = _check_kinds(kinds)
    if "unbiased" in kinds and bias_lookup is None:
        raise ValueError("The 'unbiased' chunking needs bias matrices (bias_lookup=None)")
    ids_a, ids_b = np.atleast_2d(input_ids_a), np.atleast_2d(input_ids_b)
    out = {k: (np.full(ids_a.shape, -1, np.int32), np.full(ids_b.shape, -1, np.int32)) for k in kinds}
    for row in range(ids_a.shape[0]):
        mask_a = None if attention_mask_a is None else np.atleast_2d(attention_mask_a)[row]
        mask_b = None if attention_mask_b is None else np.atleast_2d(attention_mask_b)[row]
        tokens_a = _tokens_or_placeholder(tokenizer_a, ids_a[row], mask_a)
        tokens_b = _tokens_or_placeholder(tokenizer_b, ids_b[row], mask_b)
        spans, norm_a, norm_b, special_a, special_b = get_alignment_indices(
            tokens_a, tokens_b, tokenizer_a, tokenizer_b, mask_a, mask_b, check=check
        )
        for kind in kinds:
            chunks_a, chunks_b = out[kind]
            chunk = 0
            for start_a, end_a, start_b, end_b in spans:
                for p in range(start_a, end_a):
                    if norm_a[p]:
                        chunks_a[row, p] = chunk
                for p in range(start_b, end_b):
                    if norm_b[p]:
                        chunks_b[row, p] = chunk
                after_special = special_a[end_a - 1] or special_b[end_b - 1]
                if kind == "unconstrained":
                    cut = True
                elif kind == "space":
                    cut = after_special or (
                        end_a < len(norm_a)
                        and norm_a[end_a].startswith(SPACE)
                        and end_b < len(norm_b)
                        and norm_b[end_b].startswith(SPACE)
                    )
                else:
                    cut = after_special or bool(
                        bias_lookup(np.array([ids_a[row, end_a - 1]]), np.array([ids_b[row, end_b - 1]]))[0]
                    )
                chunk += int(cut)
    return out


def _tokens_or_placeholder(tokenizer: Any, ids: np.ndarray, mask: np.ndarray | None) -> list[str]:
    """Token strings of `ids`; masked positions (which may hold any value) get ""."""
    if mask is None:
        return tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [tokenizer.convert_ids_to_tokens(int(i)) if m else "" for i, m in zip(ids, mask)]


# ------------------------------------------------------------------- dense helper


def chunk_ids_to_matrix(chunk_ids: np.ndarray, num_chunks: int) -> np.ndarray:
    """The upstream's dense form: `bool[B, L, num_chunks]`, true where token is in chunk.

    Upstream uses `num_chunks = min(L_a, L_b)`. Quadratic memory: for tests and
    comparisons only.
    """
    chunk_ids = np.asarray(chunk_ids)
    if chunk_ids.size and chunk_ids.max(initial=-1) >= num_chunks:
        raise ValueError(f"Chunk id {chunk_ids.max()} does not fit in {num_chunks} chunks")
    return chunk_ids[..., None] == np.arange(num_chunks)


# ------------------------------------------------------------------ vectorized


class Chunking(NamedTuple):
    """One chunking of a batch: ids per token (`-1` = no chunk) and chunks per row."""

    chunks_a: np.ndarray  # int32[B, La]
    chunks_b: np.ndarray  # int32[B, Lb]
    num_chunks: np.ndarray  # int32[B]


@dataclasses.dataclass
class _Vocab:
    """Per-id tables of one side, built once per tokenizer pair."""

    size: int
    lengths: np.ndarray  # int32[V]: bytes (= characters) of each id's string
    leading_spaces: np.ndarray  # int32[V]: leading `Ġ`s
    all_spaces: np.ndarray  # bool[V]: the string is only `Ġ`s
    special: np.ndarray  # bool[V]: the string is one of the tokenizer's special tokens
    symbols: np.ndarray  # int32[V]: index of the string among slot-key tokens, or -1
    symbol_of: dict[str, int]
    key_symbols: tuple[np.ndarray, ...]  # per slot key, the symbols of its tokens
    key_one_sided: np.ndarray  # bool[K]
    key_sizes: np.ndarray  # int64[K]
    key_normalized_lengths: np.ndarray  # int64[K]: length of each token's normalized string
    chars: np.ndarray  # uint32[sum(lengths)]: all strings' code points, concatenated
    char_offsets: np.ndarray  # int64[V + 1]

    @classmethod
    def build(cls, tokenizer: Any, keys: Sequence[SlotKey]) -> _Vocab:
        size = len(tokenizer)
        try:
            strings = list(tokenizer.convert_ids_to_tokens(range(size)))
        except (IndexError, KeyError):  # holes in the id range: those ids never occur
            strings = []
            for i in range(size):
                try:
                    strings.append(tokenizer.convert_ids_to_tokens(i))
                except (IndexError, KeyError):
                    strings.append("")
        lengths = np.fromiter((len(s) for s in strings), np.int32, size)
        stripped = np.fromiter((len(s.lstrip(SPACE)) for s in strings), np.int32, size)
        special_strings = frozenset(tokenizer.all_special_tokens)
        symbol_of: dict[str, int] = {}
        for key in keys:
            for token in key.tokens:
                symbol_of.setdefault(token, len(symbol_of))
        joined = "".join(strings)
        return cls(
            size=size,
            lengths=lengths,
            leading_spaces=lengths - stripped,
            all_spaces=(stripped == 0) & (lengths > 0),
            special=np.fromiter((s in special_strings for s in strings), bool, size),
            symbols=np.fromiter((symbol_of.get(s, -1) for s in strings), np.int32, size),
            symbol_of=symbol_of,
            key_symbols=tuple(np.array([symbol_of[t] for t in k.tokens], np.int32) for k in keys),
            key_one_sided=np.array([k.one_sided for k in keys], bool),
            key_sizes=np.array([len(k.tokens) for k in keys], np.int64),
            key_normalized_lengths=np.array([len(k.normalized[0]) if k.normalized else 0 for k in keys], np.int64),
            chars=np.frombuffer(joined.encode("utf-32-le"), np.uint32).copy(),
            char_offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
        )

    def string(self, token_id: int) -> str:
        return "".join(map(chr, self.chars[self.char_offsets[token_id] : self.char_offsets[token_id + 1]]))

    def kernel_tables(self) -> tuple[np.ndarray, ...]:
        """The tables of the compiled backend, in the order `_kernel_*` index them."""
        symbols = sorted(self.symbol_of, key=self.symbol_of.__getitem__)
        symbol_lengths = np.array([len(t) for t in symbols], np.int64)
        return (
            self.lengths.astype(np.int64),
            self.leading_spaces.astype(np.int64),
            self.all_spaces,
            self.special,
            self.symbols.astype(np.int64),
            self.chars.astype(np.int64),
            self.char_offsets,
            np.concatenate([k.astype(np.int64) for k in self.key_symbols] or [np.zeros(0, np.int64)]),
            np.concatenate([[0], np.cumsum(self.key_sizes)]).astype(np.int64),
            self.key_one_sided,
            self.key_normalized_lengths,
            np.array([ord(c) for t in symbols for c in t], np.int64),
            np.concatenate([[0], np.cumsum(symbol_lengths)]).astype(np.int64),
        )


@dataclasses.dataclass
class _Side:
    """One side of a batch after masking: the unmasked tokens of all rows, row-major."""

    flat: np.ndarray  # int64[n]: index into the [B * L] batch
    row: np.ndarray  # int64[n]
    ids: np.ndarray  # int64[n]
    row_start: np.ndarray  # int64[B]: first token of each row (index into the n tokens)
    row_end: np.ndarray  # int64[B]
    lengths: np.ndarray  # int64[n]: bytes, with prepended leading spaces
    pad: np.ndarray  # int64[n]: prepended leading spaces (0 almost everywhere)
    starts_with_space: np.ndarray  # bool[n]
    key: np.ndarray  # int64[n]: index of the slot key starting here, or -1
    one_sided: np.ndarray  # bool[n]: a one-sided slot key starts here
    cum: np.ndarray  # int64[n + 1]: bytes before each token (one-sided keys count 0)

    @property
    def n(self) -> int:
        return len(self.ids)


def _count_at_or_before(n: int, positions: np.ndarray) -> np.ndarray:
    """int64[n]: for each index i < n, how many of `positions` (each in [0, n]) are <= i."""
    return np.cumsum(np.bincount(positions, minlength=n + 1)[:n])


def _first_at_or_after(positions: np.ndarray, starts: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Per row, the first of the sorted `positions` at or after `starts`, capped at `limits`."""
    if not len(positions):
        return limits.copy()
    where = np.searchsorted(positions, starts)
    found = positions[np.minimum(where, len(positions) - 1)]
    return np.where(where < len(positions), np.minimum(found, limits), limits)


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, np.int64)
    np.cumsum(values, out=out[1:])
    return out


class Aligner:
    """Vectorized alignment of batches of a fixed tokenizer pair into chunk ids.

    Build once per tokenizer pair (per data worker; it pickles without the tokenizers),
    then call `chunk_ids` per example or per batch. Side `a` is the teacher, side `b` the
    student when bias matrices are given (`[len(tokenizer_a), len(tokenizer_b)]`).

    Args:
      tokenizer_a, tokenizer_b: `ByteifyTokenizer`s.
      bias_matrices: `(bias1, bias2)` scipy sparse matrices (see
        `tokenkit.tokenizer_info`); needed for the `unbiased` chunking.
      bias_threshold: pairs whose biases are both at most this are unbiased.
      check: drop spans whose bytes differ on the two sides (texts that differ), as
        `get_alignment_indices` does; the number dropped is logged.
      backend: `numpy` (vectorized over the batch), `numba` (a compiled loop per row,
        faster, above all per example), or `auto` (numba where installed). Both give
        the same ids.
    """

    def __init__(
        self,
        tokenizer_a: Any,
        tokenizer_b: Any,
        *,
        bias_matrices: tuple[Any, Any] | None = None,
        bias_threshold: float = 0.0,
        check: bool = True,
        backend: str = "auto",
    ) -> None:
        if backend == "auto":
            backend = BACKENDS[-1]
        if backend not in BACKENDS:
            raise ValueError(
                f"Unknown or unavailable backend {backend!r}; available here: {', '.join(BACKENDS)} "
                "('numba' needs the numba package)"
            )
        self.backend = backend
        self.name_a = repr(tokenizer_a)
        self.name_b = repr(tokenizer_b)
        self._a = _Vocab.build(tokenizer_a, slot_keys(tokenizer_a.family, tokenizer_b.family))
        self._b = _Vocab.build(tokenizer_b, slot_keys(tokenizer_b.family, tokenizer_a.family))
        self._tables = (self._a.kernel_tables(), self._b.kernel_tables()) if backend == "numba" else None
        self.bias_lookup = None if bias_matrices is None else BiasLookup(*bias_matrices, bias_threshold)
        self.check = check
        self.dropped_spans = 0  # spans dropped by `check` so far (texts that differ)

    def __repr__(self) -> str:
        return (
            f"Aligner({self.name_a}, {self.name_b}, unbiased={self.bias_lookup is not None}, "
            f"backend={self.backend})"
        )

    # -- public ----------------------------------------------------------------

    def chunk_ids(
        self,
        input_ids_a: np.ndarray,
        input_ids_b: np.ndarray,
        attention_mask_a: np.ndarray | None = None,
        attention_mask_b: np.ndarray | None = None,
        kinds: Iterable[str] = ("unconstrained", "space"),
    ) -> dict[str, Chunking]:
        """Chunk ids of each requested chunking.

        Args:
          input_ids_a, input_ids_b: `[B, La]`, `[B, Lb]` (or one example, `[La]`, `[Lb]`).
          attention_mask_a, attention_mask_b: same shapes; false tokens are left out.
          kinds: chunkings to compute, from `KINDS`.

        Returns:
          `{kind: Chunking(chunks_a, chunks_b, num_chunks)}`; a single example gives
          `[La]`, `[Lb]` and a scalar count.
        """
        kinds = _check_kinds(kinds)
        if "unbiased" in kinds and self.bias_lookup is None:
            raise ValueError("The 'unbiased' chunking needs bias_matrices; this Aligner has none")
        ids_a, ids_b = np.asarray(input_ids_a), np.asarray(input_ids_b)
        single = ids_a.ndim == 1
        if ids_a.ndim != ids_b.ndim or ids_a.ndim not in (1, 2):
            raise ValueError(f"input ids must both be [L] or both [B, L]; got {ids_a.shape} and {ids_b.shape}")
        if single:
            ids_a, ids_b = ids_a[None], ids_b[None]
        if ids_a.shape[0] != ids_b.shape[0]:
            raise ValueError(f"Batch sizes differ: {ids_a.shape[0]} vs {ids_b.shape[0]}")
        mask_a = self._mask(attention_mask_a, ids_a.shape, single, "a")
        mask_b = self._mask(attention_mask_b, ids_b.shape, single, "b")

        if self.backend == "numba":
            chunkings = self._compiled(ids_a, mask_a, ids_b, mask_b, kinds)
        else:
            side_a = self._prepare(self._a, ids_a, mask_a, "a")
            side_b = self._prepare(self._b, ids_b, mask_b, "b")
            self._normalize_leading_spaces(side_a, side_b)
            for side, vocab in ((side_a, self._a), (side_b, self._b)):
                self._match_keys(side, vocab)
            spans = self._spans(side_a, side_b)
            chunkings = {kind: self._chunking(kind, side_a, side_b, spans, ids_a.shape, ids_b.shape) for kind in kinds}

        out = {}
        for kind in kinds:
            chunking = chunkings[kind]
            if single:
                chunking = Chunking(chunking.chunks_a[0], chunking.chunks_b[0], chunking.num_chunks[0])
            out[kind] = chunking
        return out

    # -- preparation -------------------------------------------------------------

    @staticmethod
    def _mask(mask: np.ndarray | None, shape: tuple[int, ...], single: bool, side: str) -> np.ndarray:
        if mask is None:
            return np.ones(shape, bool)
        mask = np.asarray(mask).astype(bool)
        if single:
            mask = mask[None]
        if mask.shape != shape:
            raise ValueError(f"attention_mask_{side} has shape {mask.shape}, input_ids_{side} {shape}")
        return mask

    @staticmethod
    def _check_ids(vocab: _Vocab, flat: np.ndarray, token_ids: np.ndarray, length: int, name: str) -> None:
        """Unmasked ids must be ids of the vocabulary with a non-empty string."""
        bad = (token_ids < 0) | (token_ids >= vocab.size)
        bad[~bad] = vocab.lengths[token_ids[~bad]] == 0
        if bad.any():
            where = flat[np.argmax(bad)]
            raise ValueError(
                f"input_ids_{name}[{where // length}, {where % length}] = {token_ids[np.argmax(bad)]} "
                f"is not a token id of this tokenizer (vocabulary size {vocab.size}, ids with "
                "a non-empty string); mask padding positions out with the attention mask"
            )

    def _compiled(
        self, ids_a: np.ndarray, mask_a: np.ndarray, ids_b: np.ndarray, mask_b: np.ndarray, kinds: tuple[str, ...]
    ) -> dict[str, Chunking]:
        """All requested chunkings from the compiled per-row loop."""
        for vocab, ids, mask, name in ((self._a, ids_a, mask_a, "a"), (self._b, ids_b, mask_b, "b")):
            flat = np.flatnonzero(mask.reshape(-1))
            self._check_ids(vocab, flat, ids.reshape(-1)[flat].astype(np.int64), ids.shape[1], name)
        batch = ids_a.shape[0]
        out_a = np.full((len(KINDS),) + ids_a.shape, -1, np.int32)
        out_b = np.full((len(KINDS),) + ids_b.shape, -1, np.int32)
        counts = np.zeros((len(KINDS), batch), np.int32)
        lookup = self.bias_lookup
        dropped = _kernel_chunk_ids(
            np.ascontiguousarray(ids_a, np.int64), np.ascontiguousarray(mask_a),
            np.ascontiguousarray(ids_b, np.int64), np.ascontiguousarray(mask_b),
            self._tables[0], self._tables[1],
            lookup._exceptions if lookup else np.zeros(0, np.int64),
            lookup.shape[0] if lookup else 0,
            lookup.shape[1] if lookup else 0,
            lookup.absent_unbiased if lookup else True,
            np.array([kind in kinds for kind in KINDS]),
            self.check,
            out_a, out_b, counts,
        )
        self._count_dropped(int(dropped))
        return {kind: Chunking(out_a[k], out_b[k], counts[k]) for k, kind in enumerate(KINDS) if kind in kinds}

    def _count_dropped(self, dropped: int) -> None:
        if dropped:
            self.dropped_spans += dropped
            logging.log_every_n_seconds(
                logging.WARNING,
                "Aligner: %d spans dropped so far whose two sides spell different bytes "
                "(the two token sequences are not of one text)",
                60,
                self.dropped_spans,
            )

    @classmethod
    def _prepare(cls, vocab: _Vocab, ids: np.ndarray, mask: np.ndarray, name: str) -> _Side:
        batch, length = ids.shape
        flat = np.flatnonzero(mask.reshape(-1))
        token_ids = ids.reshape(-1)[flat].astype(np.int64)
        cls._check_ids(vocab, flat, token_ids, length, name)
        row = flat // length
        bounds = np.searchsorted(row, np.arange(batch + 1))
        lengths = vocab.lengths[token_ids].astype(np.int64)
        return _Side(
            flat=flat,
            row=row,
            ids=token_ids,
            row_start=bounds[:-1],
            row_end=bounds[1:],
            lengths=lengths,
            pad=np.zeros(len(flat), np.int64),
            starts_with_space=vocab.leading_spaces[token_ids] > 0,
            key=np.full(len(flat), -1, np.int64),
            one_sided=np.zeros(len(flat), bool),
            cum=np.zeros(len(flat) + 1, np.int64),
        )

    def _normalize_leading_spaces(self, a: _Side, b: _Side) -> None:
        """Prepends missing leading spaces to the first text token (see the module doc)."""
        counts, firsts = [], []
        for side, vocab in ((a, self._a), (b, self._b)):
            # First token after the leading special tokens, per row (row end if none).
            first = _first_at_or_after(np.flatnonzero(~vocab.special[side.ids]), side.row_start, side.row_end)
            # Spaces run over whole-space tokens into the first other token.
            stop = _first_at_or_after(np.flatnonzero(~vocab.all_spaces[side.ids]), first, side.row_end)
            before = _exclusive_cumsum(side.lengths)
            tail = np.zeros_like(stop)
            inside = stop < side.row_end
            tail[inside] = vocab.leading_spaces[side.ids[stop[inside]]]
            counts.append(before[stop] - before[first] + tail)
            firsts.append(first)
        for side, mine, theirs, first in ((a, counts[0], counts[1], firsts[0]), (b, counts[1], counts[0], firsts[1])):
            for r in np.flatnonzero((mine < theirs) & (first < side.row_end)):
                p, pad = first[r], theirs[r] - mine[r]
                side.pad[p] = pad
                side.lengths[p] += pad
                side.starts_with_space[p] = True

    @staticmethod
    def _match_keys(side: _Side, vocab: _Vocab) -> None:
        """Which slot key (if any) starts at each token; then the byte offsets."""
        symbols = vocab.symbols[side.ids]
        for p in np.flatnonzero(side.pad):
            symbols[p] = vocab.symbol_of.get(SPACE * side.pad[p] + vocab.string(side.ids[p]), -1)
        n = side.n
        candidates = np.flatnonzero(symbols >= 0)
        for k, key in enumerate(vocab.key_symbols):
            at = candidates[side.key[candidates] < 0]
            ok = symbols[at] == key[0]
            for offset in range(1, len(key)):
                nxt = np.minimum(at + offset, n - 1)
                ok &= (at + offset < n) & (side.row[nxt] == side.row[at]) & (symbols[nxt] == key[offset])
            side.key[at[ok]] = k
        has_key = side.key >= 0
        side.one_sided[has_key] = vocab.key_one_sided[side.key[has_key]]
        side.cum = _exclusive_cumsum(np.where(side.one_sided, 0, side.lengths))

    # -- spans -------------------------------------------------------------------

    def _joints(self, a: _Side, b: _Side) -> tuple[np.ndarray, np.ndarray]:
        """Where two slot keys meet: positions `(pos_a, pos_b)`, sorted.

        The byte walk visits a pair of tokens exactly when their byte intervals overlap
        (counted from the last slot-key span). So the next meeting in a row is its first
        key start on side a whose interval overlaps a key start on side b. Rows move
        forward one meeting per round; rounds are vectorized over the batch.
        """
        cand_a = np.flatnonzero((a.key >= 0) & ~a.one_sided)
        cand_b = np.flatnonzero((b.key >= 0) & ~b.one_sided)
        if not len(cand_a) or not len(cand_b):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        base_a = a.cum[a.row_start]  # per row: bytes before the row
        base_b = b.cum[b.row_start]
        # Side-b key starts as (row, end byte) keys, in the row's own byte frame.
        row_b = b.row[cand_b]
        start_b = b.cum[cand_b] - base_b[row_b]
        end_b = b.cum[cand_b + 1] - base_b[row_b]
        width = int(max(a.cum[-1], b.cum[-1])) + 2
        sort_key_b = row_b * width + end_b
        seg_a, seg_b = a.row_start.copy(), b.row_start.copy()  # current segment starts
        active = (a.row_start < a.row_end) & (b.row_start < b.row_end)
        found_a, found_b = [], []
        row_a = a.row[cand_a]
        while True:
            eligible = active[row_a] & (cand_a >= seg_a[row_a])
            if not eligible.any():
                break
            c, r = cand_a[eligible], row_a[eligible]
            # Side-a interval mapped into side b's frame: both segments start at byte 0.
            shift = (b.cum[seg_b[r]] - base_b[r]) - (a.cum[seg_a[r]] - base_a[r])
            lo = a.cum[c] - base_a[r] + shift
            hi = a.cum[c + 1] - base_a[r] + shift
            k = np.searchsorted(sort_key_b, r * width + np.clip(lo, 0, width - 1), side="right")
            kc = np.minimum(k, len(cand_b) - 1)
            hit = (k < len(cand_b)) & (row_b[kc] == r) & (start_b[kc] < hi)
            if not hit.any():
                break
            rows, first = np.unique(r[hit], return_index=True)
            pos_a, pos_b = c[hit][first], cand_b[kc[hit][first]]
            found_a.append(pos_a)
            found_b.append(pos_b)
            active[:] = False
            seg_a[rows] = pos_a + self._a.key_sizes[a.key[pos_a]]
            seg_b[rows] = pos_b + self._b.key_sizes[b.key[pos_b]]
            active[rows] = (seg_a[rows] < a.row_end[rows]) & (seg_b[rows] < b.row_end[rows])
        if not found_a:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pos_a, pos_b = np.concatenate(found_a), np.concatenate(found_b)
        order = np.argsort(pos_a, kind="stable")
        return pos_a[order], pos_b[order]

    def _spans(self, a: _Side, b: _Side) -> dict[str, np.ndarray]:
        joint_a, joint_b = self._joints(a, b)
        joint_end_a = joint_a + self._a.key_sizes[a.key[joint_a]]
        joint_end_b = joint_b + self._b.key_sizes[b.key[joint_b]]
        joint_row = a.row[joint_a]
        batch = len(a.row_start)
        joints_before_row = np.searchsorted(joint_row, np.arange(batch))
        per_row = np.bincount(joint_row, minlength=batch)
        segments_per_row = int(per_row.max(initial=0)) + 1

        member_a = self._members(a.n, joint_a, joint_end_a)
        member_b = self._members(b.n, joint_b, joint_end_b)

        # Segment (between slot-key spans) of every token, and the bytes before it in
        # its segment; then common ends of regular tokens are the span boundaries.
        width = int(max(a.cum[-1], b.cum[-1])) + 2
        keys, regular = [], []
        for side, joint_end, member in ((a, joint_end_a, member_a), (b, joint_end_b, member_b)):
            reg = np.flatnonzero(~side.one_sided & ~member)
            row = side.row[reg]
            ended = _count_at_or_before(side.n, joint_end)[reg]  # slot-key spans before
            local = ended - joints_before_row[row]  # segment number within the row
            seg_start = side.row_start[row]
            if len(joint_end):
                seg_start = np.where(local > 0, joint_end[np.maximum(ended - 1, 0)], seg_start)
            value = side.cum[reg + 1] - side.cum[seg_start]
            keys.append((row * segments_per_row + local) * width + value)
            regular.append(reg)
        _, ia, ib = np.intersect1d(keys[0], keys[1], assume_unique=True, return_indices=True)
        bound_a, bound_b = regular[0][ia], regular[1][ib]

        end_a = np.concatenate([bound_a + 1, joint_end_a])
        end_b = np.concatenate([bound_b + 1, joint_end_b])
        is_joint = np.concatenate([np.zeros(len(bound_a), bool), np.ones(len(joint_a), bool)])
        order = np.argsort(end_a, kind="stable")
        end_a, end_b, is_joint = end_a[order], end_b[order], is_joint[order]
        span_row = a.row[end_a - 1]
        span_a = self._span_of(a, end_a, span_row)
        span_b = self._span_of(b, end_b, span_row)

        bad = np.zeros(len(end_a), bool)
        if self.check and len(end_a):
            bad = self._mismatch(a, b, span_a, span_b, len(end_a), (joint_a, joint_b), (member_a, member_b))
            self._count_dropped(int(bad.sum()))
        return dict(
            end_a=end_a,
            end_b=end_b,
            is_joint=is_joint,
            row=span_row,
            bad=bad,
            member_a=member_a,
            member_b=member_b,
            span_a=span_a,
            span_b=span_b,
        )

    @staticmethod
    def _members(n: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """bool[n]: inside one of the half-open ranges [starts, ends)."""
        return (_count_at_or_before(n, starts) - _count_at_or_before(n, ends)) > 0

    @staticmethod
    def _span_of(side: _Side, ends: np.ndarray, span_row: np.ndarray) -> np.ndarray:
        """Index of the span each token is in, or -1 (after its row's last span)."""
        span = _count_at_or_before(side.n, ends)  # spans ending at or before the token
        inside = span < len(ends)
        inside[inside] = span_row[span[inside]] == side.row[inside]
        return np.where(inside, span, -1)

    def _mismatch(
        self,
        a: _Side,
        b: _Side,
        span_a: np.ndarray,
        span_b: np.ndarray,
        num_spans: int,
        joints: tuple[np.ndarray, np.ndarray],
        members: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """bool[spans]: spans whose two sides' normalized strings differ.

        As in `get_alignment_indices`: a text token contributes its characters, a
        slot-key token `"S" * n`, a one-sided token nothing. Spans of unequal length
        differ; the others' characters, concatenated in span order, line up position by
        position on the two sides.
        """
        lengths, selected = [], []
        for side, vocab, span, joint, member in (
            (a, self._a, span_a, joints[0], members[0]),
            (b, self._b, span_b, joints[1], members[1]),
        ):
            normalized = np.where(side.one_sided, 0, side.lengths)
            if len(joint):
                owner = joint[_count_at_or_before(side.n, joint)[member] - 1]
                normalized[member] = vocab.key_normalized_lengths[side.key[owner]]
            sel = np.flatnonzero((span >= 0) & (normalized > 0))
            lengths.append(np.bincount(span[sel], weights=normalized[sel], minlength=num_spans))
            selected.append((sel, normalized[sel]))
        bad = lengths[0] != lengths[1]
        streams, owners = [], []
        for side, vocab, span, member, (sel, normalized) in (
            (a, self._a, span_a, members[0], selected[0]),
            (b, self._b, span_b, members[1], selected[1]),
        ):
            keep = ~bad[span[sel]]
            sel, normalized = sel[keep], normalized[keep]
            starts = _exclusive_cumsum(normalized)
            source = vocab.char_offsets[side.ids[sel]] - side.pad[sel]
            positions = np.repeat(source - starts[:-1], normalized) + np.arange(starts[-1])
            stream = vocab.chars[np.clip(positions, 0, max(len(vocab.chars) - 1, 0))]
            stream[np.repeat(member[sel], normalized)] = ord(_SLOT_NORMALIZED_CHAR)
            for k in np.flatnonzero(side.pad[sel]):
                stream[starts[k] : starts[k] + side.pad[sel[k]]] = ord(SPACE)
            streams.append(stream)
            owners.append((span[sel], starts))
        wrong = np.flatnonzero(streams[0] != streams[1])
        if len(wrong):
            owner_span, starts = owners[0]
            bad[owner_span[np.searchsorted(starts, wrong, side="right") - 1]] = True
        return bad

    # -- chunkings ----------------------------------------------------------------

    def _chunking(
        self,
        kind: str,
        a: _Side,
        b: _Side,
        spans: Mapping[str, np.ndarray],
        shape_a: tuple[int, int],
        shape_b: tuple[int, int],
    ) -> Chunking:
        end_a, end_b, is_joint, span_row = spans["end_a"], spans["end_b"], spans["is_joint"], spans["row"]
        keep = ~spans["bad"]
        if kind == "unconstrained":
            cut = np.ones(len(end_a), bool)
        elif kind == "space":
            cut = is_joint | (
                self._next_starts_with_space(a, end_a, span_row, spans["member_a"])
                & self._next_starts_with_space(b, end_b, span_row, spans["member_b"])
            )
        else:
            cut = is_joint | self.bias_lookup(a.ids[end_a - 1], b.ids[end_b - 1])
        # Chunk of a kept span: kept cuts before it in its row.
        counted = (cut & keep).astype(np.int64)
        before = _exclusive_cumsum(counted)[:-1]
        first_of_row = np.searchsorted(span_row, span_row)
        chunk = before - before[first_of_row]
        num_chunks = np.zeros(shape_a[0], np.int32)
        np.maximum.at(num_chunks, span_row[keep], (chunk[keep] + 1).astype(np.int32))

        out = []
        for side, span, member, shape in (
            (a, spans["span_a"], spans["member_a"], shape_a),
            (b, spans["span_b"], spans["member_b"], shape_b),
        ):
            inside = span >= 0
            inside[inside] = keep[span[inside]]
            inside &= ~side.one_sided | member
            ids = np.full(shape[0] * shape[1], -1, np.int32)
            ids[side.flat[inside]] = chunk[span[inside]]
            out.append(ids.reshape(shape))
        return Chunking(out[0], out[1], num_chunks)

    @staticmethod
    def _next_starts_with_space(side: _Side, ends: np.ndarray, span_row: np.ndarray, member: np.ndarray) -> np.ndarray:
        """bool[spans]: the token right after the span is a text token starting with `Ġ`.

        A masked token there (or none) counts as not starting with a space.
        """
        nxt = np.minimum(ends, side.n - 1)
        ok = (ends < side.n) & (side.row[nxt] == span_row)
        ok &= side.flat[nxt] == side.flat[ends - 1] + 1
        return ok & side.starts_with_space[nxt] & ~side.one_sided[nxt] & ~member[nxt]


# ------------------------------------------------------------- compiled backend
#
# The same alignment as `get_alignment_indices` + `reference_chunk_ids`, written as a loop
# over integer tables so that numba compiles it: one pass per row, no per-call numpy
# overhead. `Aligner(backend="numba")` uses it; the numpy backend stays the fallback and
# the tests hold both to the reference loop.

_SPACE_CODE = ord(SPACE)
_SLOT_CODE = ord(_SLOT_NORMALIZED_CHAR)


def _kernel_key_at(symbols, i, key_tokens, key_starts):
    """Index of the first slot key whose token symbols start at `i`, or -1."""
    if symbols[i] < 0:
        return -1
    for k in range(len(key_starts) - 1):
        size = key_starts[k + 1] - key_starts[k]
        if i + size > len(symbols):
            continue
        matched = True
        for t in range(size):
            if symbols[i + t] != key_tokens[key_starts[k] + t]:
                matched = False
                break
        if matched:
            return k
    return -1


def _kernel_symbol_of_padded(token, pad, chars, offsets, symbol_chars, symbol_offsets):
    """Symbol of the string `"Ġ" * pad + string(token)`, or -1."""
    length = pad + offsets[token + 1] - offsets[token]
    for s in range(len(symbol_offsets) - 1):
        if symbol_offsets[s + 1] - symbol_offsets[s] != length:
            continue
        matched = True
        for c in range(length):
            char = _SPACE_CODE if c < pad else chars[offsets[token] + c - pad]
            if char != symbol_chars[symbol_offsets[s] + c]:
                matched = False
                break
        if matched:
            return s
    return -1


def _kernel_prepare(ids, mask, tables):
    """Unmasked positions and ids of one row, their byte lengths and slot keys, after
    the leading-space normalization is decided (pad filled in by the caller)."""
    lengths_t, leading_t, all_spaces_t, special_t, symbols_t = tables[0], tables[1], tables[2], tables[3], tables[4]
    n = 0
    for p in range(len(ids)):
        if mask[p]:
            n += 1
    positions = np.empty(n, np.int64)
    tokens = np.empty(n, np.int64)
    k = 0
    for p in range(len(ids)):
        if mask[p]:
            positions[k] = p
            tokens[k] = ids[p]
            k += 1
    first = 0
    while first < n and special_t[tokens[first]]:
        first += 1
    spaces = 0
    i = first
    while i < n:
        token = tokens[i]
        if all_spaces_t[token]:
            spaces += lengths_t[token]
            i += 1
        else:
            spaces += leading_t[token]
            break
    lengths = np.empty(n, np.int64)
    symbols = np.empty(n, np.int64)
    for i in range(n):
        lengths[i] = lengths_t[tokens[i]]
        symbols[i] = symbols_t[tokens[i]]
    return positions, tokens, lengths, symbols, first, spaces


def _kernel_normalized_stream(tokens, kinds, pads, lengths, slot_lengths, chars, offsets):
    """A row's normalized strings, concatenated, and where each token's starts.

    Token kinds: 0 empty, 1 text (its characters after `pads[i]` spaces), 2 slot token
    (`"S" * slot_lengths[i]`).
    """
    n = len(tokens)
    starts = np.zeros(n + 1, np.int64)
    for i in range(n):
        size = lengths[i] if kinds[i] == 1 else (slot_lengths[i] if kinds[i] == 2 else 0)
        starts[i + 1] = starts[i] + size
    stream = np.empty(starts[n], np.int64)
    for i in range(n):
        at = starts[i]
        if kinds[i] == 2:
            for c in range(slot_lengths[i]):
                stream[at + c] = _SLOT_CODE
        elif kinds[i] == 1:
            for c in range(pads[i]):
                stream[at + c] = _SPACE_CODE
            source = offsets[tokens[i]]
            for c in range(lengths[i] - pads[i]):
                stream[at + pads[i] + c] = chars[source + c]
    return stream, starts


def _kernel_unbiased(token_a, token_b, exceptions, rows, cols, absent_unbiased):
    if token_a >= rows or token_b >= cols:
        return True
    key = token_a * cols + token_b
    where = np.searchsorted(exceptions, key)
    found = where < len(exceptions) and exceptions[where] == key
    return found != absent_unbiased


def _kernel_chunk_ids(ids_a, mask_a, ids_b, mask_b, tables_a, tables_b, exceptions, rows, cols,
                      absent_unbiased, want, check, out_a, out_b, counts):
    """Fills `out_a[kind, row]`, `out_b[kind, row]` (pre-filled with -1) and
    `counts[kind, row]` for the kinds with `want[kind]`; returns the spans dropped."""
    dropped = 0
    for row in range(ids_a.shape[0]):
        positions_a, tokens_a, lengths_a, symbols_a, first_a, spaces_a = _kernel_prepare(ids_a[row], mask_a[row], tables_a)
        positions_b, tokens_b, lengths_b, symbols_b, first_b, spaces_b = _kernel_prepare(ids_b[row], mask_b[row], tables_b)
        n_a, n_b = len(tokens_a), len(tokens_b)
        pads_a = np.zeros(n_a, np.int64)
        pads_b = np.zeros(n_b, np.int64)
        if spaces_a < spaces_b and first_a < n_a:
            pads_a[first_a] = spaces_b - spaces_a
            lengths_a[first_a] += pads_a[first_a]
            symbols_a[first_a] = _kernel_symbol_of_padded(
                tokens_a[first_a], pads_a[first_a], tables_a[5], tables_a[6], tables_a[11], tables_a[12]
            )
        elif spaces_b < spaces_a and first_b < n_b:
            pads_b[first_b] = spaces_a - spaces_b
            lengths_b[first_b] += pads_b[first_b]
            symbols_b[first_b] = _kernel_symbol_of_padded(
                tokens_b[first_b], pads_b[first_b], tables_b[5], tables_b[6], tables_b[11], tables_b[12]
            )
        keys_a = np.empty(n_a, np.int64)
        for i in range(n_a):
            keys_a[i] = _kernel_key_at(symbols_a, i, tables_a[7], tables_a[8])
        keys_b = np.empty(n_b, np.int64)
        for j in range(n_b):
            keys_b[j] = _kernel_key_at(symbols_b, j, tables_b[7], tables_b[8])

        # The walk of `get_alignment_indices`. kinds: 0 empty, 1 text, 2 slot token.
        kinds_a = np.zeros(n_a, np.int8)
        kinds_b = np.zeros(n_b, np.int8)
        slots_a = np.zeros(n_a, np.int64)
        slots_b = np.zeros(n_b, np.int64)
        most = min(n_a, n_b) + 1
        ends_a = np.empty(most, np.int64)
        ends_b = np.empty(most, np.int64)
        is_slot = np.empty(most, np.bool_)
        spans = 0
        i = j = 0
        consumed_a = consumed_b = 0
        while i < n_a and j < n_b:
            key_a, key_b = keys_a[i], keys_b[j]
            skipped = False
            if key_a >= 0 and tables_a[9][key_a]:
                i += 1
                skipped = True
            if key_b >= 0 and tables_b[9][key_b]:
                j += 1
                skipped = True
            if skipped:
                continue
            if key_a >= 0 and key_b >= 0:
                for t in range(i, i + tables_a[8][key_a + 1] - tables_a[8][key_a]):
                    kinds_a[t] = 2
                    slots_a[t] = tables_a[10][key_a]
                for t in range(j, j + tables_b[8][key_b + 1] - tables_b[8][key_b]):
                    kinds_b[t] = 2
                    slots_b[t] = tables_b[10][key_b]
                i += tables_a[8][key_a + 1] - tables_a[8][key_a]
                j += tables_b[8][key_b + 1] - tables_b[8][key_b]
                ends_a[spans], ends_b[spans], is_slot[spans] = i, j, True
                spans += 1
                consumed_a = consumed_b = 0
                continue
            end_a = consumed_a + lengths_a[i]
            end_b = consumed_b + lengths_b[j]
            if end_a <= end_b:
                kinds_a[i] = 1
                consumed_a = end_a
                i += 1
            if end_b <= end_a:
                kinds_b[j] = 1
                consumed_b = end_b
                j += 1
            if end_a == end_b:
                ends_a[spans], ends_b[spans], is_slot[spans] = i, j, False
                spans += 1

        keep = np.ones(spans, np.bool_)
        if check:  # the upstream's check: both spans' normalized strings are equal
            stream_a, at_a = _kernel_normalized_stream(tokens_a, kinds_a, pads_a, lengths_a, slots_a, tables_a[5], tables_a[6])
            stream_b, at_b = _kernel_normalized_stream(tokens_b, kinds_b, pads_b, lengths_b, slots_b, tables_b[5], tables_b[6])
            for s in range(spans):
                begin_a = at_a[ends_a[s - 1]] if s > 0 else 0
                begin_b = at_b[ends_b[s - 1]] if s > 0 else 0
                size = at_a[ends_a[s]] - begin_a
                equal = size == at_b[ends_b[s]] - begin_b
                c = 0
                while equal and c < size:
                    equal = stream_a[begin_a + c] == stream_b[begin_b + c]
                    c += 1
                if not equal:
                    keep[s] = False
                    dropped += 1

        for kind in range(3):
            if not want[kind]:
                continue
            chunk = 0
            last = -1
            for s in range(spans):
                if not keep[s]:
                    continue
                start_a = ends_a[s - 1] if s > 0 else 0
                start_b = ends_b[s - 1] if s > 0 else 0
                for t in range(start_a, ends_a[s]):
                    if kinds_a[t] != 0:
                        out_a[kind, row, positions_a[t]] = chunk
                for t in range(start_b, ends_b[s]):
                    if kinds_b[t] != 0:
                        out_b[kind, row, positions_b[t]] = chunk
                last = chunk
                if kind == 0 or is_slot[s]:
                    cut = True
                elif kind == 1:
                    e_a, e_b = ends_a[s], ends_b[s]
                    space_a = (
                        e_a < n_a and positions_a[e_a] == positions_a[e_a - 1] + 1 and kinds_a[e_a] == 1
                        and (pads_a[e_a] > 0 or tables_a[1][tokens_a[e_a]] > 0)
                    )
                    space_b = (
                        e_b < n_b and positions_b[e_b] == positions_b[e_b - 1] + 1 and kinds_b[e_b] == 1
                        and (pads_b[e_b] > 0 or tables_b[1][tokens_b[e_b]] > 0)
                    )
                    cut = space_a and space_b
                else:
                    cut = _kernel_unbiased(
                        tokens_a[ends_a[s] - 1], tokens_b[ends_b[s] - 1], exceptions, rows, cols, absent_unbiased
                    )
                if cut:
                    chunk += 1
            counts[kind, row] = last + 1
    return dropped


try:  # numba is optional: without it, `Aligner` uses the numpy backend.
    import numba as _numba
except ImportError:  # pragma: no cover - depends on the installation
    _numba = None

BACKENDS: tuple[str, ...] = ("numpy",) + (("numba",) if _numba is not None else ())
"""Backends available in this installation (`Aligner(backend=...)`)."""

if _numba is not None:
    _jit = _numba.njit(cache=True)
    _kernel_key_at = _jit(_kernel_key_at)
    _kernel_symbol_of_padded = _jit(_kernel_symbol_of_padded)
    _kernel_prepare = _jit(_kernel_prepare)
    _kernel_normalized_stream = _jit(_kernel_normalized_stream)
    _kernel_unbiased = _jit(_kernel_unbiased)
    _kernel_chunk_ids = _jit(_kernel_chunk_ids)
