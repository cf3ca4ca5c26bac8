"""Everything a run is made of before its first step: sides, parameters, shardings.

Three setups share this code (`build_run` picks one from its arguments):

- same-tokenizer training: one model, one tokenizer (SFT / pretraining; the tiny
  teacher is made this way, from a random initialisation);
- tokenizer transfer: the student is the model moved to the *target* tokenizer by
  `models.transfer.transfer` (the same function `python -m tokenkit.zett` runs), the
  teacher is the same model with its original tokenizer (self-distillation);
- cross-tokenizer distillation: a separate teacher model and tokenizer.

`build_run` composes small functions a test can call one by one: `load_model` (a
checkpoint or a random initialisation), `transfer.transfer`, `teacher_parameters`,
`partition` (the trainable / frozen split) and `shardings`. Parameters are split once
into a trainable tree (fp32 master weights, in the optimizer) and a frozen tree (compute
dtype, never differentiated): the teacher's parameters and the student's frozen part. In
`lora` and `embeddings` modes the teacher of a self-distillation run shares the
student's frozen weights instead of holding a copy.
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
from tokenkit.data.pairs import TokenizerPair
from tokenkit.models import (
    LoraConfig,
    ModelConfig,
    embedding_matrices,
    from_hf_dict,
    init_lora,
    init_params,
    load_pretrained,
    make_transformer,
    param_shardings,
    trainable_mask,
)
from tokenkit.models import hypernet as hypernet_lib
from tokenkit.models import transfer as transfer_lib
from tokenkit.models.fvt import FvtStats
from tokenkit.models.lora import TRAIN_MODES, lora_logical_axes
from tokenkit.models.sharding import logical_axis_rules, logical_to_spec
from tokenkit.models.side import ModelSide
from tokenkit.tokenizer_info import TokenizerPairData
from tokenkit.training import params as params_lib

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
class RunSetup:
    """The built run.

    trainable = {"student": ..., "lora": ..., "loss": ...} (each may be empty)
    frozen    = {"student": ..., "teacher": ...}
    `teacher_shares_student` means the teacher's parameters are the student's frozen
    ones with `frozen["teacher"]` (its embeddings) laid over them. With a `hypernet`,
    trainable["hypernet"] / frozen["hypernet"] hold its parameters (the rescaler frozen)
    and the student's embeddings are its predictions from the student's own rows.
    """

    student: ModelSide
    teacher: ModelSide | None
    student_constants: losses_lib.TokenizerConstants
    teacher_constants: losses_lib.TokenizerConstants | None
    trainable: dict
    frozen: dict
    trainable_shardings: dict
    frozen_shardings: dict
    losses: tuple[losses_lib.Loss, ...]
    teacher_shares_student: bool
    lora: LoraConfig | None
    mined_mapping: np.ndarray | None
    transfer_stats: FvtStats | None
    rules: tuple[tuple[str, Any], ...]
    pair_data: TokenizerPairData | None
    hypernet: hypernet_lib.Hypernet | None = None

    def student_params(self, trainable: Mapping, frozen: Mapping) -> dict:
        """The student's full parameter tree (without LoRA adapters; embeddings predicted
        by the hypernetwork when there is one)."""
        params = params_lib.merge(trainable.get("student", {}), frozen.get("student", {}))
        if self.hypernet is not None:
            hn = params_lib.merge(trainable["hypernet"], frozen["hypernet"])
            params = hypernet_lib.predict_rows(self.hypernet, hn, params,
                                               self.student.config.tie_word_embeddings)
        return params

    def teacher_params(self, trainable: Mapping, frozen: Mapping) -> dict:
        del trainable  # the teacher never trains
        if self.teacher_shares_student:
            base = {k: v for k, v in frozen["student"].items()
                    if k not in EMBEDDING_KEYS and k != "expand_embedder"}
            return {**base, **frozen["teacher"]}
        return dict(frozen["teacher"])


def loss_constants(side: ModelSide, space_mask_mode: str) -> losses_lib.TokenizerConstants:
    """Space and vocabulary masks of a side over its model's (padded) vocabulary."""
    tokenizer, config = side.tokenizer, side.config
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    space = losses_lib.build_space_mask(
        tokens, tokenizer.all_special_ids, space_mask_mode=space_mask_mode,
        padded_size=config.vocab_size,
    )
    eos = tokenizer.eos_token_id
    return losses_lib.TokenizerConstants(
        space_mask=jnp.asarray(space),
        vocab_mask=jnp.asarray(np.arange(config.vocab_size) < n),
        eos_token_id=-1 if eos is None else int(eos),
    )


