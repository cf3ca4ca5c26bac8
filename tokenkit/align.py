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

One algorithm, written twice:

- `get_alignment_indices` (one example, token strings, a per-token Python loop) and
  `reference_chunk_ids` on top of it: the readable reference the tests hold the fast
  path to;
- `Aligner`: built once per tokenizer pair (per-id `VocabTables` of each side), then the
  same walk over integer ids, compiled by numba, one pass per row and all requested
  chunkings at once. Memory is linear in the sequence length.

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
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

try:
    import numba
except ImportError as error:  # a hard dependency (pyproject.toml); say so, not just "No module"
    raise ImportError(
        f"tokenkit.align needs numba, which compiles the alignment kernel ({error}); "
        "install it with `pip install numba` (tokenkit's dependencies include it)"
    ) from error

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

    A token run filling several slots (Llama 3's eos and eot are both `<|eot_id|>`) is
    one key, with the value of its last slot. Keys are tried longest first (then in slot
    order): where one key's run starts another's (SmolLM2's eos `<|im_end|>` and end of
    turn `<|im_end|>Ċ`), the shorter key would otherwise match inside the longer run,
    and the two sides' slot runs (each family's end of turn) would no longer line up.
    """
    keys: dict[tuple[str, ...], tuple[str, ...] | None] = {}
    other_slots = other.replacements
    for marker, tokens in family.replacements.items():
        if tokens is None:
            continue
        theirs = other_slots[marker]
        tokens = tuple(tokens)
        keys[tokens] = None if theirs is None else (_SLOT_NORMALIZED_CHAR * len(theirs),) * len(tokens)
    ordered = sorted(keys.items(), key=lambda item: -len(item[0]))  # stable: slot order among equals
    return tuple(SlotKey(tokens, normalized) for tokens, normalized in ordered)


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


class BiasTable(NamedTuple):
    """A `BiasLookup` as the compiled kernel reads it.

    A pair `(i, j)` outside `rows x cols` is unbiased; inside, it is unbiased exactly when
    `absent_unbiased` differs from whether `i * cols + j` is in `exceptions`.
    """

    exceptions: np.ndarray  # int64[E], sorted: pairs whose answer is not that of a zero entry
    row_starts: np.ndarray  # int64[rows + 1]: where the exceptions of each row `i` start
    rows: int
    cols: int
    absent_unbiased: bool  # the answer for a pair with no stored entry (bias 0)


class BiasLookup:
    """Whether a (token a, token b) pair is unbiased under two bias matrices.

    A pair is unbiased when both biases are at most `threshold`; ids outside the
    matrices count as unbiased (as upstream). Stores only the pairs whose answer differs
    from that of an absent (zero) entry, as sorted int64 keys (`table`): picklable, and a
    batch of pairs is one `searchsorted`.
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
        absent_unbiased = bool(0.0 <= self.threshold)
        exceptions = np.ascontiguousarray(keys[unbiased != absent_unbiased], np.int64)
        row_starts = np.searchsorted(exceptions, np.arange(self.shape[0] + 1, dtype=np.int64) * self.shape[1])
        self.table = BiasTable(exceptions, row_starts.astype(np.int64), self.shape[0], self.shape[1], absent_unbiased)

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
        table = self.table
        inside = (ids_a < table.rows) & (ids_b < table.cols)
        keys = ids_a * table.cols + ids_b
        where = np.searchsorted(table.exceptions, keys)
        found = where < len(table.exceptions)
        found[found] = table.exceptions[where[found]] == keys[found]
        return ~inside | (found != table.absent_unbiased)



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
    computes the same ids compiled. Returns `{kind: (chunks_a, chunks_b)}`, int32
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


# ------------------------------------------------------------------ per-id tables


