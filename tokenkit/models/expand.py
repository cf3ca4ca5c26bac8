"""Input-id expansion: byte-level inputs also see the old model's subword embeddings.

A model moved to a byte-level tokenizer (`conversion=byte`) reads one byte per position.
Expansion adds, at every byte position, the old (subword) input embedding of the
*longest old token whose bytes end at that byte*, looking back at most
`constants.EXPAND_INPUT_IDS_MAX_LENGTH` (16) bytes (ALM paper, "Adjustments for Transfer
to Bytes"). The model core adds `params["expand_embedder"]["embedding"][expanded_ids]`
to the token embeddings (`models.transformer`); this module provides both halves:

    expansion = build_expansion(byte_tokenizer, old_tokenizer)       # once, on the host
    params["expand_embedder"] = {"embedding": expansion.embedding_table(old_embeddings)}
    expanded = expansion.apply(input_ids, attention_mask)            # inside jit
    model.apply({"params": params}, input_ids, attention_mask, expanded_input_ids=expanded)

What each position gets (`Expansion.apply`):

- a text token (a single byte, or a multi-byte token the byte tokenizer keeps, such as
  Llama 3's `ĊĊ` or Qwen2's `user`, which `conversion=byte` also produces from text):
  the longest old token spelling the last bytes of the run of text tokens ending with
  this token's last byte (up to 16 bytes, across token boundaries); runs stop at
  special tokens and padding;
- a special token: its old counterpart (the same token, else the old family's token in
  the same template slot);
- padding (attention mask 0), and anything without a match: `none_id`, the zero row
  that `embedding_table` appends after the old rows, so it adds nothing.

Differences to the upstream, on purpose: windows are bytes, not byte-tokenizer ids, so
an old token is found whatever mix of single-byte and kept multi-byte tokens spells it
(`ĊĊĊ` from `Ċ ĊĊ`); old tokens longer than 16 bytes are left out (upstream keyed them
by their last 16 bytes, so any text ending in those bytes got the long token); no match
maps to a zero row (upstream: old id 0, or -2 in its JAX version).

How the lookup runs in JAX, with no per-position Python and no `L x L` or `V_old x L`
array: each row's text tokens form a byte stream (cumulative byte lengths); the last 16
bytes before each token's end are gathered from it (a `searchsorted` per byte finds the
token holding it) and packed into four uint32 words, and for each length n = 1..16 the
masked words are hashed
(uint32 arithmetic) and looked up with `searchsorted` in the sorted hashes of the old
tokens. A candidate counts only if its length and packed bytes equal the window's, so a
hash collision can never produce a wrong id; keys sharing a hash are all checked (the
table records the largest such group). Cost: O(B L 16 (log K + groups)).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tokenkit import constants, families
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.progress import Progress

_BYTES_PER_WORD = 4


def _num_words(max_length: int) -> int:
    return -(-max_length // _BYTES_PER_WORD)


def _length_masks(max_length: int) -> np.ndarray:
    """uint32 `[max_length, W]`: row n-1 keeps the bytes k < n of the packed words."""
    n_words = _num_words(max_length)
    masks = np.zeros((max_length, n_words), dtype=np.uint64)
    for n in range(1, max_length + 1):
        for k in range(n):
            masks[n - 1, k // _BYTES_PER_WORD] |= np.uint64(0xFF) << np.uint64(8 * (k % _BYTES_PER_WORD))
    return masks.astype(np.uint32)


def _hash(xp: Any, length: Any, words: Any, hash_bits: int) -> Any:
    """uint32 hash of (length, packed words), identical in numpy and jax.numpy.

    `length`: int `[...]`; `words`: uint32 `[..., W]`. A multiply-xorshift mix per word
    and murmur3's finaliser; `hash_bits` < 32 keeps fewer bits (tests use it to force
    collisions).
    """
    u32 = xp.uint32
    h = length.astype(u32) * u32(0x9E3779B1)
    for j in range(words.shape[-1]):
        h = (h ^ words[..., j]) * u32(0x85EBCA6B)
        h = h ^ (h >> u32(15))
    h = h ^ (h >> u32(16))
    h = h * u32(0x85EBCA6B)
    h = h ^ (h >> u32(13))
    h = h * u32(0xC2B2AE35)
    h = h ^ (h >> u32(16))
    if hash_bits < 32:
        h = h & u32((1 << hash_bits) - 1)
    return h


def _pack(reversed_bytes: bytes, max_length: int) -> np.ndarray:
    """uint32 `[W]`: byte k of `reversed_bytes` (k = 0 is the last byte of the token)
    goes to bits 8*(k % 4) of word k // 4."""
    padded = reversed_bytes.ljust(_num_words(max_length) * _BYTES_PER_WORD, b"\0")
    return np.frombuffer(padded, dtype="<u4").astype(np.uint32)


