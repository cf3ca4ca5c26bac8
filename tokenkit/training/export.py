"""The Hugging Face export of a run's student: at the end of training, or of any checkpoint.

`export_student(run, trainable, frozen, output)` is the one export, used by the trainer
when a run ends and by `python -m tokenkit.export` for any saved step
(`export_checkpoint`). It writes what `transformers.AutoModelForCausalLM` loads:

- LoRA adapters merged into their kernels; the hypernetwork's embeddings, when there is
  one, as the student's;
- the vocabulary trimmed to the tokenizer (the rows the run padded to a multiple are
  dropped), tied or untied as the run trained it;
- `config.json` naming the tokenizer's bos / eos (with the end of turn) / pad ids
  (`models.transfer.with_special_tokens`), the tokenizer files and chat template;
- for a byte-level student trained with input-id expansion, the expansion as well
  (`models.hf_expansion`: load with `trust_remote_code=True`).

Every process of a multi-process run must call `export_student` (sharded parameters are
gathered; process 0 writes). The output may be remote (`gs://...`, `tokenkit.storage`):
it is written locally and uploaded.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from tokenkit import entry, storage
from tokenkit.models import ModelConfig, hf_expansion, merge_lora, save_pretrained
from tokenkit.models.transfer import with_special_tokens
from tokenkit.training import setup as setup_lib
from tokenkit.training.checkpoint import CHECKPOINT_DIR

EXPORT_DIR = "export"
# Losses the export builds the run with: only the student is needed (no teacher).
_STUDENT_ONLY = ("sft",)


def student_params(run: setup_lib.RunSetup, trainable: Any, frozen: Any) -> dict:
    """The student's full parameters with LoRA merged (arrays stay where they are)."""
    params = run.student_params(trainable, frozen)
    if trainable.get("lora"):
        params = merge_lora(params, trainable["lora"], alpha=run.lora.alpha)
    return params


def trim_vocabulary(config: ModelConfig, params: dict, size: int) -> tuple[ModelConfig, dict]:
    """`config` and `params` with the embedding rows (and lm_head columns) past `size`
    dropped: an exported vocabulary is exactly the tokenizer's."""
    if size > config.vocab_size:
        raise ValueError(f"The tokenizer has {size} ids but the model only {config.vocab_size} rows.")
    if size == config.vocab_size:
        return config, params
    params = dict(params)
    params["embedder"] = {**params["embedder"], "embedding": params["embedder"]["embedding"][:size]}
    if "lm_head" in params:
        params["lm_head"] = {**params["lm_head"], "kernel": params["lm_head"]["kernel"][:, :size]}
    return dataclasses.replace(config, vocab_size=size), params


def export_student(
    run: setup_lib.RunSetup,
    trainable: Any,
    frozen: Any,
    output: storage.Location,
    *,
    dtype: str = "float32",
) -> storage.epath.Path:
    """Writes the student as an HF checkpoint into `output` (see the module docstring).

    Args:
      run: the run's setup (the student's side: config, tokenizer, expansion).
      trainable, frozen: the trainer's two parameter trees (`state.params`, `frozen`).
      output: a local or remote directory.
      dtype: dtype of the written tensors.
    """
    tokenizer = run.student.tokenizer
    params = student_params(run, trainable, frozen)
    table = params.pop("expand_embedder", None)
    config, params = trim_vocabulary(run.student.config, params, len(tokenizer))
    config = with_special_tokens(config, tokenizer)
    extra = None
    expansion = run.student.expansion
    if expansion is not None:
        if table is None:
            raise ValueError("The student has an input-id expansion but no expand_embedder table.")
        host_table = np.asarray(_gathered(table["embedding"]), np.dtype(dtype))
        extra = hf_expansion.expansion_tensors(expansion, host_table)
    if jax.process_index() != 0:  # the others only take part in gathering sharded arrays
        save_pretrained(os.fspath(storage.path(output)), config, params, dtype=dtype)
        return storage.path(output)
    with storage.staged_directory(output) as local:
        save_pretrained(local, config, params, tokenizer=tokenizer, dtype=dtype, extra_tensors=extra)
        if expansion is not None:
            hf_expansion.write_expansion(local, expansion, extra[hf_expansion.TABLE_TENSOR].shape[0])
    logging.info("Exported the student to %s.", output)
    return storage.path(output)


def _gathered(x: Any) -> np.ndarray:
    """A full host copy of an array that may span several processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


# -------------------------------------------------------------------------------------
# Any checkpoint


def _train_setting(name: str) -> Any:
    """`train.<name>` as the run's operative config binds it, else `train`'s default."""
    from tokenkit.training import trainer  # noqa: PLC0415 (trainer imports this module)

    try:
        return gin.query_parameter(f"train.{name}")
    except ValueError:
        return inspect.signature(trainer.train).parameters[name].default


def saved_steps(workdir: storage.Location) -> list[int]:
    """The finished checkpoints of a run, oldest first."""
    directory = storage.path(workdir) / CHECKPOINT_DIR
    if not directory.exists():
        return []
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def restore_trainable(workdir: storage.Location, step: int, abstract: Any) -> Any:
    """The trainable parameters of checkpoint `step` (nothing else: no optimizer state,
    no data position), placed as `abstract` (ShapeDtypeStructs with shardings) says."""
    directory = storage.path(workdir) / CHECKPOINT_DIR
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
    )
    try:
        target = {"params": abstract}
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        )))
    finally:
        manager.close()
    return restored["state"]["params"]


def export_checkpoint(
    workdir: storage.Location, output: storage.Location, *, step: int | None = None,
) -> storage.epath.Path:
    """Exports checkpoint `step` (default: the latest) of the run in `workdir`.

    The run's setup is rebuilt from the Gin bindings in force (the caller parses the
    run's `operative_config.gin`, see `python -m tokenkit.export`): the student model is
    loaded and transferred as in training (frozen weights come from there), then the
    step's trainable parameters are restored over it.

    Raises:
      FileNotFoundError: the workdir has no checkpoints, or not `step` (the saved ones
        are listed).
    """
    steps = saved_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"No checkpoints in {storage.path(workdir) / CHECKPOINT_DIR}.")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(
            f"{workdir} has no checkpoint of step {step}; saved steps: {', '.join(map(str, steps))}."
        )
    from tokenkit.models import make_mesh

    mesh = make_mesh(1, -1)
    run = setup_lib.build_run(mesh, _STUDENT_ONLY, _train_setting("seed"), None)
    wanted = {k: v for k, v in run.trainable.items() if k != "loss"}
    abstract = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh),
        wanted, {k: run.trainable_shardings[k] for k in wanted},
    )
    trainable = restore_trainable(workdir, step, abstract)
    frozen = jax.device_put(run.frozen, run.frozen_shardings)
    logging.info("Restored the trainable parameters of step %d from %s.", step, workdir)
    out = export_student(run, trainable, frozen, output)
    if entry.process_index() == 0:
        logging.info("Exported step %d of %s to %s.", step, workdir, out)
    return out
