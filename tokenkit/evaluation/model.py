"""`EvalModel`: one model as evaluation sees it (params, tokenizer, how to call it).

Every evaluation path (log-likelihoods, generation, ensembles) needs the same few things
about a model: its `Transformer` module and params, its `ByteifyTokenizer`, whether to
put bos before a text, which logits are real tokens (rows past the tokenizer's size are
padding), and, for byte-level models, the input-id expansion. `EvalModel` bundles them
and offers one jittable forward, so the paths above never disagree on these details.

It is made either from a checkpoint directory (`load_eval_model`, what
`python -m tokenkit.eval` and `--model tokenkit` use) or from in-memory params
(`EvalModel.create`, what the trainer uses at its `eval_interval`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from tokenkit import byteify, prompts
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.models import (
    KVCache,
    ModelConfig,
    Transformer,
    load_config,
    load_pretrained,
    param_shardings,
    resolve_checkpoint_dir,
    shard,
)
from tokenkit.models.expand import Expansion, build_expansion
from tokenkit.models.transformer import make_transformer

Array = jax.Array

# Finite (so that sums and `0 * x` stay finite), far below any real logit.
MASKED_LOGIT = -1e9


@dataclasses.dataclass(frozen=True)
class Forward:
    """A model's forward pass for evaluation; hashable, so it can key compiled functions.

    Attributes:
      module: the `Transformer`.
      num_real_tokens: the tokenizer's size; logits of vocabulary rows beyond it
        (padding) are set to `MASKED_LOGIT`, since no text contains those ids.
    """

    module: Transformer
    num_real_tokens: int

    def __call__(
        self,
        params: Any,
        input_ids: Array,
        attention_mask: Array,
        *,
        cache: KVCache | None = None,
        expansion: Expansion | None = None,
        expanded_input_ids: Array | None = None,
        return_logits: bool = True,
    ) -> tuple[Array | None, KVCache | None]:
        """float32 logits `[B, T, V]` (vocabulary padding masked; None when not
        `return_logits`, e.g. to only fill a cache) and the updated cache.

        Jittable; `params` and `expansion` are arguments rather than closed over, so
        jitted callers take them as inputs instead of baking them in as constants. For
        expanded models `expanded_input_ids` defaults to
        `expansion.apply(input_ids, attention_mask)`; decoding passes them explicitly
        (computed from a window of the last tokens).
        """
        if expanded_input_ids is None and expansion is not None:
            expanded_input_ids = expansion.apply(input_ids, attention_mask)
        out = self.module.apply(
            {"params": params},
            input_ids,
            attention_mask,
            cache=cache,
            expanded_input_ids=expanded_input_ids,
            return_logits=return_logits,
        )
        if not return_logits:
            return None, out.cache
        logits = out.logits.astype(jnp.float32)
        real = jnp.arange(logits.shape[-1]) < self.num_real_tokens
        return jnp.where(real, logits, MASKED_LOGIT), out.cache


@dataclasses.dataclass(frozen=True, eq=False)
class EvalModel:
    """A model ready for evaluation. Build with `EvalModel.create` or `load_eval_model`.

    Attributes:
      config: the model's `ModelConfig`.
      params: its parameters (with `expand_embedder` when `expansion` is set).
      tokenizer: the `ByteifyTokenizer` whose ids the model reads.
      module: the `Transformer` module (compute dtype from `dtype`).
      add_bos: whether texts are scored / prompted with the family's bos in front.
      expansion: input-id expansion for byte-level models, or None.
      name: a label for logs (the checkpoint path, or what the caller passed).
    """

    config: ModelConfig
    params: Any
    tokenizer: ByteifyTokenizer
    module: Transformer
    add_bos: bool = True
    expansion: Expansion | None = None
    name: str = "model"

    @classmethod
    def create(
        cls,
        config: ModelConfig,
        params: Any,
        tokenizer: ByteifyTokenizer | str,
        *,
        add_bos: bool = True,
        dtype: str = "float32",
        expansion: Expansion | None = None,
        name: str = "model",
    ) -> EvalModel:
        """An `EvalModel` from in-memory parts (the trainer's `(config, params, tokenizer)`).

        Raises:
          ValueError: the tokenizer has more ids than the model has embedding rows, or
            `add_bos` is set for a family without bos.
        """
        if isinstance(tokenizer, str):
            tokenizer = byteify.load_byteify_tokenizer(tokenizer)
        check_tokenizer_fits(tokenizer, config, name)
        if add_bos and tokenizer.bos_token_id is None:
            logging.info(
                "%s: family %s has no bos token; add_bos=True adds nothing.",
                name, tokenizer.family.name,
            )
        if expansion is not None and "expand_embedder" not in params:
            raise ValueError(
                f"{name}: an expansion was given but the params have no expand_embedder table."
            )
        module = make_transformer(config, dtype=dtype, logits_dtype="float32")
        return cls(
            config=config,
            params=params,
            tokenizer=tokenizer,
            module=module,
            add_bos=add_bos,
            expansion=expansion,
            name=name,
        )

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

    @functools.cached_property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a generated reply: the family's eos and the first token of its eot."""
        family = self.tokenizer.family
        ids = []
        for slot in ("eos", "eot"):
            token = family.first_token(slot)
            if token is not None:
                ids.append(self.tokenizer.convert_tokens_to_ids(token))
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        return tuple(sorted(set(ids)))

    @property
    def forward_fn(self) -> Forward:
        """The model's forward as a hashable value (module + tokenizer size): jitted
        callers key their compiled functions on it, so models with new params (the
        trainer's next evaluation) reuse them."""
        return Forward(self.module, len(self.tokenizer))

    def forward(
        self,
        params: Any,
        input_ids: Array,
        attention_mask: Array,
        *,
        cache: KVCache | None = None,
        expansion: Expansion | None = None,
        expanded_input_ids: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        """`Forward.__call__` of this model (see there)."""
        return self.forward_fn(
            params, input_ids, attention_mask, cache=cache, expansion=expansion,
            expanded_input_ids=expanded_input_ids,
        )

    @property
    def prefix_id(self) -> int:
        """The id that conditions a text with no context: bos, else the eos token (as
        lm-eval's `prefix_token_id`)."""
        if self.bos_id is not None:
            return int(self.bos_id)
        eos = self.tokenizer.eos_token_id
        return self.pad_id if eos is None else int(eos)

    def encode(self, text: str, *, bos: bool | None = None) -> list[int]:
        """Ids of `text`; slot markers (`<|<bos>|>`, ...) become the family's tokens.

        The result starts with bos exactly when `bos` (default: `add_bos`) is set and the
        family has one: a leading bos is added, or removed, as needed, so a prompt
        written with `<|<bos>|>` obeys a model's `add_bos=False` too.
        """
        ids = list(prompts.encode_prompt(text, self.tokenizer).ids)
        bos_id = self.tokenizer.bos_token_id
        if bos_id is None:
            return ids
        want = self.add_bos if bos is None else bos
        starts = bool(ids) and ids[0] == bos_id
        if want and not starts:
            return [bos_id] + ids
        if not want and starts:
            return ids[1:]
        return ids


def check_tokenizer_fits(tokenizer: ByteifyTokenizer, config: ModelConfig, name: str) -> None:
    """Raises if the tokenizer has more ids than the model has embedding rows."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"Tokenizer {tokenizer!r} has {len(tokenizer)} ids but the model {name} has only "
            f"{config.vocab_size} embedding rows; transfer the model to this tokenizer first "
            "(python -m tokenkit.zett)."
        )


def load_eval_model(
    pretrained: str,
    tokenizer: str | ByteifyTokenizer,
    *,
    add_bos: bool = True,
    dtype: str = "float32",
    param_dtype: str | None = "float32",
    expand_model: str | None = None,
    expand_tokenizer: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> EvalModel:
    """Loads a checkpoint directory (or hub id) for evaluation.

    Args:
      pretrained: HF-format model directory or hub id.
      tokenizer: tokenizer spec (`PATH:source=FAMILY[...]`) or a loaded tokenizer.
      add_bos: put bos before texts.
      dtype: compute dtype.
      param_dtype: dtype the parameters are loaded in (None keeps the stored one).
      expand_model, expand_tokenizer: for a byte-level model trained with input-id
        expansion, the model whose input embeddings form the expansion table and the
        spec of its tokenizer (upstream `expand_model.pretrained_model_name_or_path`,
        `expand_model.tokenizer_name`). Both or neither.
      mesh: place the parameters on this mesh (default: the first device).
    """
    if (expand_model is None) != (expand_tokenizer is None):
        raise ValueError(
            "expand_model and expand_tokenizer go together: got "
            f"expand_model={expand_model!r}, expand_tokenizer={expand_tokenizer!r}"
        )
    if isinstance(tokenizer, str):
        tokenizer = byteify.load_byteify_tokenizer(tokenizer)
    # The cheap check first: a tokenizer the model cannot embed fails before any weights load.
    check_tokenizer_fits(tokenizer, load_config(resolve_checkpoint_dir(pretrained)), str(pretrained))
    config, params = load_pretrained(pretrained, mesh=mesh, dtype=param_dtype)
    expansion = None
    if expand_model is not None:
        params, expansion = attach_expansion(
            params, tokenizer, expand_model, expand_tokenizer, param_dtype=param_dtype
        )
        if mesh is not None:
            table_sharding = param_shardings(config, mesh, params=params)["expand_embedder"]
            params["expand_embedder"] = shard(params["expand_embedder"], table_sharding)
    return EvalModel.create(
        config,
        params,
        tokenizer,
        add_bos=add_bos,
        dtype=dtype,
        expansion=expansion,
        name=str(pretrained),
    )


def attach_expansion(
    params: dict,
    tokenizer: ByteifyTokenizer,
    expand_model: str,
    expand_tokenizer: str | ByteifyTokenizer,
    *,
    param_dtype: str | None = "float32",
) -> tuple[dict, Expansion]:
    """Adds input-id expansion to a byte-level model's params.

    The expansion table is the input embedding matrix of `expand_model` (the model the
    byte-level one was transferred from), looked up through `tokenkit.models.expand`
    with `expand_tokenizer`. Checkpoints in the HF format cannot hold this table, so it
    is rebuilt from the old model at load time, as upstream did.

    Returns:
      (params with `expand_embedder/embedding`, the `Expansion` lookup).
    """
    if isinstance(expand_tokenizer, str):
        expand_tokenizer = byteify.load_byteify_tokenizer(expand_tokenizer)
    expansion = build_expansion(tokenizer, expand_tokenizer)
    _, old_params = load_pretrained(expand_model, dtype=param_dtype)
    table = expansion.embedding_table(jax.device_get(old_params["embedder"]["embedding"]))
    logging.info(
        "Input-id expansion from %s (%s): table of %d rows.", expand_model, expand_tokenizer,
        table.shape[0],
    )
    return {**params, "expand_embedder": {"embedding": jnp.asarray(table)}}, expansion
