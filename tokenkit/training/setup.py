"""Everything a run is made of before its first step: tokenizers, models, parameters.

Three setups share this code (the trainer picks one from its arguments):

- same-tokenizer training: one model, one tokenizer (SFT / pretraining; the tiny
  teacher is made this way, from a random initialisation);
- tokenizer transfer: the student is the model with the *target* tokenizer's
  embeddings initialised by FVT, the teacher is the same model with its original
  tokenizer (self-distillation);
- cross-tokenizer distillation: a separate teacher model and tokenizer.

Parameters are split once into a trainable tree (fp32 master weights, in the optimizer)
and a frozen tree (compute dtype, never differentiated): the teacher's parameters and
the student's frozen part. In `lora` and `embeddings` modes the teacher of a
self-distillation run shares the student's frozen weights instead of holding a copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokenkit import losses as losses_lib
from tokenkit import tokenizer_info
from tokenkit.byteify import ByteifyTokenizer, load_byteify_tokenizer
from tokenkit.models import (
    LoraConfig,
    ModelConfig,
    Transformer,
    from_hf_dict,
    init_lora,
    init_params,
    load_pretrained,
    make_transformer,
    param_shardings,
    replace_vocabulary,
    trainable_mask,
)
from tokenkit.models import expand as expand_lib
from tokenkit.models import fvt as fvt_lib
from tokenkit.models.sharding import logical_axis_rules, logical_to_spec
from tokenkit.training import params as params_lib

TRAIN_MODES = ("full", "lora", "embeddings")
OUTPUT_EMBEDDING_MODES = ("preserve", "untie")
EMBEDDING_KEYS = ("embedder", "lm_head")


@gin.configurable
def random_init_config(
    architecture: str = "llama",
    *,
    vocab_size: int,
    hidden_size: int = 256,
    intermediate_size: int = 768,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    rope_theta: float = 10_000.0,
    **extra_hf_fields: Any,
) -> ModelConfig:
    """A model config from HF config.json field names, for training from scratch."""
    return from_hf_dict({
        "model_type": architecture,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
        "rope_theta": rope_theta,
        **extra_hf_fields,
    })


@dataclasses.dataclass
class Side:
    """One model of the run: its tokenizer, config, Flax module and constants."""

    tokenizer: ByteifyTokenizer
    config: ModelConfig
    model: Transformer
    constants: losses_lib.TokenizerConstants


@dataclasses.dataclass
class RunSetup:
    """The built run. `trainable`/`frozen` are the two parameter trees:

    trainable = {"student": ..., "lora": ..., "loss": ...} (each may be empty)
    frozen    = {"student": ..., "teacher": ...}
    `teacher_shares_student` means the teacher's parameters are the student's frozen
    ones with `frozen["teacher"]` (its embeddings) laid over them.
    """

    student: Side
    teacher: Side | None
    trainable: dict
    frozen: dict
    trainable_shardings: dict
    frozen_shardings: dict
    losses: tuple[losses_lib.Loss, ...]
    teacher_shares_student: bool
    lora_config: LoraConfig | None
    expansion: Any | None
    mined_mapping: np.ndarray | None
    original_student_tokenizer: ByteifyTokenizer
    fvt_stats: Any | None
    rules: Any
    pair_data: Any | None

    def student_params(self, trainable: Mapping, frozen: Mapping) -> dict:
        """The student's full parameter tree (without LoRA adapters)."""
        return params_lib.merge(trainable.get("student", {}), frozen.get("student", {}))

    def teacher_params(self, trainable: Mapping, frozen: Mapping) -> dict:
        del trainable  # the teacher never trains
        if self.teacher_shares_student:
            base = {k: v for k, v in frozen["student"].items()
                    if k not in EMBEDDING_KEYS and k != "expand_embedder"}
            return {**base, **frozen["teacher"]}
        return dict(frozen["teacher"])


