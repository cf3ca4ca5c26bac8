"""`EvalModel`: a `ModelSide` with its parameters, as evaluation uses it.

Every evaluation path (log-likelihoods, generation, ensembles) runs models through
their side's one forward pass (`tokenkit.models.side`); an `EvalModel` is that side
plus the parameters to run it with.

It is made either from a checkpoint directory (`load_eval_model`, what
`python -m tokenkit.eval` and `--model tokenkit` use) or from a side and in-memory
params (`EvalModel.of`, what the trainer uses at its `eval_interval`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from tokenkit import byteify
from tokenkit.byteify import ByteifyTokenizer
from tokenkit.models import (
    load_config,
    load_pretrained,
    param_shardings,
    resolve_checkpoint_dir,
    shard,
)
from tokenkit.models import hf_expansion
from tokenkit.models.expand import Expansion, build_expansion
from tokenkit.models.side import ModelSide, check_tokenizer_fits


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class EvalModel(ModelSide):
    """A `ModelSide` and its parameters (with `expand_embedder` when `expansion` is set)."""

    params: Any

    def __post_init__(self) -> None:
        if self.expansion is not None and "expand_embedder" not in self.params:
            raise ValueError(
                f"{self.name}: an expansion was given but the params have no expand_embedder table."
            )

    @classmethod
    def of(cls, side: ModelSide, params: Any) -> EvalModel:
        """The model of `side` with `params`."""
        fields = {f.name: getattr(side, f.name) for f in dataclasses.fields(ModelSide)}
        return cls(**fields, params=params)

    @classmethod
    def build(
        cls,
        config: Any,
        params: Any,
        tokenizer: ByteifyTokenizer | str,
        *,
        add_bos: bool = True,
        dtype: str = "float32",
        expansion: Expansion | None = None,
        name: str = "model",
    ) -> EvalModel:
        """An `EvalModel` from in-memory parts (config, params, tokenizer or its spec).

        Raises:
          ValueError: the tokenizer has more ids than the model has embedding rows.
        """
        if isinstance(tokenizer, str):
            tokenizer = byteify.load_byteify_tokenizer(tokenizer)
        if add_bos and tokenizer.bos_token_id is None:
            logging.info(
                "%s: family %s has no bos token; add_bos=True adds nothing.",
                name, tokenizer.family.name,
            )
        side = ModelSide.create(config, tokenizer, dtype=dtype, expansion=expansion,
                                add_bos=add_bos, name=name)
        return cls.of(side, params)


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
        `expand_model.tokenizer_name`). Both or neither; not needed for tokenkit's
        exports, which carry their expansion (`models.hf_expansion`).
      mesh: place the parameters on this mesh (default: this process's first device).
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
    elif (stored := hf_expansion.load_expansion(resolve_checkpoint_dir(pretrained))) is not None:
        # A byte-level export that carries its expansion (tokenkit.training.export).
        table, expansion = stored
        params = {**params, "expand_embedder": {"embedding": jnp.asarray(
            table, None if param_dtype is None else jnp.dtype(param_dtype))}}
    if expansion is not None and mesh is not None:
        table_sharding = param_shardings(config, mesh, params=params)["expand_embedder"]
        params["expand_embedder"] = shard(params["expand_embedder"], table_sharding)
    return EvalModel.build(
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
