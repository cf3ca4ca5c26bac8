"""`ModelSide`: one model as every path uses it, with the one forward pass.

Training (the student and the teacher of a run), scoring, generation, the lm-eval
backend and the in-run evaluator all need the same few things about a model: its
tokenizer, config and `Transformer` module, the input-id expansion of byte-level
students, which logits are real tokens (rows past the tokenizer's size are padding),
which matrix is the output embedding, and how a text becomes ids (bos or not). A
`ModelSide` bundles them and offers one forward pass, `side.forward(params, ids,
mask, ...)`, that applies the expansion and masks the padded vocabulary rows
(`tokenkit.logits`), so these paths never disagree on these details.

A side holds no parameters: the trainer's change every step, and jitted functions take
them as arguments. `side.forward` is a hashable value (module + tokenizer size), so
compiled functions keyed on it are reused by later calls with new parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from tokenkit import prompts
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.logits import mask_padded_vocab
from tokenkit.models.config import ModelConfig
from tokenkit.models.expand import Expansion
from tokenkit.models.surgery import embedding_matrices
from tokenkit.models.transformer import KVCache, Transformer, TransformerOutput, make_transformer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Forward:
    """A model's forward pass; hashable, so it can key compiled functions.

    Attributes:
      module: the `Transformer`.
      num_real_tokens: the tokenizer's size; logits of vocabulary rows beyond it
        (padding) are masked, since no text contains those ids.
    """

    module: Transformer
    num_real_tokens: int

    def unstacked(self) -> Forward:
        """This forward with its layers unrolled over per-layer parameters (its params
        through `transformer.unstack_layers`): for decoding loops, see
        `Transformer.layer_loop`."""
        return Forward(self.module.clone(layer_loop="unstacked"), self.num_real_tokens)

    def __call__(
        self,
        params: Any,
        input_ids: Array,
        attention_mask: Array,
        *,
        lora: Any = None,
        cache: KVCache | None = None,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        expansion: Expansion | None = None,
        expanded_input_ids: Array | None = None,
        output_hidden_states: bool = False,
        output_qkv: bool = False,
        return_logits: bool = True,
        logit_positions: Array | None = None,
    ) -> TransformerOutput:
        """The model's outputs; logits float32 `[B, T, V]` with padded rows masked.

        Jittable; `params`, `lora` and `expansion` are arguments rather than closed over,
        so jitted callers take them as inputs instead of baking them in as constants.
        For expanded models `expanded_input_ids` defaults to
        `expansion.apply(input_ids, attention_mask)`; decoding passes them explicitly
        (computed from a window of the last tokens); packed rows (`positions`,
        `segment_ids`, see `Transformer.__call__`) pass them too, since expansion reads
        the tokens before each one in its own sequence. `return_logits=False` only fills a
        cache (or returns hidden states); `logit_positions` `[B, M]` computes the logits
        only there (`[B, M, V]`).
        """
        if expanded_input_ids is None and expansion is not None:
            if positions is not None or segment_ids is not None:
                raise ValueError("Packed rows of an expanded model need their expanded_input_ids "
                                 "(each sequence's own, computed before packing).")
            expanded_input_ids = expansion.apply(input_ids, attention_mask)
        variables = {"params": params}
        if lora:
            variables["lora"] = lora
        out = self.module.apply(
            variables,
            input_ids,
            attention_mask,
            cache=cache,
            positions=positions,
            segment_ids=segment_ids,
            expanded_input_ids=expanded_input_ids,
            output_hidden_states=output_hidden_states,
            output_qkv=output_qkv,
            return_logits=return_logits,
            logit_positions=logit_positions,
        )
        if out.logits is None:
            return out
        vocab_size = out.logits.shape[-1]
        mask = None
        if self.num_real_tokens < vocab_size:
            mask = jnp.arange(vocab_size) < self.num_real_tokens
        return dataclasses.replace(out, logits=mask_padded_vocab(out.logits, mask))


def output_embeddings(config: ModelConfig, params: Any) -> Array:
    """The unembedding matrix `[V, D]` (logits = hidden @ E.T): the input embeddings of a
    tied model, else the lm_head kernel transposed."""
    inputs, outputs = embedding_matrices(config, params)
    return inputs if outputs is None else outputs


def check_tokenizer_fits(tokenizer: ByteifyTokenizer, config: ModelConfig, name: str) -> None:
    """Raises if the tokenizer has more ids than the model has embedding rows."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"Tokenizer {tokenizer!r} has {len(tokenizer)} ids but the model {name} has only "
            f"{config.vocab_size} embedding rows; transfer the model to this tokenizer first "
            "(python -m tokenkit.zett)."
        )


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ModelSide:
    """A model without its parameters: tokenizer, config, module, expansion, text rules.

    Build with `ModelSide.create`. Attributes:
      tokenizer: the `ByteifyTokenizer` whose ids the model reads.
      config: the model's `ModelConfig` (vocab_size: the padded embedding rows).
      module: the `Transformer` (compute dtype, remat policy, LoRA scale).
      expansion: input-id expansion for byte-level models, or None (the params then
        need `expand_embedder`).
      add_bos: whether texts are scored / prompted with the family's bos in front.
      name: a label for logs and errors.
    """

    tokenizer: ByteifyTokenizer
    config: ModelConfig
    module: Transformer
    expansion: Expansion | None = None
    add_bos: bool = True
    name: str = "model"

    @classmethod
    def create(
        cls,
        config: ModelConfig,
        tokenizer: ByteifyTokenizer,
        *,
        dtype: str = "float32",
        param_dtype: str = "float32",
        remat_policy: str = "none",
        attention_impl: str = "einsum",
        lora_alpha: float | None = None,
        expansion: Expansion | None = None,
        add_bos: bool = True,
        name: str = "model",
    ) -> ModelSide:
        """A side for `config` read through `tokenizer`.

        Raises:
          ValueError: the tokenizer has more ids than the model has embedding rows.
        """
        check_tokenizer_fits(tokenizer, config, name)
        module = make_transformer(
            config, dtype=dtype, param_dtype=param_dtype, remat_policy=remat_policy,
            logits_dtype="float32", lora_alpha=lora_alpha, attention_impl=attention_impl,
        )
        return cls(tokenizer=tokenizer, config=config, module=module, expansion=expansion,
                   add_bos=add_bos, name=name)

    # -- the forward pass ----------------------------------------------------------

    @property
    def forward(self) -> Forward:
        """The forward pass as a hashable value: `side.forward(params, ids, mask, ...)`.
        Pass `expansion=side.expansion` to expand (see `Forward.__call__`)."""
        return Forward(self.module, len(self.tokenizer))

    def output_embeddings(self, params: Any) -> Array:
        """The unembedding matrix `[V, D]` of this model's `params`."""
        return output_embeddings(self.config, params)

    @property
    def num_real_tokens(self) -> int:
        return len(self.tokenizer)

    # -- text ----------------------------------------------------------------------

    @property
    def bos_id(self) -> int | None:
        """The id put in front of texts: bos when `add_bos` and the family has one."""
        return self.tokenizer.bos_token_id if self.add_bos else None

    @property
    def pad_id(self) -> int:
        """Id used for padding positions (masked out, so any valid id would do)."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return 0 if pad is None else int(pad)

    @property
    def prefix_id(self) -> int:
        """The id that conditions a text with no context: bos, else the eos token (as
        lm-eval's `prefix_token_id`)."""
        if self.bos_id is not None:
            return int(self.bos_id)
        eos = self.tokenizer.eos_token_id
        return self.pad_id if eos is None else int(eos)

    @functools.cached_property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a generated reply: the family's eos and the first token of its eot."""
        return stop_token_ids(self.tokenizer)

    def encode(self, text: str, *, bos: bool | None = None) -> list[int]:
        """Ids of `text` (slot markers filled), starting with bos exactly when `bos`
        (default: `add_bos`) is set and the family has one."""
        return prompts.encode_text(text, self.tokenizer, bos=self.add_bos if bos is None else bos)


def stop_token_ids(tokenizer: ByteifyTokenizer) -> tuple[int, ...]:
    """The ids that end a reply of a model using `tokenizer`: the family's eos, the first
    token of its end-of-turn slot, and the tokenizer's eos."""
    family = tokenizer.family
    ids = []
    for slot in ("eos", "eot"):
        token = family.first_token(slot)
        if token is not None:
            ids.append(tokenizer.convert_tokens_to_ids(token))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return tuple(sorted(set(ids)))