class VocabTables(NamedTuple):
    """Per-id tables of one side of a tokenizer pair, as the compiled kernel reads them.

    Numba sees a tuple of arrays whose fields it reads by name. A *slot token* is a
    string that occurs in one of this side's slot keys; slot tokens are numbered in
    order of first occurrence and the key tables refer to them by number. Build with
    `VocabTables.build`; it pickles as plain arrays.
    """

    byte_lengths: np.ndarray  # int64[V]: bytes (= characters) of each id's string; 0: no string
    leading_spaces: np.ndarray  # int64[V]: leading `Ġ`s of each id's string
    only_spaces: np.ndarray  # bool[V]: the string is one or more `Ġ`s and nothing else
    special: np.ndarray  # bool[V]: the string is one of the tokenizer's special tokens
    slot_token: np.ndarray  # int64[V]: the slot-token number of each id's string, or -1
    chars: np.ndarray  # int32[sum(byte_lengths)]: code points of all id strings, concatenated
    char_offsets: np.ndarray  # int64[V + 1]: where each id's string starts in `chars`
    slot_token_chars: np.ndarray  # int32[...]: code points of the slot-token strings, concatenated
    slot_token_offsets: np.ndarray  # int64[S + 1]: where each slot token starts in `slot_token_chars`
    key_tokens: np.ndarray  # int64[...]: slot-token numbers of each key's tokens, keys concatenated
    key_offsets: np.ndarray  # int64[K + 1]: where each key starts in `key_tokens` (sizes: differences)
    key_one_sided: np.ndarray  # bool[K]: the other family lacks the key's slot
    key_normalized_length: np.ndarray  # int64[K]: characters of the normalized string of each key token

    @classmethod
    def build(cls, tokenizer: Any, keys: Sequence[SlotKey]) -> VocabTables:
        """Tables of `tokenizer` with its slot keys `keys` (from `slot_keys`)."""
        strings = _id_strings(tokenizer)
        size = len(strings)
        lengths = np.fromiter((len(s) for s in strings), np.int64, size)
        stripped = np.fromiter((len(s.lstrip(SPACE)) for s in strings), np.int64, size)
        special = frozenset(tokenizer.all_special_tokens)
        number: dict[str, int] = {}
        for key in keys:
            for token in key.tokens:
                number.setdefault(token, len(number))
        slot_strings = list(number)  # in number order
        return cls(
            byte_lengths=lengths,
            leading_spaces=lengths - stripped,
            only_spaces=(stripped == 0) & (lengths > 0),
            special=np.fromiter((s in special for s in strings), bool, size),
            slot_token=np.fromiter((number.get(s, -1) for s in strings), np.int64, size),
            chars=_code_points(strings),
            char_offsets=_offsets(lengths),
            slot_token_chars=_code_points(slot_strings),
            slot_token_offsets=_offsets([len(s) for s in slot_strings]),
            key_tokens=np.array([number[t] for key in keys for t in key.tokens], np.int64),
            key_offsets=_offsets([len(key.tokens) for key in keys]),
            key_one_sided=np.array([key.one_sided for key in keys], bool),
            key_normalized_length=np.array([len(key.normalized[0]) if key.normalized else 0 for key in keys], np.int64),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.byte_lengths)


def _id_strings(tokenizer: Any) -> list[str]:
    """The string of every id below `len(tokenizer)`; "" for holes in the id range."""
    size = len(tokenizer)
    try:
        return list(tokenizer.convert_ids_to_tokens(range(size)))
    except (IndexError, KeyError):  # holes in the id range: those ids never occur
        strings = []
        for i in range(size):
            try:
                strings.append(tokenizer.convert_ids_to_tokens(i))
            except (IndexError, KeyError):
                strings.append("")
        return strings


def _code_points(strings: Sequence[str]) -> np.ndarray:
    return np.frombuffer("".join(strings).encode("utf-32-le"), np.int32).copy()


