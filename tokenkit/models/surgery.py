"""Vocabulary surgery: new embedding matrices for a new tokenizer, untying, padding.

Vocabularies are padded to a multiple (`pad_to_multiple_of`, 64 by default as upstream) so
the vocab dimension shards evenly and matmuls are tile-aligned; padded rows are zero and
are excluded from softmaxes by `tokenkit.logits.mask_padded_vocab` (the model side applies
it to every forward pass). `trim_vocabulary` removes the padding again
before export.

The functions return new trees on the default placement; after changing the vocabulary,
re-place the params with `sharding.param_shardings(new_config, mesh)` (the vocab size, and
hence the shardings, changed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from tokenkit.models.config import ModelConfig

OUTPUT_EMBEDDING_MODES = ("preserve", "untie")


def padded_size(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple`."""
    if multiple < 1:
        raise ValueError(f"pad_to_multiple_of must be positive, got {multiple}.")
    return -(-n // multiple) * multiple


def embedding_matrices(config: ModelConfig, params: Mapping[str, Any]) -> tuple[Any, Any | None]:
    """(input embeddings `[V, D]`, output embeddings `[V, D]` or None when tied)."""
    inputs = params["embedder"]["embedding"]
    if config.tie_word_embeddings:
        return inputs, None
    return inputs, params["lm_head"]["kernel"].T


def _pad_rows(x: Any, rows: int) -> Any:
    extra = rows - x.shape[0]
    return jnp.pad(jnp.asarray(x), ((0, extra), (0, 0))) if extra else jnp.asarray(x)


def replace_vocabulary(
    config: ModelConfig,
    params: Mapping[str, Any],
    input_embeddings: Any,
    output_embeddings: Any | None = None,
    *,
    tokenizer_size: int | None = None,
    output_embeddings_mode: str = "preserve",
    pad_to_multiple_of: int = 64,
) -> tuple[ModelConfig, dict]:
    """Swaps in embeddings for a new tokenizer.

    Args:
      config, params: the model.
      input_embeddings: `[n, D]` rows for the new vocabulary.
      output_embeddings: `[n, D]` output rows (HF row layout); for untied models.
      tokenizer_size: the new tokenizer's length; more tokens than `n` is an error.
      output_embeddings_mode: "preserve" keeps the model's tied-ness (a tied model takes
        no output matrix; an untied one needs one); "untie" gives the model a separate
        lm_head, from `output_embeddings` or else the input embeddings (transposed).
      pad_to_multiple_of: rows are zero-padded to a multiple of this.

    Returns the new config (vocab_size = padded size, tie_word_embeddings per mode) and
    params (other entries shared, not copied).
    """
    if output_embeddings_mode not in OUTPUT_EMBEDDING_MODES:
        raise ValueError(
            f"output_embeddings_mode {output_embeddings_mode!r} unknown "
            f"(valid: {', '.join(OUTPUT_EMBEDDING_MODES)})."
        )
    n, d = input_embeddings.shape
    if d != config.hidden_size:
        raise ValueError(f"Embeddings have width {d}; the model's hidden size is {config.hidden_size}.")
    if tokenizer_size is not None and tokenizer_size > n:
        raise ValueError(
            f"The tokenizer has {tokenizer_size} tokens but the embedding matrix only {n} rows."
        )
    if output_embeddings is not None and tuple(output_embeddings.shape) != (n, d):
        raise ValueError(
            f"Output embeddings have shape {tuple(output_embeddings.shape)}; expected {(n, d)}."
        )
    untie = output_embeddings_mode == "untie"
    tied = config.tie_word_embeddings and not untie
    if tied and output_embeddings is not None:
        raise ValueError(
            "The model ties its embeddings; pass no output_embeddings, or use "
            "output_embeddings_mode='untie'."
        )
    if not tied and not untie and output_embeddings is None:
        raise ValueError(
            "The model has a separate lm_head: pass output_embeddings, or use "
            "output_embeddings_mode='untie' to initialise it from the input embeddings."
        )
    size = padded_size(n, pad_to_multiple_of)
    if size != n:
        logging.info("Padding vocabulary from %d to %d rows (multiple of %d).", n, size, pad_to_multiple_of)
    new_params = dict(params)
    new_params["embedder"] = {"embedding": _pad_rows(input_embeddings, size)}
    new_params.pop("lm_head", None)
    if not tied:
        source = output_embeddings if output_embeddings is not None else input_embeddings
        new_params["lm_head"] = {"kernel": _pad_rows(source, size).T}
    new_config = dataclasses.replace(config, vocab_size=size, tie_word_embeddings=tied)
    return new_config, new_params


def trim_vocabulary(config: ModelConfig, params: Mapping[str, Any], size: int) -> tuple[ModelConfig, dict]:
    """Drops vocabulary rows beyond `size` (e.g. padding, before export)."""
    if size > config.vocab_size:
        raise ValueError(f"Cannot trim a vocabulary of {config.vocab_size} rows to {size}.")
    new_params = dict(params)
    new_params["embedder"] = {"embedding": params["embedder"]["embedding"][:size]}
    if not config.tie_word_embeddings:
        new_params["lm_head"] = {"kernel": params["lm_head"]["kernel"][:, :size]}
    return dataclasses.replace(config, vocab_size=size), new_params