@flax.struct.dataclass
class Expansion:
    """Precomputed lookup of one (byte tokenizer, old tokenizer) pair; a pytree.

    Attributes:
      bytes_of_id: int32 `[V_new, max_length]`, the bytes of each text token (its last
        `max_length` bytes), zero-padded.
      length_of_id: int32 `[V_new]`, how many bytes of `bytes_of_id` a token has (0 for
        special tokens and ids the tokenizer does not have).
      direct_of_id: int32 `[V_new]`, the old id of a special token (else `none_id`).
      key_hash: uint32 `[K]`, sorted hashes of the old tokens' (length, bytes).
      key_length: int32 `[K]`, their byte lengths.
      key_words: uint32 `[K, W]`, their bytes, last byte first, packed four per word.
      key_old_id: int32 `[K]`, their old ids.
      none_id: the id `apply` gives padding and positions without a match (= the number
        of old tokens; `embedding_table` puts a zero row there).
      max_length: longest lookback in bytes.
      max_group: the most keys sharing one hash (how many candidates `apply` checks).
      hash_bits: bits of the hash kept.
    """

    bytes_of_id: Any
    length_of_id: Any
    direct_of_id: Any
    key_hash: Any
    key_length: Any
    key_words: Any
    key_old_id: Any
    none_id: int = flax.struct.field(pytree_node=False)
    max_length: int = flax.struct.field(pytree_node=False)
    max_group: int = flax.struct.field(pytree_node=False)
    hash_bits: int = flax.struct.field(pytree_node=False, default=32)

    @property
    def num_old(self) -> int:
        """Rows of the old embedding matrix the expanded ids index (excluding `none_id`)."""
        return self.none_id

    def apply(self, input_ids: Any, attention_mask: Any | None = None) -> jax.Array:
        """Old-vocabulary ids `[B, L]` for byte-tokenizer ids `[B, L]` (jittable).

        Positions where `attention_mask` is 0 get `none_id`.
        """
        return expand_input_ids(self, input_ids, attention_mask)

    def embedding_table(self, old_embeddings: Any, pad_to_multiple_of: int = 64) -> np.ndarray:
        """The `expand_embedder` table: the old input embeddings' first `none_id` rows,
        then zero rows (row `none_id` among them) up to a multiple of `pad_to_multiple_of`.

        Raises:
          ValueError: the matrix has fewer rows than the old tokenizer has tokens.
        """
        old = np.asarray(old_embeddings)
        if old.ndim != 2 or old.shape[0] < self.none_id:
            raise ValueError(
                f"The old tokenizer has {self.none_id} tokens but the old embedding matrix "
                f"has shape {tuple(old.shape)}; expected [>= {self.none_id}, D]."
            )
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}.")
        rows = -(-(self.none_id + 1) // pad_to_multiple_of) * pad_to_multiple_of
        table = np.zeros((rows, old.shape[1]), dtype=old.dtype)
        table[: self.none_id] = old[: self.none_id]
        return table


def _old_counterparts(
    new: ByteifyTokenizer, old: ByteifyTokenizer, old_vocab: Mapping[str, int]
) -> dict[str, str]:
    """New special token -> old token through template slots (most important slot wins)."""
    mapping: dict[str, str] = {}
    for slot in reversed(families.SLOTS):
        new_token, old_token = new.family.first_token(slot), old.family.first_token(slot)
        if new_token is not None and old_token is not None and old_token in old_vocab:
            mapping[new_token] = old_token
    return mapping


def build_expansion(
    new_tokenizer: ByteifyTokenizer,
    old_tokenizer: ByteifyTokenizer,
    *,
    max_length: int = constants.EXPAND_INPUT_IDS_MAX_LENGTH,
    hash_bits: int = 32,
) -> Expansion:
    """Precomputes the expansion lookup from a byte-level tokenizer to an old one.

    Args:
      new_tokenizer: a byte-level tokenizer (`conversion=byte` or `pure_byte`): all 256
        single-byte tokens, plus special and kept template tokens.
      old_tokenizer: the tokenizer of the model whose embeddings are added.
      max_length: longest old token looked up, in bytes.
      hash_bits: bits of the lookup hash (32; fewer only to test collision handling).

    Raises:
      ValueError: `new_tokenizer` lacks single-byte tokens (it is not byte-level).
    """
    if not 1 <= hash_bits <= 32:
        raise ValueError(f"hash_bits must be in 1..32, got {hash_bits}.")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}.")
    none_id = len(old_tokenizer)
    old_vocab = old_tokenizer.get_vocab()
    old_special = set(old_tokenizer.all_special_ids)

    # Keys: every old non-special token of at most max_length bytes, by its bytes.
    lengths, words, old_ids = [], [], []
    too_long = 0
    for spelling, old_id in Progress.wrap(
        sorted(old_vocab.items(), key=lambda kv: kv[1]), "expansion keys", unit="tokens"
    ):
        if old_id in old_special:
            continue
        data = constants.chars_to_bytes(spelling)
        if len(data) > max_length:
            too_long += 1
            continue
        lengths.append(len(data))
        words.append(_pack(data[::-1], max_length))
        old_ids.append(old_id)
    if too_long:
        logging.info(
            "Expansion: %d old tokens are longer than %d bytes and are never looked up.",
            too_long, max_length,
        )
    # A dummy key of length 0 keeps the table non-empty; no window has length 0.
    key_length = np.asarray([0] + lengths, dtype=np.int32)
    key_words = np.stack([np.zeros(_num_words(max_length), np.uint32)] + words).astype(np.uint32)
    key_old_id = np.asarray([none_id] + old_ids, dtype=np.int32)
    key_hash = _hash(np, key_length, key_words, hash_bits)
    order = np.argsort(key_hash, kind="stable")
    key_hash, key_length = key_hash[order], key_length[order]
    key_words, key_old_id = key_words[order], key_old_id[order]
    _, group_sizes = np.unique(key_hash, return_counts=True)
    max_group = int(group_sizes.max())

    # Per new id: its bytes (text tokens), or its old counterpart (special tokens).
    slot_map = _old_counterparts(new_tokenizer, old_tokenizer, old_vocab)
    new_special = set(new_tokenizer.all_special_ids)
    bytes_of_id = np.zeros((len(new_tokenizer), max_length), dtype=np.int32)
    length_of_id = np.zeros(len(new_tokenizer), dtype=np.int32)
    direct_of_id = np.full(len(new_tokenizer), none_id, dtype=np.int32)
    single_bytes: set[int] = set()
    unmatched: list[str] = []
    for i in range(len(new_tokenizer)):
        try:
            spelling = new_tokenizer.convert_ids_to_tokens(i)
        except IndexError:
            continue
        if i in new_special:
            if spelling in old_vocab:
                direct_of_id[i] = old_vocab[spelling]
            elif spelling in slot_map:
                direct_of_id[i] = old_vocab[slot_map[spelling]]
            else:
                unmatched.append(spelling)
            continue
        data = constants.chars_to_bytes(spelling)[-max_length:]
        bytes_of_id[i, : len(data)] = list(data)
        length_of_id[i] = len(data)
        if len(data) == 1:
            single_bytes.add(data[0])
    missing_bytes = 256 - len(single_bytes)
    if missing_bytes:
        raise ValueError(
            f"Input-id expansion needs a byte-level new tokenizer (a spec with "
            f"conversion=byte); {new_tokenizer!r} lacks {missing_bytes} of the 256 "
            "single-byte tokens."
        )
    if unmatched:
        logging.warning(
            "Expansion: %d special tokens of the byte tokenizer have no old counterpart and "
            "expand to nothing: %s", len(unmatched), unmatched,
        )
    logging.info(
        "Expansion %s -> %s: %d keys, largest hash group %d.",
        new_tokenizer, old_tokenizer, len(old_ids), max_group,
    )
    return Expansion(
        bytes_of_id=bytes_of_id,
        length_of_id=length_of_id,
        direct_of_id=direct_of_id,
        key_hash=key_hash,
        key_length=key_length,
        key_words=key_words,
        key_old_id=key_old_id,
        none_id=none_id,
        max_length=max_length,
        max_group=max_group,
        hash_bits=hash_bits,
    )