def _trim_or_pad_embeddings(emb: np.ndarray, n: int, seed: int, what: str) -> np.ndarray:
    """Rows for exactly `n` tokens: trailing padding rows dropped, missing rows random."""
    if len(emb) >= n:
        return emb[:n]
    logging.warning(
        "%s has %d embedding rows for %d tokenizer entries: adding %d random rows "
        "(mean/std of the existing ones).", what, len(emb), n, n - len(emb),
    )
    rng = np.random.default_rng(seed)
    extra = rng.standard_normal((n - len(emb), emb.shape[1])) * emb.std(0) + emb.mean(0)
    return np.concatenate([emb, extra.astype(emb.dtype)])


def build_constants(
    tokenizer: ByteifyTokenizer, config: ModelConfig, space_mask_mode: str
) -> losses_lib.TokenizerConstants:
    """Space and vocabulary masks over the model's (padded) vocabulary."""
    n = len(tokenizer)
    if n > config.vocab_size:
        raise ValueError(
            f"Tokenizer {tokenizer!r} has {n} tokens but the model's embedding matrix only "
            f"{config.vocab_size} rows."
        )
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    space = losses_lib.build_space_mask(
        tokens, tokenizer.all_special_ids, space_mask_mode=space_mask_mode,
        padded_size=config.vocab_size,
    )
    eos = tokenizer.eos_token_id
    return losses_lib.TokenizerConstants(
        space_mask=jnp.asarray(space),
        vocab_mask=jnp.asarray(losses_lib.build_vocab_mask(n, config.vocab_size)),
        eos_token_id=-1 if eos is None else int(eos),
    )