def _offsets(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """int64[n + 1]: 0 and the running sums of `lengths`."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64))]).astype(np.int64)


# ------------------------------------------------------------------ compiled kernel
#
# The walk of `get_alignment_indices` and the chunk loop of `reference_chunk_ids`, over
# integer ids and `VocabTables` instead of strings, compiled by numba: one pass per row.
# Compiled once per process on first use and cached on disk next to this module, so later
# processes (Grain workers) load it instead of compiling.
#
# Calling a compiled function with whole `VocabTables` / `_RowSide` tuples costs far
# more than a per-span or per-character body (measured: 3x the whole kernel), so the
# functions that take them run once per row, and the per-character helper takes arrays.

_jit = numba.njit(cache=True)

_SPACE_CODE = ord(SPACE)
_SLOT_CODE = ord(_SLOT_NORMALIZED_CHAR)
# What a token is to the walk (`_RowSide.roles`).
_UNREACHED = 0  # one-sided slot token, or after the last span: in no chunk
_TEXT = 1  # contributes its bytes
_SLOT = 2  # part of a slot-key span
_UNCONSTRAINED, _SPACE_CUT, _UNBIASED = (KINDS.index(k) for k in ("unconstrained", "space", "unbiased"))
_NUM_KINDS = len(KINDS)


class _RowSide(NamedTuple):
    """One side of one row inside the kernel: its unmasked tokens, in order."""

    positions: np.ndarray  # int64[n]: index of each token in the caller's row
    tokens: np.ndarray  # int64[n]: ids
    byte_lengths: np.ndarray  # int64[n]: bytes, with prepended leading spaces
    pads: np.ndarray  # int64[n]: leading spaces prepended (only the first text token's)
    slot_token: np.ndarray  # int64[n]: slot-token number of the (padded) string, or -1
    keys: np.ndarray  # int64[n]: the slot key starting at the token, or -1
    roles: np.ndarray  # int8[n]: _UNREACHED, _TEXT or _SLOT, set by the walk
    normalized_lengths: np.ndarray  # int64[n]: characters of the normalized string, set by the walk


@_jit
def _unmasked(ids, mask, vocab):
    """The `_RowSide` of one row's unmasked tokens (no keys, no roles yet)."""
    vocab_lengths, vocab_slot_token = vocab.byte_lengths, vocab.slot_token
    n = 0
    for p in range(len(ids)):
        if mask[p]:
            n += 1
    positions, tokens = np.empty(n, np.int64), np.empty(n, np.int64)
    lengths, slot_token = np.empty(n, np.int64), np.empty(n, np.int64)
    k = 0
    for p in range(len(ids)):
        if mask[p]:
            token = ids[p]
            positions[k], tokens[k] = p, token
            lengths[k], slot_token[k] = vocab_lengths[token], vocab_slot_token[token]
            k += 1
    return _RowSide(
        positions, tokens, lengths, np.zeros(n, np.int64), slot_token,
        np.full(n, -1, np.int64), np.zeros(n, np.int8), np.zeros(n, np.int64),
    )


@_jit
def _leading_spaces(side, vocab):
    """(first token after the leading special tokens, spaces the text starts with there)."""
    tokens, special = side.tokens, vocab.special
    n = len(tokens)
    first = 0
    while first < n and special[tokens[first]]:
        first += 1
    only_spaces, byte_lengths, leading_spaces = vocab.only_spaces, vocab.byte_lengths, vocab.leading_spaces
    spaces = 0
    for i in range(first, n):
        if not only_spaces[tokens[i]]:
            spaces += leading_spaces[tokens[i]]
            break
        spaces += byte_lengths[tokens[i]]
    return first, spaces


@_jit
def _prepend_spaces(side, vocab, index, count):
    """Gives token `index` `count` leading spaces (its string may become a slot token)."""
    token = side.tokens[index]
    side.pads[index] = count
    side.byte_lengths[index] += count
    side.slot_token[index] = -1
    chars, symbol_chars, symbol_offsets = vocab.chars, vocab.slot_token_chars, vocab.slot_token_offsets
    start = vocab.char_offsets[token]
    length = count + vocab.char_offsets[token + 1] - start
    for s in range(len(symbol_offsets) - 1):
        at = symbol_offsets[s]
        if symbol_offsets[s + 1] - at != length:
            continue
        matched = True
        for c in range(length):
            char = _SPACE_CODE if c < count else chars[start + c - count]
            if char != symbol_chars[at + c]:
                matched = False
                break
        if matched:
            side.slot_token[index] = s
            return


@_jit
def _find_keys(side, vocab):
    """Sets `side.keys`: the first slot key (in key order: longest first) whose tokens start at each token."""
    slot_token, keys = side.slot_token, side.keys
    key_tokens, key_offsets = vocab.key_tokens, vocab.key_offsets
    n = len(slot_token)
    for i in range(n):
        if slot_token[i] < 0:
            continue
        for k in range(len(key_offsets) - 1):
            start = key_offsets[k]
            size = key_offsets[k + 1] - start
            if i + size > n:
                continue
            matched = True
            for t in range(size):
                if slot_token[i + t] != key_tokens[start + t]:
                    matched = False
                    break
            if matched:
                keys[i] = k
                break


@_jit
def _walk(a, b, vocab_a, vocab_b, ends_a, ends_b, is_slot):
    """The walk of `get_alignment_indices` over one row.

    Sets both sides' `roles` and `normalized_lengths`; writes each span's ends
    (exclusive, into the unmasked tokens) and whether it is a slot-key span; returns the
    number of spans.
    """
    keys_a, lengths_a, roles_a, normalized_a = a.keys, a.byte_lengths, a.roles, a.normalized_lengths
    keys_b, lengths_b, roles_b, normalized_b = b.keys, b.byte_lengths, b.roles, b.normalized_lengths
    one_sided_a, offsets_a, slot_length_a = vocab_a.key_one_sided, vocab_a.key_offsets, vocab_a.key_normalized_length
    one_sided_b, offsets_b, slot_length_b = vocab_b.key_one_sided, vocab_b.key_offsets, vocab_b.key_normalized_length
    n_a, n_b = len(keys_a), len(keys_b)
    spans = 0
    i = j = 0
    consumed_a = consumed_b = 0  # bytes since the last slot-key span
    while i < n_a and j < n_b:
        key_a, key_b = keys_a[i], keys_b[j]
        skipped = False
        if key_a >= 0 and one_sided_a[key_a]:
            i += 1
            skipped = True
        if key_b >= 0 and one_sided_b[key_b]:
            j += 1
            skipped = True
        if skipped:
            continue
        if key_a >= 0 and key_b >= 0:
            end_a = i + offsets_a[key_a + 1] - offsets_a[key_a]
            end_b = j + offsets_b[key_b + 1] - offsets_b[key_b]
            roles_a[i:end_a] = _SLOT
            normalized_a[i:end_a] = slot_length_a[key_a]
            roles_b[j:end_b] = _SLOT
            normalized_b[j:end_b] = slot_length_b[key_b]
            i, j = end_a, end_b
            ends_a[spans], ends_b[spans], is_slot[spans] = i, j, True
            spans += 1
            consumed_a = consumed_b = 0
            continue
        end_a = consumed_a + lengths_a[i]
        end_b = consumed_b + lengths_b[j]
        if end_a <= end_b:
            roles_a[i], normalized_a[i] = _TEXT, lengths_a[i]
            consumed_a = end_a
            i += 1
        if end_b <= end_a:
            roles_b[j], normalized_b[j] = _TEXT, lengths_b[j]
            consumed_b = end_b
            j += 1
        if end_a == end_b:
            ends_a[spans], ends_b[spans], is_slot[spans] = i, j, False
            spans += 1
    return spans


@_jit
def _char_sources(side, vocab):
    """int64[n]: where token `t`'s normalized string would start in `vocab.chars`:
    character `c >= pads[t]` is at `+ c`, those before are prepended spaces; -1 for slot
    tokens, whose strings are `S`s."""
    tokens, roles, pads, offsets = side.tokens, side.roles, side.pads, vocab.char_offsets
    out = np.empty(len(tokens), np.int64)
    for t in range(len(tokens)):
        out[t] = -1 if roles[t] == _SLOT else offsets[tokens[t]] - pads[t]
    return out


@_jit
def _normalized_char(sources, pads, chars, t, c):
    """Character `c` of token `t`'s normalized string (see `_char_sources`)."""
    # One return type on every path (`chars` are int32): mixed, the check ran ~9x slower.
    source = sources[t]
    if source < 0:
        return np.int64(_SLOT_CODE)
    if c < pads[t]:
        return np.int64(_SPACE_CODE)
    return np.int64(chars[source + c])


@_jit
def _drop_mismatches(a, b, vocab_a, vocab_b, ends_a, ends_b, spans, keep):
    """Clears `keep` of the spans whose two sides spell different normalized strings
    (the check of `get_alignment_indices`), comparing character by character without
    building the strings; returns how many."""
    lengths_a, pads_a, chars_a, sources_a = a.normalized_lengths, a.pads, vocab_a.chars, _char_sources(a, vocab_a)
    lengths_b, pads_b, chars_b, sources_b = b.normalized_lengths, b.pads, vocab_b.chars, _char_sources(b, vocab_b)
    dropped = 0
    for s in range(spans):
        t_a, end_a = (ends_a[s - 1] if s > 0 else 0), ends_a[s]
        t_b, end_b = (ends_b[s - 1] if s > 0 else 0), ends_b[s]
        c_a = c_b = 0  # next character of token t_a / t_b
        while True:
            while t_a < end_a and c_a >= lengths_a[t_a]:
                t_a, c_a = t_a + 1, 0
            while t_b < end_b and c_b >= lengths_b[t_b]:
                t_b, c_b = t_b + 1, 0
            if t_a == end_a or t_b == end_b:
                same = t_a == end_a and t_b == end_b
                break
            char_a = _normalized_char(sources_a, pads_a, chars_a, t_a, c_a)
            char_b = _normalized_char(sources_b, pads_b, chars_b, t_b, c_b)
            same = char_a == char_b
            if not same:
                break
            c_a, c_b = c_a + 1, c_b + 1
        if not same:
            keep[s] = False
            dropped += 1
    return dropped


@_jit
def _space_starts(side, vocab):
    """bool[n + 1]: token `i` directly follows token `i - 1` in the caller's row (no
    masked token between), is a text token, and starts with a space."""
    positions, roles, pads, tokens, leading = side.positions, side.roles, side.pads, side.tokens, vocab.leading_spaces
    n = len(tokens)
    out = np.zeros(n + 1, np.bool_)
    for i in range(1, n):
        out[i] = (
            positions[i] == positions[i - 1] + 1
            and roles[i] == _TEXT
            and (pads[i] > 0 or leading[tokens[i]] > 0)
        )
    return out


@_jit
def _cuts(kind, a, b, vocab_a, vocab_b, bias, ends_a, ends_b, is_slot, spans):
    """bool[spans]: whether chunking `kind` cuts after each span (always after a
    slot-key span)."""
    cuts = is_slot[:spans].copy()
    if kind == _UNCONSTRAINED:
        cuts[:] = True
    elif kind == _SPACE_CUT:
        space_a = _space_starts(a, vocab_a)
        space_b = _space_starts(b, vocab_b)
        for s in range(spans):
            cuts[s] = cuts[s] or (space_a[ends_a[s]] and space_b[ends_b[s]])
    else:  # unbiased: `BiasLookup` of the pair of last tokens
        tokens_a, tokens_b, exceptions, row_starts = a.tokens, b.tokens, bias.exceptions, bias.row_starts
        rows, cols, absent_unbiased = bias.rows, bias.cols, bias.absent_unbiased
        for s in range(spans):
            token_a, token_b = tokens_a[ends_a[s] - 1], tokens_b[ends_b[s] - 1]
            if cuts[s] or token_a >= rows or token_b >= cols:
                cuts[s] = True
                continue
            # Searched within the row: a few entries, where a search of all of them
            # mispredicts a branch per step.
            start, end = row_starts[token_a], row_starts[token_a + 1]
            where = start + np.searchsorted(exceptions[start:end], token_a * cols + token_b)
            found = where < end and exceptions[where] == token_a * cols + token_b
            cuts[s] = found != absent_unbiased
    return cuts


@_jit
def _write_chunks(a, b, ends_a, ends_b, keep, cuts, spans, out_a, out_b):
    """Chunk ids of one chunking of one row into `out_a`, `out_b` (pre-filled with -1):
    kept spans, numbered in order, a new chunk after each cut; returns the number of
    chunks."""
    roles_a, positions_a, roles_b, positions_b = a.roles, a.positions, b.roles, b.positions
    chunk = 0
    last = -1
    for s in range(spans):
        if not keep[s]:
            continue
        for t in range(ends_a[s - 1] if s > 0 else 0, ends_a[s]):
            if roles_a[t] != _UNREACHED:
                out_a[positions_a[t]] = chunk
        for t in range(ends_b[s - 1] if s > 0 else 0, ends_b[s]):
            if roles_b[t] != _UNREACHED:
                out_b[positions_b[t]] = chunk
        last = chunk
        if cuts[s]:
            chunk += 1
    return last + 1


@_jit
def _chunk_ids_kernel(ids_a, mask_a, ids_b, mask_b, vocab_a, vocab_b, bias, wanted, check, out_a, out_b, num_chunks):
    """Fills `out_a[kind, row]`, `out_b[kind, row]` (pre-filled with -1) and
    `num_chunks[kind, row]` for the kinds with `wanted[kind]`; returns the spans dropped."""
    dropped = 0
    for row in range(ids_a.shape[0]):
        a = _unmasked(ids_a[row], mask_a[row], vocab_a)
        b = _unmasked(ids_b[row], mask_b[row], vocab_b)
        # A dummy-prefix space on one side only: the other side's first text token gets it.
        first_a, spaces_a = _leading_spaces(a, vocab_a)
        first_b, spaces_b = _leading_spaces(b, vocab_b)
        if spaces_a < spaces_b and first_a < len(a.tokens):
            _prepend_spaces(a, vocab_a, first_a, spaces_b - spaces_a)
        elif spaces_b < spaces_a and first_b < len(b.tokens):
            _prepend_spaces(b, vocab_b, first_b, spaces_a - spaces_b)
        _find_keys(a, vocab_a)
        _find_keys(b, vocab_b)

        most = min(len(a.tokens), len(b.tokens)) + 1  # each span takes a token of each side
        ends_a = np.empty(most, np.int64)
        ends_b = np.empty(most, np.int64)
        is_slot = np.empty(most, np.bool_)
        spans = _walk(a, b, vocab_a, vocab_b, ends_a, ends_b, is_slot)
        keep = np.ones(spans, np.bool_)
        if check:
            dropped += _drop_mismatches(a, b, vocab_a, vocab_b, ends_a, ends_b, spans, keep)
        for kind in range(_NUM_KINDS):
            if wanted[kind]:
                cuts = _cuts(kind, a, b, vocab_a, vocab_b, bias, ends_a, ends_b, is_slot, spans)
                num_chunks[kind, row] = _write_chunks(a, b, ends_a, ends_b, keep, cuts, spans, out_a[kind, row], out_b[kind, row])
    return dropped


@_jit
def _first_invalid_id(ids, mask, byte_lengths):
    """Flat index of the first unmasked id outside the vocabulary or without a string, or -1."""
    flat_ids, flat_mask = ids.ravel(), mask.ravel()
    for p in range(len(flat_ids)):
        token = flat_ids[p]
        if flat_mask[p] and (token < 0 or token >= len(byte_lengths) or byte_lengths[token] == 0):
            return p
    return -1


_NO_BIAS = BiasTable(np.zeros(0, np.int64), np.zeros(1, np.int64), 0, 0, True)  # for aligners without bias matrices


# ------------------------------------------------------------------------ Aligner


class Chunking(NamedTuple):
    """One chunking of a batch: ids per token (`-1` = no chunk) and chunks per row."""

    chunks_a: np.ndarray  # int32[B, La]
    chunks_b: np.ndarray  # int32[B, Lb]
    num_chunks: np.ndarray  # int32[B]


class Aligner:
    """Alignment of batches of a fixed tokenizer pair into chunk ids (compiled).

    Build once per tokenizer pair (per data worker; it pickles without the tokenizers,
    as its `VocabTables`), then call `chunk_ids` per example or per batch. Side `a` is the
    teacher, side `b` the student when bias matrices are given
    (`[len(tokenizer_a), len(tokenizer_b)]`). Gives the ids `reference_chunk_ids` gives.

    Args:
      tokenizer_a, tokenizer_b: `ByteifyTokenizer`s.
      bias_matrices: `(bias1, bias2)` scipy sparse matrices (see
        `tokenkit.tokenizer_info`); needed for the `unbiased` chunking.
      bias_threshold: pairs whose biases are both at most this are unbiased.
      check: drop spans whose bytes differ on the two sides (texts that differ), as
        `get_alignment_indices` does; the number dropped is logged.
    """

    def __init__(
        self,
        tokenizer_a: Any,
        tokenizer_b: Any,
        *,
        bias_matrices: tuple[Any, Any] | None = None,
        bias_threshold: float = 0.0,
        check: bool = True,
    ) -> None:
        self.name_a = repr(tokenizer_a)
        self.name_b = repr(tokenizer_b)
        self.tables_a = VocabTables.build(tokenizer_a, slot_keys(tokenizer_a.family, tokenizer_b.family))
        self.tables_b = VocabTables.build(tokenizer_b, slot_keys(tokenizer_b.family, tokenizer_a.family))
        self.bias_lookup = None if bias_matrices is None else BiasLookup(*bias_matrices, bias_threshold)
        self.check = check
        self.dropped_spans = 0  # spans dropped by `check` so far (texts that differ)

    def __repr__(self) -> str:
        return f"Aligner({self.name_a}, {self.name_b}, unbiased={self.bias_lookup is not None})"

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
        mask_a = _mask(attention_mask_a, ids_a.shape, single, "a")
        mask_b = _mask(attention_mask_b, ids_b.shape, single, "b")
        ids_a = _checked_ids(self.tables_a, ids_a, mask_a, "a")
        ids_b = _checked_ids(self.tables_b, ids_b, mask_b, "b")

        out_a = np.full((_NUM_KINDS,) + ids_a.shape, -1, np.int32)
        out_b = np.full((_NUM_KINDS,) + ids_b.shape, -1, np.int32)
        num_chunks = np.zeros((_NUM_KINDS, ids_a.shape[0]), np.int32)
        dropped = _chunk_ids_kernel(
            ids_a, mask_a, ids_b, mask_b, self.tables_a, self.tables_b,
            _NO_BIAS if self.bias_lookup is None else self.bias_lookup.table,
            np.array([kind in kinds for kind in KINDS]), self.check, out_a, out_b, num_chunks,
        )
        self._count_dropped(int(dropped))
        out = {}
        for kind in kinds:
            k = KINDS.index(kind)
            if single:
                out[kind] = Chunking(out_a[k, 0], out_b[k, 0], num_chunks[k, 0])
            else:
                out[kind] = Chunking(out_a[k], out_b[k], num_chunks[k])
        return out

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


def _mask(mask: np.ndarray | None, shape: tuple[int, ...], single: bool, side: str) -> np.ndarray:
    """The attention mask as a C-contiguous bool array of `shape` (all true if None)."""
    if mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(mask).astype(bool)
    if single:
        mask = mask[None]
    if mask.shape != shape:
        raise ValueError(f"attention_mask_{side} has shape {mask.shape}, input_ids_{side} {shape}")
    return np.ascontiguousarray(mask)


def _checked_ids(vocab: VocabTables, ids: np.ndarray, mask: np.ndarray, side: str) -> np.ndarray:
    """`ids` as C-contiguous int64, after checking that every unmasked id is an id of the
    vocabulary with a non-empty string (the kernel indexes the tables with them)."""
    ids = np.ascontiguousarray(ids, np.int64)
    bad = _first_invalid_id(ids, mask, vocab.byte_lengths)
    if bad >= 0:
        row, column = divmod(int(bad), ids.shape[1])
        raise ValueError(
            f"input_ids_{side}[{row}, {column}] = {ids[row, column]} is not a token id of this "
            f"tokenizer (vocabulary size {vocab.vocab_size}, ids with a non-empty string); mask "
            "padding positions out with the attention mask"
        )
    return ids