def _host(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def load_model(
    model: str | None, config: ModelConfig | None, *, mesh: Mesh, rules: Any, seed: int,
    dtype: Any = jnp.float32,
) -> tuple[ModelConfig, dict]:
    """A checkpoint (placed with its final shardings as it is read: no full host copy per
    device) or, with `model=None`, a random initialisation of `config`."""
    if model is not None:
        config, params = load_pretrained(model, mesh=mesh, rules=rules, dtype=dtype)
        logging.info("Loaded %s (%s).", model, config.architecture)
        return config, params
    if config is None:
        raise ValueError("Give a model checkpoint, or a config to train from scratch.")
    init_seed = int(np.random.default_rng(seed).integers(2**31))
    params = _host(init_params(make_transformer(config), init_seed))
    logging.info("Initialised a %s model from scratch.", config.architecture)
    return config, params


def partition(
    params: dict, lora: dict | None, mode: str, *, train_embeddings: bool
) -> tuple[dict, dict, dict]:
    """(trainable student params, frozen student params, the mask over params)."""
    variables = {"params": params, **({"lora": lora} if lora is not None else {})}
    mask = trainable_mask(variables, mode, train_embeddings=train_embeddings)
    trainable, frozen = params_lib.partition(params, mask["params"])
    return trainable, frozen, mask["params"]


def _specs_like(tree: Any, mesh: Mesh, logical: Any, rules: Any) -> Any:
    return jax.tree.map(
        lambda axes, x: NamedSharding(mesh, logical_to_spec(tuple(axes), np.shape(x), mesh, rules)),
        logical, tree, is_leaf=lambda x: isinstance(x, tuple),
    )


def _replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def shardings(
    trainable: dict, frozen: dict, mask: dict, *, student: ModelConfig, teacher: ModelConfig | None,
    student_params: dict, teacher_shares_student: bool, mesh: Mesh, rules: Any,
) -> tuple[dict, dict]:
    """(trainable, frozen) shardings from the logical-axis rules."""
    student_sh = param_shardings(student, mesh, rules, params=student_params)
    t_sh, f_sh = params_lib.partition(student_sh, mask)
    trainable_sh = {
        "student": t_sh,
        "lora": _specs_like(trainable["lora"], mesh, lora_logical_axes(trainable["lora"]), rules),
        "loss": _replicated(trainable["loss"], mesh),
    }
    teacher_params = frozen["teacher"]
    if teacher is None:
        teacher_sh = {}
    elif teacher_shares_student:
        teacher_sh = {k: v for k, v in param_shardings(teacher, mesh, rules).items()
                      if k in teacher_params}
    else:
        teacher_sh = param_shardings(teacher, mesh, rules, params=teacher_params)
    return trainable_sh, {"student": f_sh, "teacher": teacher_sh}


@gin.configurable(denylist=["mesh", "loss_names", "seed", "pair"])
def build_run(
    mesh: Mesh,
    loss_names: Sequence[str],
    seed: int,
    pair: TokenizerPair | None = None,
    *,
    student_model: str | None = None,
    student_tokenizer: str,
    student_config: ModelConfig | None = None,
    target_tokenizer: str | None = None,
    teacher_model: str | None = None,
    teacher_tokenizer: str | None = None,
    train_model_mode: str = "full",
    train_embeddings: bool = True,
    lora: LoraConfig | None = None,
    init: str = "fvt",
    output_embeddings_mode: str = "preserve",
    pad_to_multiple_of: int = 64,
    expand_input_ids: bool = False,
    dtype: str = "bfloat16",
    remat_policy: str = "none",
    attention_impl: str = "einsum",
    hypernet: hypernet_lib.HypernetConfig | None = None,
    tokens_to_add: Sequence[str] | None = None,
) -> RunSetup:
    """Loads (or initialises) the models and builds the parameter trees of a run.

    Args:
      mesh, loss_names, seed: from `train`.
      pair: the teacher/student tokenizer-pair data (`TokenizerPair`, from `train`).
      student_model: HF-format directory, `.gguf` file or hub id of the student's initial
        weights; None with `student_config` trains from a random initialisation.
      student_tokenizer: the tokenizer spec the student model was trained with.
      target_tokenizer: transfer the student to this tokenizer spec
        (`models.transfer`); None keeps `student_tokenizer`.
      teacher_model, teacher_tokenizer: a separate teacher (cross-tokenizer distillation);
        None makes the teacher the student model with its original tokenizer.
      train_model_mode: `full`, `lora` (adapters, plus embeddings if `train_embeddings`)
        or `embeddings` (embeddings only).
      lora: the adapters (`build_run.lora = @LoraConfig()`; `LoraConfig.rank = 16`);
        default `LoraConfig()` in `lora` mode; an error in other modes.
      init, output_embeddings_mode, pad_to_multiple_of, expand_input_ids: the transfer
        (see `models.transfer.transfer`).
      dtype: compute dtype (and storage dtype of frozen weights); trainable weights are
        fp32 masters.
      remat_policy, attention_impl: see `models.transformer.Transformer`.
      hypernet: an embedding hypernetwork (`build_run.hypernet = @HypernetConfig()`, e.g.
        gin/hypernet/distill.gin): the student's embeddings are its predictions from the
        student's own (transferred) rows, trained through it; `train_embeddings` then says
        whether the rows themselves train too (the upstream's semantics).
      tokens_to_add: tokens added to the student's (target) tokenizer, their rows
        initialised by `init` (`models.transfer.add_tokens`; the upstream's option).
    """
    if train_model_mode not in TRAIN_MODES:
        raise ValueError(f"Unknown train_model_mode {train_model_mode!r}; valid: {', '.join(TRAIN_MODES)}.")
    if lora is not None and train_model_mode != "lora":
        raise ValueError(
            f"build_run.lora is set but train_model_mode is {train_model_mode!r}; adapters "
            "only train in train_model_mode='lora'."
        )
    if (teacher_model is None) != (teacher_tokenizer is None):
        raise ValueError("teacher_model and teacher_tokenizer must be given together.")
    if student_model is None and student_config is None:
        raise ValueError("Give student_model (a checkpoint) or student_config (train from scratch).")
    transfer_lib.check_options(init, output_embeddings_mode, "special")
    compute_dtype = jnp.dtype(dtype)
    rules = logical_axis_rules()
    losses = tuple(losses_lib.get_losses(
        list(loss_names), space_merge_threshold=pair.space_merge_threshold if pair else None
    ))
    needs_teacher = any(loss.needs_teacher for loss in losses)
    if train_model_mode == "lora" and lora is None:
        lora = LoraConfig()

    original_tokenizer = load_byteify_tokenizer(student_tokenizer)
    target = load_byteify_tokenizer(target_tokenizer) if target_tokenizer else original_tokenizer
    if tokens_to_add:
        target = transfer_lib.add_tokens(target, tokens_to_add)

    # --- the student ------------------------------------------------------------------
    original_config, original_params = load_model(
        student_model, student_config, mesh=mesh, rules=rules, seed=seed
    )
    moved = transfer_lib.transfer(
        original_config, original_params, original_tokenizer, target, init=init,
        output_embeddings_mode=output_embeddings_mode, pad_to_multiple_of=pad_to_multiple_of,
        expand_input_ids=expand_input_ids, seed=seed,
    )
    config, params = moved.config, moved.params

    # --- the teacher ------------------------------------------------------------------
    teacher_side_tokenizer, teacher_config = None, None
    teacher_params: dict = {}
    shares = False
    if needs_teacher:
        if teacher_model is not None:
            teacher_side_tokenizer = load_byteify_tokenizer(teacher_tokenizer)
            teacher_config, teacher_params = load_model(
                teacher_model, None, mesh=mesh, rules=rules, seed=seed, dtype=compute_dtype
            )
        else:
            teacher_side_tokenizer, teacher_config = original_tokenizer, original_config
            if train_model_mode == "full":
                teacher_params = original_params  # a separate (frozen) copy
            else:
                shares = True
                teacher_params = {k: original_params[k] for k in EMBEDDING_KEYS if k in original_params}

    # --- trainable / frozen -----------------------------------------------------------
    lora_params = None if lora is None else _host(init_lora(jax.random.key(seed), config, lora))
    trainable_student, frozen_student, mask = partition(
        params, lora_params, train_model_mode, train_embeddings=train_embeddings
    )
    loss_params = _host(losses_lib.init_loss_params(
        losses, jax.random.key(seed + 1), config.hidden_size,
        teacher_config.hidden_size if teacher_config else config.hidden_size,
    ))
    trainable = {"student": trainable_student, "lora": lora_params or {}, "loss": loss_params}
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
    trainable_sh, frozen_sh = shardings(
        trainable, frozen, mask, student=config, teacher=teacher_config, student_params=params,
        teacher_shares_student=shares, mesh=mesh, rules=rules,
    )
    module = None
    if hypernet is not None:
        inputs, outputs = embedding_matrices(config, params)
        module = hypernet_lib.Hypernet(hypernet, config.hidden_size, 1 if outputs is None else 2, 1,
                                       compute_dtype)
        hn = hypernet_lib.init_params(module, hypernet_lib.stack_embeddings(inputs, outputs), seed,
                                      num_source_tokens=len(target))
        hn_sh = hypernet_lib.param_shardings(module, hn, mesh, rules)
        for tree, tree_sh, part, part_sh in zip(
            (trainable, frozen), (trainable_sh, frozen_sh),
            params_lib.partition(hn, hypernet_lib.is_trainable),
            params_lib.partition(hn_sh, hypernet_lib.is_trainable),
        ):
            tree["hypernet"] = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), part)
            tree_sh["hypernet"] = part_sh
        logging.info("Hypernetwork over the student's embeddings: %s trainable parameters (%s).",
                     f"{params_lib.count(trainable['hypernet']):,}", hypernet.architecture)

    # --- sides ------------------------------------------------------------------------
    module_options = dict(dtype=dtype, remat_policy=remat_policy, attention_impl=attention_impl)
    student = ModelSide.create(
        config, target, lora_alpha=lora.alpha if lora else None, expansion=moved.expansion,
        name="student", **module_options,
    )
    teacher = None
    if needs_teacher:
        teacher = ModelSide.create(teacher_config, teacher_side_tokenizer, name="teacher",
                                   **module_options)
    space_mask_mode = losses_lib.space_mask_mode(losses)
    pair_data = None
    if pair is not None and teacher is not None:
        pair_data = pair.load(teacher.tokenizer, student.tokenizer)
    mined = None
    if any(loss.needs_mined_mapping for loss in losses):
        if pair_data is None or pair_data.mined_mapping is None:
            raise ValueError(
                "baseline_mined needs TokenizerPair.path with a mined_mapping.npy "
                "(tools/compute_mined_mapping.py)."
            )
        mined = pair_data.mined_mapping
        limit = next(loss.options.max_distance for loss in losses if loss.needs_mined_mapping)
        if limit is not None:
            if pair_data.mined_distances is None:
                raise ValueError(
                    f"MinedOptions.max_distance={limit} needs the pair directory's "
                    f"{tokenizer_info.MINED_DISTANCES_FILE} (tools/compute_mined_mapping.py)."
                )
            mined = tokenizer_info.limit_mined_mapping(
                mined, pair_data.mined_distances, student.tokenizer, limit)
    return RunSetup(
        student=student,
        teacher=teacher,
        student_constants=loss_constants(student, space_mask_mode),
        teacher_constants=None if teacher is None else loss_constants(teacher, space_mask_mode),
        trainable=trainable,
        frozen=frozen,
        trainable_shardings=trainable_sh,
        frozen_shardings=frozen_sh,
        losses=losses,
        teacher_shares_student=shares,
        lora=lora,
        mined_mapping=mined,
        transfer_stats=moved.stats,
        rules=rules,
        pair_data=pair_data,
        hypernet=module,
    )