def _host(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _specs_like(tree: Any, mesh: Mesh, logical: Any, rules: Any) -> Any:
    return jax.tree.map(
        lambda axes, x: NamedSharding(mesh, logical_to_spec(tuple(axes), np.shape(x), mesh, rules)),
        logical, tree, is_leaf=lambda x: isinstance(x, tuple),
    )


def _replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


@gin.configurable(denylist=["mesh", "loss_names", "seed"])
def build_run(
    mesh: Mesh,
    loss_names: Sequence[str],
    seed: int,
    *,
    student_model: str | None = None,
    student_tokenizer: str,
    student_config: ModelConfig | None = None,
    target_tokenizer: str | None = None,
    teacher_model: str | None = None,
    teacher_tokenizer: str | None = None,
    train_model_mode: str = "full",
    train_embeddings: bool = True,
    lora_rank: int = 64,
    lora_alpha: float = 64.0,
    output_embeddings_mode: str = "preserve",
    pad_to_multiple_of: int = 64,
    expand_input_ids: bool = False,
    space_mask_mode: str = "space+tab+newline+special",
    dtype: str = "bfloat16",
    remat_policy: str = "none",
    tokenizer_pair_data_path: str | None = None,
) -> RunSetup:
    """Loads (or initialises) the models and builds the parameter trees of a run.

    Args:
      student_model: HF-format directory or hub id of the student's initial weights; None
        with `student_config` trains from a random initialisation.
      student_tokenizer: the tokenizer spec the student model was trained with.
      target_tokenizer: transfer the student to this tokenizer spec (FVT-initialised
        embeddings); None keeps `student_tokenizer`.
      teacher_model, teacher_tokenizer: a separate teacher (cross-tokenizer distillation);
        None makes the teacher the student model with its original tokenizer.
      train_model_mode: `full`, `lora` (adapters, plus embeddings if `train_embeddings`)
        or `embeddings` (embeddings only).
      output_embeddings_mode: `preserve` the model's tied-ness or `untie`.
      expand_input_ids: for byte-level targets, add the original embedding of the
        longest original token ending at each byte (frozen).
      dtype: compute dtype (and storage dtype of frozen weights); trainable weights are
        fp32 masters.
      tokenizer_pair_data_path: a teacher/student pair directory (see
        tools/compute_tokenizer_info.py): bias matrices for the `unbiased` chunking, the
        MinED mapping for `baseline_mined`.
    """
    if train_model_mode not in TRAIN_MODES:
        raise ValueError(f"Unknown train_model_mode {train_model_mode!r}; valid: {', '.join(TRAIN_MODES)}.")
    if output_embeddings_mode not in OUTPUT_EMBEDDING_MODES:
        raise ValueError(
            f"Unknown output_embeddings_mode {output_embeddings_mode!r}; valid: "
            f"{', '.join(OUTPUT_EMBEDDING_MODES)}."
        )
    if (teacher_model is None) != (teacher_tokenizer is None):
        raise ValueError("teacher_model and teacher_tokenizer must be given together.")
    if student_model is None and student_config is None:
        raise ValueError("Give student_model (a checkpoint) or student_config (train from scratch).")
    compute_dtype = jnp.dtype(dtype)
    rules = logical_axis_rules()
    losses = tuple(losses_lib.get_losses(list(loss_names)))
    needs_teacher = any(loss.needs_teacher for loss in losses)

    original_tokenizer = load_byteify_tokenizer(student_tokenizer)
    target = load_byteify_tokenizer(target_tokenizer) if target_tokenizer else original_tokenizer
    transfer = target_tokenizer is not None and target_tokenizer != student_tokenizer

    # --- the student's weights ------------------------------------------------------
    rng = np.random.default_rng(seed)
    if student_model is not None:
        # Placed with its final shardings as it is read: no full host copy per device.
        config, params = load_pretrained(student_model, mesh=mesh, rules=rules, dtype=jnp.float32)
        logging.info("Loaded student %s (%s).", student_model, config.architecture)
    else:
        config = student_config
        params = _host(init_params(make_transformer(config), int(rng.integers(2**31))))
        logging.info("Initialised a %s student from scratch.", config.architecture)
    original_config, original_params = config, params
    # Only the embedding matrices come to the host (FVT works on them there).
    in_emb = _trim_or_pad_embeddings(
        _host(params["embedder"]["embedding"]), len(original_tokenizer), seed, "The student"
    )
    out_emb = None if config.tie_word_embeddings else _trim_or_pad_embeddings(
        _host(params["lm_head"]["kernel"]).T, len(original_tokenizer), seed, "The student's lm_head"
    )
    fvt_stats = None
    if transfer:
        result = fvt_lib.fvt(original_tokenizer, target, in_emb, output_embeddings=out_emb, seed=seed)
        in_emb, out_emb, fvt_stats = result.input_embeddings, result.output_embeddings, result.stats
        logging.info("FVT from %s to %s: %s", student_tokenizer, target_tokenizer, fvt_stats)
    if transfer or output_embeddings_mode == "untie" or len(target) > config.vocab_size:
        config, params = replace_vocabulary(
            config, params, in_emb, out_emb, tokenizer_size=len(target),
            output_embeddings_mode=output_embeddings_mode, pad_to_multiple_of=pad_to_multiple_of,
        )
    expansion = None
    if expand_input_ids:
        expansion = expand_lib.build_expansion(target, original_tokenizer)
        params["expand_embedder"] = {"embedding": expansion.embedding_table(
            _host(original_params["embedder"]["embedding"]), pad_to_multiple_of
        )}

    # --- the teacher ------------------------------------------------------------------
    teacher_side_tokenizer = None
    teacher_params: dict = {}
    teacher_config = None
    shares = False
    if needs_teacher:
        if teacher_model is not None:
            teacher_side_tokenizer = load_byteify_tokenizer(teacher_tokenizer)
            teacher_config, teacher_params = load_pretrained(
                teacher_model, mesh=mesh, rules=rules, dtype=compute_dtype
            )
        else:
            teacher_side_tokenizer = original_tokenizer
            teacher_config = original_config
            if train_model_mode == "full":
                teacher_params = original_params  # a separate (frozen) copy
            else:
                shares = True
                teacher_params = {k: original_params[k] for k in EMBEDDING_KEYS if k in original_params}

    # --- trainable / frozen -----------------------------------------------------------
    lora_config = None
    variables: dict = {"params": params}
    if train_model_mode == "lora":
        lora_config = LoraConfig(rank=lora_rank, alpha=lora_alpha)
        variables["lora"] = _host(init_lora(jax.random.key(seed), config, lora_config))
    mask = trainable_mask(variables, train_model_mode, train_embeddings=train_embeddings)
    trainable_student, frozen_student = params_lib.partition(params, mask["params"])
    loss_params = _host(losses_lib.init_loss_params(
        losses, jax.random.key(seed + 1), config.hidden_size,
        teacher_config.hidden_size if teacher_config else config.hidden_size,
    ))
    trainable = {"student": trainable_student, "lora": variables.get("lora", {}), "loss": loss_params}
    frozen = {"student": frozen_student, "teacher": teacher_params}
    # Trainable leaves are copies: the step donates them, and a frozen tree (the
    # teacher's copy of the same checkpoint) must not share their buffers.
    trainable = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), trainable)
    frozen = jax.tree.map(lambda x: jnp.asarray(x, compute_dtype), frozen)
    logging.info(
        "Parameters: %s trainable, %s frozen (%s mode, embeddings %s).",
        f"{params_lib.count(trainable):,}", f"{params_lib.count(frozen):,}",
        train_model_mode, "trained" if train_embeddings else "frozen",
    )

    # --- shardings --------------------------------------------------------------------
    student_sh = param_shardings(config, mesh, rules, params=params)
    t_sh, f_sh = params_lib.partition(student_sh, mask["params"])
    trainable_shardings = {
        "student": t_sh,
        "lora": _specs_like(trainable["lora"], mesh, jax.tree.map(
            lambda _: ("layers", None, None), trainable["lora"]), rules),
        "loss": _replicated(trainable["loss"], mesh),
    }
    if shares:
        teacher_sh = {k: v for k, v in param_shardings(teacher_config, mesh, rules).items()
                      if k in teacher_params}
    elif needs_teacher:
        teacher_sh = param_shardings(teacher_config, mesh, rules, params=teacher_params)
    else:
        teacher_sh = {}
    frozen_shardings = {"student": f_sh, "teacher": teacher_sh}

    def side(tokenizer, cfg, lora_alpha_value=None) -> Side:
        model = make_transformer(cfg, dtype=dtype, remat_policy=remat_policy, lora_alpha=lora_alpha_value)
        return Side(tokenizer, cfg, model, build_constants(tokenizer, cfg, space_mask_mode))

    student = side(target, config, lora_config.alpha if lora_config else None)
    teacher = side(teacher_side_tokenizer, teacher_config) if needs_teacher else None
    pair_data = None
    if tokenizer_pair_data_path is not None and teacher is not None:
        pair_data = tokenizer_info.load_pair_data(
            tokenizer_pair_data_path, teacher.tokenizer, student.tokenizer
        )
    mined = None
    if any(loss.needs_mined_mapping for loss in losses):
        if pair_data is None or pair_data.mined_mapping is None:
            raise ValueError(
                "baseline_mined needs build_run.tokenizer_pair_data_path with a "
                "mined_mapping.npy (tools/compute_mined_mapping.py)."
            )
        mined = pair_data.mined_mapping
    return RunSetup(
        student=student, teacher=teacher, trainable=trainable, frozen=frozen,
        trainable_shardings=trainable_shardings, frozen_shardings=frozen_shardings,
        losses=losses, teacher_shares_student=shares, lora_config=lora_config,
        expansion=expansion, mined_mapping=mined, original_student_tokenizer=original_tokenizer,
        fvt_stats=fvt_stats, rules=rules, pair_data=pair_data,
    )
