"""Fast Vocabulary Transfer (FVT): embeddings for a new tokenizer from an old model's.

Every row of the new (target) vocabulary is initialised from the source embeddings:

1. *special*: a special token of the target family takes the row of the source family's
   token in the same template slot (`bos` from `bos`, `eot` from `eot`, ...). Slots are
   visited from least to most important (`families.SLOTS` reversed), so where one target
   token fills several slots the most important one wins (Qwen3's `<|endoftext|>` is
   bos, pad and eos; from Gemma3 it takes `<bos>`'s row);
2. *exact*: a token whose byte-level spelling is also a source token copies that row;
3. *averaged*: any other token is the mean of the rows of its decomposition by the
   source tokenizer (`ByteifyTokenizer.backend_tokenize`; bytes that do not form whole
   UTF-8 characters at the edges are taken as single-byte tokens);
4. *fallback*: a token with no decomposition (e.g. bytes the source vocabulary lacks)
   is drawn from a normal distribution with the per-dimension mean and std of the
   source rows, from a seeded `np.random.Generator`.

The token -> rows mapping is computed once (`fvt_mapping`, one `backend_tokenize` per
averaged token and O(1) other Python work per token) and applied to each matrix with a
sparse averaging matrix (`FvtMapping.apply`), so input and untied output embeddings get
the same mapping. Both tokenizers are `ByteifyTokenizer`s: their spellings compare.

Unlike the upstream, slot copying is by default limited to the target family's special
tokens (`slot_tokens="special"`): template *words and newlines* (Gemma's `Ċ` and `user`
slots) are ordinary text tokens, and copying `<|end_header_id|>` onto Gemma's newline
or Llama3's `system` onto Gemma's `user` (both fill slots) would corrupt frequent text
tokens. `slot_tokens="all"` copies every slot's first token as the upstream does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
import scipy.sparse
from absl import logging

from tokenkit import families
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.progress import Progress

SLOT_TOKEN_MODES: tuple[str, ...] = ("special", "all")

# Columns of the embedding matrix converted to float32 at a time (bounds the extra host
# memory for bf16 matrices of real vocabularies to rows x this x 4 bytes).
_COLUMN_BLOCK = 512


@dataclasses.dataclass(frozen=True)
class FvtStats:
    """How many target tokens were initialised in each way (they sum to the target size)."""

    special: int
    exact: int
    averaged: int
    fallback: int

    @property
    def total(self) -> int:
        return self.special + self.exact + self.averaged + self.fallback

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}

    def __str__(self) -> str:
        return (
            f"special={self.special} exact={self.exact} averaged={self.averaged} "
            f"fallback={self.fallback} (of {self.total})"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class FvtMapping:
    """Which source rows make each target row; apply it to any `[num_source, D]` matrix.

    Attributes:
      num_source: rows of the source matrices (>= the source tokenizer's size).
      num_source_tokens: the source tokenizer's size (rows used for the fallback stats).
      copy_from: int64 `[num_target]`, the source row a special / exact token copies, or -1.
      average: `[num_target, num_source]` CSR matrix whose row `i` averages the rows of
        target token `i`'s decomposition (empty for copied and fallback tokens).
      fallback: bool `[num_target]`, tokens drawn at random.
      stats: the counts of each kind.
    """

    num_source: int
    num_source_tokens: int
    copy_from: np.ndarray
    average: scipy.sparse.csr_matrix
    fallback: np.ndarray
    stats: FvtStats

    @property
    def num_target(self) -> int:
        return int(self.copy_from.shape[0])

    def apply(self, embeddings: Any, rng: np.random.Generator) -> np.ndarray:
        """The `[num_target, D]` matrix for the target vocabulary, in `embeddings`' dtype
        (float32 for non-float inputs); fallback rows are drawn from `rng`."""
        source = np.asarray(embeddings)
        if source.ndim != 2 or source.shape[0] != self.num_source:
            raise ValueError(
                f"FVT mapping was built for a [{self.num_source}, D] matrix; got shape "
                f"{tuple(source.shape)}"
            )
        # jnp.issubdtype knows bfloat16 (an ml_dtypes type, not a numpy float subtype).
        dtype = source.dtype if jnp.issubdtype(source.dtype, jnp.floating) else np.dtype(np.float32)
        out = np.empty((self.num_target, source.shape[1]), dtype=dtype)
        for start in range(0, source.shape[1], _COLUMN_BLOCK):
            cols = slice(start, start + _COLUMN_BLOCK)
            out[:, cols] = self.average @ source[:, cols].astype(np.float32)
        copied = self.copy_from >= 0
        out[copied] = source[self.copy_from[copied]]
        n_fallback = int(self.fallback.sum())
        if n_fallback:
            real = source[: self.num_source_tokens]
            mean = real.mean(axis=0, dtype=np.float64)
            std = real.std(axis=0, dtype=np.float64)
            out[self.fallback] = rng.normal(mean, std, size=(n_fallback, source.shape[1]))
        return out


@dataclasses.dataclass(frozen=True)
class FvtResult:
    """FVT-initialised matrices (`[len(target_tokenizer), D]`) and the statistics."""

    input_embeddings: np.ndarray
    output_embeddings: np.ndarray | None
    stats: FvtStats


def slot_copies(
    source_family: families.Family,
    target_family: families.Family,
    *,
    slot_tokens: str = "special",
) -> dict[str, str]:
    """Target token -> source token copied slot to slot (first token of each slot).

    Slots run from least to most important, so the most important slot is written last
    and wins where one target token fills several slots.
    """
    if slot_tokens not in SLOT_TOKEN_MODES:
        raise ValueError(
            f"Unknown slot_tokens {slot_tokens!r}; valid: {', '.join(SLOT_TOKEN_MODES)}"
        )
    copies: dict[str, str] = {}
    for slot in reversed(families.SLOTS):
        target_token = target_family.first_token(slot)
        if target_token is None:
            continue
        if slot_tokens == "special" and target_token not in target_family.special_tokens:
            continue
        source_token = source_family.first_token(slot)
        if source_token is None:
            logging.warning(
                "FVT: %s has no %r slot; %s's %r is initialised like a text token.",
                source_family.name, slot, target_family.name, target_token,
            )
            continue
        if copies.get(target_token, source_token) != source_token:
            logging.info(
                "FVT: %r fills several slots; the %r slot wins (%r).",
                target_token, slot, source_token,
            )
        copies[target_token] = source_token
    for target_token, source_token in copies.items():
        logging.info("FVT: copying special token %r -> %r", source_token, target_token)
    return copies


def _decompose(source: ByteifyTokenizer, spelling: str) -> list[int]:
    """Source ids spelling the same bytes, or [] when the source cannot spell them."""
    try:
        return source.backend_tokenize_with_byte_fallback(spelling, unsafe="auto")
    except KeyError:  # an edge byte the source vocabulary has no token for
        return []


def fvt_mapping(
    source_tokenizer: ByteifyTokenizer,
    target_tokenizer: ByteifyTokenizer,
    num_source_rows: int,
    *,
    allow_exact_match: bool = True,
    slot_tokens: str = "special",
    show_progress: bool = True,
) -> FvtMapping:
    """Computes which source rows initialise each target token (see the module docstring).

    Args:
      source_tokenizer, target_tokenizer: the model's tokenizer and the new one.
      num_source_rows: rows of the source embedding matrix; at least the source
        tokenizer's size (more rows are vocabulary padding and are never used).
      allow_exact_match: False averages the decomposition even where the exact token
        exists (its decomposition is then the token itself).
      slot_tokens: "special" copies slots only onto the target family's special
        tokens; "all" also onto template words (the upstream behaviour).
      show_progress: log progress lines while decomposing.

    Raises:
      ValueError: the source tokenizer has more tokens than the matrix has rows.
    """
    num_source_tokens = len(source_tokenizer)
    if num_source_tokens > num_source_rows:
        raise ValueError(
            f"The source tokenizer has {num_source_tokens} tokens but the embedding matrix "
            f"only {num_source_rows} rows; is this the tokenizer the model was trained with?"
        )
    source_vocab = source_tokenizer.get_vocab()
    copies = slot_copies(source_tokenizer.family, target_tokenizer.family, slot_tokens=slot_tokens)

    num_target = len(target_tokenizer)
    copy_from = np.full(num_target, -1, dtype=np.int64)
    fallback = np.zeros(num_target, dtype=bool)
    avg_rows: list[int] = []
    avg_cols: list[int] = []
    avg_vals: list[float] = []
    counts = dict(special=0, exact=0, averaged=0, fallback=0)
    inexact = 0  # decompositions missing bytes (a source tokenizer that drops unknown text)

    progress = Progress(num_target, "FVT", unit="tokens", enabled=show_progress)
    for i in range(num_target):
        progress.update(1)
        try:
            token = target_tokenizer.convert_ids_to_tokens(i)
        except IndexError:  # an id the target vocabulary skips: nothing to derive it from
            fallback[i] = True
            counts["fallback"] += 1
            continue
        if token in copies:
            copy_from[i] = source_vocab[copies[token]]
            counts["special"] += 1
            continue
        if allow_exact_match and token in source_vocab:
            copy_from[i] = source_vocab[token]
            counts["exact"] += 1
            continue
        if token in source_vocab:
            parts = [source_vocab[token]]
        else:
            try:
                parts = _decompose(source_tokenizer, token)
            except ValueError:  # not a byte-level string (cannot happen for ByteifyTokenizers)
                parts = []
        if not parts:
            fallback[i] = True
            counts["fallback"] += 1
            continue
        if "".join(source_tokenizer.convert_ids_to_tokens(parts)) != token:
            inexact += 1
        # Repeated parts count as often as they occur, as in a plain mean over the list.
        avg_rows.extend([i] * len(parts))
        avg_cols.extend(parts)
        avg_vals.extend([1.0 / len(parts)] * len(parts))
        counts["averaged"] += 1
    progress.close()

    average = scipy.sparse.csr_matrix(
        (np.asarray(avg_vals, np.float32), (np.asarray(avg_rows, np.int64), np.asarray(avg_cols, np.int64))),
        shape=(num_target, num_source_rows),
    )  # duplicate (row, col) entries are summed, which is what a repeated part needs
    stats = FvtStats(**counts)
    if inexact:
        logging.warning(
            "FVT: %d averaged tokens have decompositions that do not spell them exactly "
            "(the source tokenizer dropped or changed some of their text); they are the mean "
            "of what it produced.", inexact,
        )
    logging.info(
        "FVT %s -> %s: %s", source_tokenizer.spec or "source", target_tokenizer.spec or "target", stats
    )
    return FvtMapping(
        num_source=num_source_rows,
        num_source_tokens=num_source_tokens,
        copy_from=copy_from,
        average=average,
        fallback=fallback,
        stats=stats,
    )


def fvt(
    source_tokenizer: ByteifyTokenizer,
    target_tokenizer: ByteifyTokenizer,
    source_embeddings: Any,
    *,
    output_embeddings: Any | None = None,
    seed: int | np.random.Generator = 0,
    allow_exact_match: bool = True,
    slot_tokens: str = "special",
    show_progress: bool = True,
) -> FvtResult:
    """FVT-initialises embeddings for `target_tokenizer` from a model of `source_tokenizer`.

    Args:
      source_tokenizer, target_tokenizer: `ByteifyTokenizer`s (old and new).
      source_embeddings: `[V_source, D]` input embeddings (numpy or jax; rows beyond the
        source tokenizer's size are padding and ignored).
      output_embeddings: `[V_source, D]` output embeddings (HF row layout, i.e. the
        lm_head kernel transposed) of an untied model; the same mapping is applied.
      seed: seed (or generator) for the fallback rows; the input matrix draws first.
      allow_exact_match, slot_tokens, show_progress: see `fvt_mapping`.

    Returns:
      `FvtResult` with `[len(target_tokenizer), D]` matrices in the inputs' dtype.
    """
    num_rows = int(np.shape(source_embeddings)[0])
    if output_embeddings is not None and tuple(np.shape(output_embeddings)) != tuple(
        np.shape(source_embeddings)
    ):
        raise ValueError(
            f"Output embeddings have shape {tuple(np.shape(output_embeddings))}; the input "
            f"embeddings {tuple(np.shape(source_embeddings))}. Pass the lm_head kernel "
            "transposed ([V, D])."
        )
    mapping = fvt_mapping(
        source_tokenizer,
        target_tokenizer,
        num_rows,
        allow_exact_match=allow_exact_match,
        slot_tokens=slot_tokens,
        show_progress=show_progress,
    )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    new_inputs = mapping.apply(source_embeddings, rng)
    new_outputs = None if output_embeddings is None else mapping.apply(output_embeddings, rng)
    return FvtResult(new_inputs, new_outputs, mapping.stats)
