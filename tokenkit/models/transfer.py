"""Tokenizer transfer: a model moved to a new tokenizer, in one function.

`transfer(config, params, source_tokenizer, target_tokenizer, ...)` is what both
`python -m tokenkit.zett` (zero-shot transfer to an HF checkpoint) and the trainer's
setup (the student of a transfer run) do to a model:

1. the embedding matrices come to the host, cut to the source tokenizer's size (rows
   past it are padding; a matrix with fewer rows than the tokenizer gets random rows,
   logged);
2. new rows for the target vocabulary are initialised (`init`: FVT, `models.fvt`, or a
   trained embedding hypernetwork, `models.hypernet`, or orthogonal matching pursuit,
   `models.omp`) for the input and, for untied models, the output embeddings;
3. the vocabulary is replaced (`surgery.replace_vocabulary`: padded to a multiple,
   tied or untied);
4. the config's special-token ids become the target tokenizer's (`with_special_tokens`),
   so `transformers`' `generate()` on an exported model stops at the family's end of turn;
5. with `expand_input_ids`, the input-id expansion of a byte-level target is built and its
   table (the source model's input embeddings) added as `params["expand_embedder"]`.

With the same tokenizer on both sides, steps 2-3 are skipped unless the vocabulary must
be untied or grown; step 4 always applies.

`add_tokens(tokenizer, tokens)` is the upstream's `tokens_to_add`: a copy of a target
tokenizer with more (regular) tokens. A target that *extends* the source (every source
id spelled the same, new ids after them) keeps each source row by id and initialises only
the new ids, so a model moved to its own tokenizer plus a few tokens is unchanged on the
old ones (even where two ids spell the same bytes, as SentencePiece byte-fallback
pieces do).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from tokenkit.byteify import ByteifyTokenizer
from tokenkit.models import expand as expand_lib
from tokenkit.models import fvt as fvt_lib
from tokenkit.models import hypernet as hypernet_lib
from tokenkit.models import omp as omp_lib
from tokenkit.models.config import ModelConfig
from tokenkit.models.side import stop_token_ids
from tokenkit.models.surgery import OUTPUT_EMBEDDING_MODES, embedding_matrices, replace_vocabulary

INIT_METHODS = ("fvt", "hypernet", "omp")


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """A model moved to `tokenizer`.

    Attributes:
      config: vocabulary padded, tied as `output_embeddings_mode` says, special-token
        ids of the target tokenizer.
      params: the new parameter tree (unchanged entries shared with the input).
      tokenizer: the target tokenizer.
      stats: how the new rows were initialised (None when no row was).
      expansion: the input-id expansion (None unless `expand_input_ids`).
    """

    config: ModelConfig
    params: dict
    tokenizer: ByteifyTokenizer
    stats: fvt_lib.FvtStats | None = None
    expansion: expand_lib.Expansion | None = None


def with_special_tokens(config: ModelConfig, tokenizer: ByteifyTokenizer) -> ModelConfig:
    """`config` with bos / eos / pad ids naming `tokenizer`'s tokens.

    eos lists every id that ends a reply (the family's eos and end-of-turn token), as
    Llama 3's own configs do, so generation stops at the end of a turn.
    """
    stops = stop_token_ids(tokenizer)
    eos: int | tuple[int, ...] | None = None
    if len(stops) == 1:
        eos = stops[0]
    elif stops:
        eos = stops
    return dataclasses.replace(
        config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )


def _host(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def fit_rows(matrix: np.ndarray, n: int, seed: int, what: str) -> np.ndarray:
    """Rows for exactly `n` tokens: trailing padding rows dropped, missing rows random
    (with the mean and std of the existing ones)."""
    if len(matrix) >= n:
        return matrix[:n]
    logging.warning(
        "%s has %d embedding rows for %d tokenizer entries: adding %d random rows "
        "(mean/std of the existing ones).", what, len(matrix), n, n - len(matrix),
    )
    rng = np.random.default_rng(seed)
    extra = rng.standard_normal((n - len(matrix), matrix.shape[1])) * matrix.std(0) + matrix.mean(0)
    return np.concatenate([matrix, extra.astype(matrix.dtype)])


def add_tokens(tokenizer: ByteifyTokenizer, tokens: Sequence[str]) -> ByteifyTokenizer:
    """A copy of `tokenizer` with `tokens` added after its vocabulary (the upstream's
    `tokens_to_add`).

    Tokens are raw text, as in Hugging Face's `add_tokens`, and are added as regular
    (not special) tokens, as the upstream does: text containing one is encoded with it,
    and alignment treats it as text. Tokens the tokenizer already has keep their ids
    (logged). The original tokenizer is not modified (a run's teacher may share it).

    Raises:
      ValueError: `tokens` is a string rather than a list, or holds an empty or
        non-string entry.
    """
    if isinstance(tokens, str):
        raise ValueError(f"tokens_to_add must be a list of tokens, got the string {tokens!r}.")
    bad = [t for t in tokens if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"tokens_to_add holds entries that are not non-empty strings: {bad!r}.")
    extended = copy.deepcopy(tokenizer)
    added = extended.add_tokens(list(tokens))
    logging.info(
        "Added %d token(s) to %s (%d were already in its vocabulary): %s; size %d -> %d.",
        added, tokenizer.spec, len(tokens) - added, list(tokens), len(tokenizer), len(extended),
    )
    return extended


def extended_prefix(source: ByteifyTokenizer, target: ByteifyTokenizer) -> int:
    """`len(source)` when `target` extends `source` (more ids, the first `len(source)`
    spelled the same), else 0."""
    n = len(source)
    if len(target) <= n:
        return 0
    ids = range(n)
    return n if source.convert_ids_to_tokens(ids) == target.convert_ids_to_tokens(ids) else 0


def check_options(init: str, output_embeddings_mode: str, slot_tokens: str) -> None:
    """Raises for an unknown option value, naming the valid ones (cheap: call it before
    loading weights)."""
    for name, value, valid in (
        ("init", init, INIT_METHODS),
        ("output_embeddings_mode", output_embeddings_mode, OUTPUT_EMBEDDING_MODES),
        ("slot_tokens", slot_tokens, fvt_lib.SLOT_TOKEN_MODES),
    ):
        if value not in valid:
            raise ValueError(f"Unknown {name} {value!r}; valid: {', '.join(valid)}.")


def transfer(
    config: ModelConfig,
    params: dict,
    source_tokenizer: ByteifyTokenizer,
    target_tokenizer: ByteifyTokenizer,
    *,
    init: str = "fvt",
    output_embeddings_mode: str = "preserve",
    pad_to_multiple_of: int = 64,
    expand_input_ids: bool = False,
    seed: int = 0,
    allow_exact_match: bool = True,
    slot_tokens: str = "special",
    hypernet: hypernet_lib.TrainedHypernet | None = None,
) -> TransferResult:
    """Moves a model from `source_tokenizer` to `target_tokenizer` (see the module docstring).

    Args:
      config, params: the model (params may be sharded device arrays; only the
        embedding matrices come to the host).
      source_tokenizer: the tokenizer the model was trained with.
      target_tokenizer: the new tokenizer (the same object, or an equal spec of equal
        size, for none; a tokenizer extended by `add_tokens` keeps the old rows by id).
      init: how new embedding rows start, one of `INIT_METHODS`.
      output_embeddings_mode: `preserve` the model's tied-ness or `untie`.
      pad_to_multiple_of: the new vocabulary is zero-padded to a multiple of this.
      expand_input_ids: build the input-id expansion (byte-level targets).
      seed: seed of the random rows (FVT's fallback, missing rows).
      allow_exact_match, slot_tokens: see `fvt.fvt_mapping`.
      hypernet: the trained hypernetwork of `init="hypernet"` (`hypernet.TrainedHypernet`).
    """
    check_options(init, output_embeddings_mode, slot_tokens)
    if (init == "hypernet") != (hypernet is not None):
        raise ValueError(
            f"init={init!r} with {'a' if hypernet is not None else 'no'} hypernetwork: "
            "init='hypernet' needs one (hypernet=TrainedHypernet.load(DIR)), other inits none."
        )
    same = target_tokenizer is source_tokenizer or (
        source_tokenizer.spec is not None and source_tokenizer.spec == target_tokenizer.spec
        and len(source_tokenizer) == len(target_tokenizer)
    )
    stats = None
    inputs, outputs = embedding_matrices(config, params)
    needs_surgery = (
        not same
        or output_embeddings_mode == "untie" and config.tie_word_embeddings
        or len(target_tokenizer) > config.vocab_size
    )
    new_config, new_params = config, dict(params)
    if needs_surgery:
        n = len(source_tokenizer)
        inputs = fit_rows(_host(inputs), n, seed, "The model")
        outputs = None if outputs is None else fit_rows(_host(outputs), n, seed, "The model's lm_head")
        if not same:
            if hypernet is not None:
                result = hypernet_lib.transfer_embeddings(
                    hypernet, source_tokenizer, target_tokenizer, inputs, outputs,
                    slot_tokens=slot_tokens,
                )
            elif init == "omp":  # options (k, donor model) bound to omp.OmpOptions
                result = omp_lib.transfer_embeddings(
                    source_tokenizer, target_tokenizer, inputs, outputs, seed=seed,
                    allow_exact_match=allow_exact_match, slot_tokens=slot_tokens,
                )
            else:
                result = fvt_lib.fvt(
                    source_tokenizer, target_tokenizer, inputs, output_embeddings=outputs, seed=seed,
                    allow_exact_match=allow_exact_match, slot_tokens=slot_tokens,
                )
            new_inputs, new_outputs, stats = result.input_embeddings, result.output_embeddings, result.stats
            kept = extended_prefix(source_tokenizer, target_tokenizer)
            if kept:  # the old ids keep their own rows; only the added ones are new
                logging.info("%s extends %s: its first %d rows are kept, %d initialised by %s.",
                             target_tokenizer.spec, source_tokenizer.spec, kept,
                             len(target_tokenizer) - kept, init)
                new_inputs = np.concatenate([inputs, np.asarray(new_inputs)[kept:].astype(inputs.dtype)])
                if outputs is not None:
                    new_outputs = np.concatenate([outputs, np.asarray(new_outputs)[kept:].astype(outputs.dtype)])
            inputs, outputs = new_inputs, new_outputs
            logging.info("%s %s -> %s: %s", init, source_tokenizer.spec, target_tokenizer.spec, stats)
        new_config, new_params = replace_vocabulary(
            config, params, inputs, outputs, tokenizer_size=len(target_tokenizer),
            output_embeddings_mode=output_embeddings_mode, pad_to_multiple_of=pad_to_multiple_of,
        )
    expansion = None
    if expand_input_ids:
        if same:
            raise ValueError(
                "expand_input_ids needs a target tokenizer different from the model's own "
                f"({source_tokenizer.spec}): it adds the old tokens' embeddings to new ones."
            )
        expansion = expand_lib.build_expansion(target_tokenizer, source_tokenizer)
        new_params["expand_embedder"] = {"embedding": expansion.embedding_table(
            _host(params["embedder"]["embedding"]), pad_to_multiple_of
        )}
    return TransferResult(
        config=with_special_tokens(new_config, target_tokenizer),
        params=new_params,
        tokenizer=target_tokenizer,
        stats=stats,
        expansion=expansion,
    )