@jax.jit
def expand_input_ids(
    expansion: Expansion, input_ids: Any, attention_mask: Any | None = None
) -> jax.Array:
    """Old-vocabulary ids for byte-tokenizer `input_ids` `[B, L]`; see the module docstring.

    Pure JAX, jitted (inside another jit it is inlined; each new shape compiles once
    when called eagerly), vmappable; memory O(B L 16 W).
    """
    e = expansion
    m = e.max_length
    ids = jnp.asarray(input_ids).astype(jnp.int32)
    valid = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    vocab = e.length_of_id.shape[0]
    in_range = (ids >= 0) & (ids < vocab)
    safe = jnp.where(in_range, ids, 0)
    lengths = jnp.where(valid & in_range, jnp.asarray(e.length_of_id)[safe], 0)
    is_text = lengths > 0
    direct = jnp.where(valid & in_range, jnp.asarray(e.direct_of_id)[safe], e.none_id)

    # The row's text tokens as one byte stream: token i holds bytes [ends_i - len_i, ends_i).
    # window[..., i, k] is the byte k places before the end of token i; ok says the bytes
    # from there to token i's end all come from text tokens (no special token between).
    ends = jnp.cumsum(lengths, axis=-1)
    breaks = jnp.cumsum((~is_text).astype(jnp.int32), axis=-1)
    target = ends[..., :, None] - 1 - jnp.arange(m)[None, :]  # [..., L, m]
    flat_ends = ends.reshape(-1, ends.shape[-1])
    holder = jax.vmap(lambda e_, q: jnp.searchsorted(e_, q, side="right"))(
        flat_ends, target.reshape(flat_ends.shape[0], -1)
    ).reshape(target.shape)
    holder = jnp.minimum(holder, ids.shape[-1] - 1)
    holder_ids = jnp.take_along_axis(safe[..., None, :], holder, axis=-1)
    holder_start = jnp.take_along_axis((ends - lengths)[..., None, :], holder, axis=-1)
    offset = jnp.clip(target - holder_start, 0, m - 1)
    window = jnp.asarray(e.bytes_of_id)[holder_ids, offset]
    unbroken = jnp.take_along_axis(breaks[..., None, :], holder, axis=-1) == breaks[..., :, None]
    run = (target >= 0) & unbroken & is_text[..., :, None]
    ok = jnp.cumprod(run.astype(jnp.int32), axis=-1).astype(bool)  # [..., L, m]
    window = jnp.where(ok, window, 0).astype(jnp.uint32)
    n_words = _num_words(m)
    padded = jnp.pad(window, [(0, 0)] * (window.ndim - 1) + [(0, n_words * _BYTES_PER_WORD - m)])
    shifts = jnp.asarray([0, 8, 16, 24], jnp.uint32)
    words = jnp.sum(
        padded.reshape(*window.shape[:-1], n_words, _BYTES_PER_WORD) << shifts, axis=-1,
        dtype=jnp.uint32,
    )  # [..., L, W]
    query_words = words[..., None, :] & jnp.asarray(_length_masks(m))  # [..., L, m, W]
    query_length = jnp.arange(1, m + 1, dtype=jnp.int32)
    query_hash = _hash(jnp, jnp.broadcast_to(query_length, ok.shape), query_words, e.hash_bits)

    key_hash = jnp.asarray(e.key_hash)
    key_length = jnp.asarray(e.key_length)
    key_words = jnp.asarray(e.key_words)
    key_old_id = jnp.asarray(e.key_old_id)
    first = jnp.searchsorted(key_hash, query_hash.reshape(-1)).reshape(query_hash.shape)
    found = jnp.full(query_hash.shape, -1, jnp.int32)
    for offset in range(e.max_group):
        c = jnp.minimum(first + offset, key_hash.shape[0] - 1)
        same = (
            (key_hash[c] == query_hash)
            & (key_length[c] == query_length)
            & jnp.all(key_words[c] == query_words, axis=-1)
            & ok
        )
        found = jnp.where(same, key_old_id[c], found)

    # The longest match: the last length (along the m axis) that found a key.
    hit = found >= 0
    longest = m - 1 - jnp.argmax(hit[..., ::-1], axis=-1)
    best = jnp.take_along_axis(found, longest[..., None], axis=-1)[..., 0]
    from_bytes = jnp.where(jnp.any(hit, axis=-1), best, e.none_id)
    return jnp.where(is_text, from_bytes, direct).astype(jnp.int32)
