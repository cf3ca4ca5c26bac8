"""Training the embedding hypernetwork for zero-shot tokenizer transfer (ZeTT).

`train_zett_hn(workdir)` (`python -m tokenkit.train_zett_hn`) trains a
`models.hypernet.Hypernet` on a frozen base model, so that it predicts good embeddings
for tokenizers it has never seen:

1. *identity pretraining* (`identity_steps` at `identity_lr`): the hypernetwork learns
   to give every base token (its own one-part decomposition) its base embedding, with a
   squared-error loss on `identity_tokens` random base tokens per step. With the default
   residual network this already holds at step 0 (the prediction starts as FVT's mean),
   so it matters for non-residual architectures;
2. *training under sampled tokenizers*: every batch comes with its own UnigramLM
   tokenizer sampled from the batch's text (`data.tokenizer_sampler`, in the Grain
   workers). The hypernetwork predicts the embeddings of that tokenizer's vocabulary, the
   frozen model (`train_model_mode='no'`) reads the batch through them, and the losses
   are `sft` (next-token cross-entropy over the sampled vocabulary, the registry's loss)
   and, optionally, `lexical`: tokens that are one base token keep their base embedding
   (squared distance, normalised by the base embeddings' norm).

The step is `training.step.make_train_step` (aggregation of several losses, optimizer,
learning-rate schedule): the batch is the rows, and the sampled vocabulary travels with
the frozen parameters. Every `eval_interval` steps the hypernetwork is applied to each
named tokenizer of `eval_tokenizers` through `models.transfer.transfer(init="hypernet")`
(the same code `python -m tokenkit.zett` runs) and the result is scored: bits per byte
on the validation texts, and the lm-eval tasks of `eval.tasks` when bound. Checkpoints are
Orbax (`training.checkpoint`: the hypernetwork's parameters, optimizer state and the
data iterator); at the end the hypernetwork is exported on its own to `workdir/hypernet`
(`TrainedHypernet.save`), which `zett.hypernet` applies offline.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding

from tokenkit import entry
from tokenkit import losses as losses_lib
from tokenkit.batch import Batch, SideBatch
from tokenkit.byteify import ByteifyTokenizer, load_byteify_tokenizer
from tokenkit.data import sources
from tokenkit.data import tokenizer_sampler as sampler_lib
from tokenkit.evaluation import harness
from tokenkit.evaluation.model import EvalModel
from tokenkit.logits import mask_padded_vocab
from tokenkit.losses import aggregation as agg
from tokenkit.models import (
    ModelConfig,
    batch_shardings,
    embedding_matrices,
    make_transformer,
    param_shardings,
    sharding_context,
)
from tokenkit.models import hypernet as hypernet_lib
from tokenkit.models import transfer as transfer_lib
from tokenkit.models.sharding import logical_axis_rules, logical_to_spec
from tokenkit.models.side import Forward, check_tokenizer_fits
from tokenkit.progress import format_duration
from tokenkit.training import optim
from tokenkit.training import params as params_lib
from tokenkit.training import setup as setup_lib
from tokenkit.training import step as step_lib
from tokenkit.training.checkpoint import Checkpointer, abstract_like
from tokenkit.training.evaluator import bits_per_byte
from tokenkit.training.metrics import MetricsWriter
from tokenkit.training.preemption import PreemptionWatcher
from tokenkit.training.trainer import _make_mesh, _Throughput

LOSSES = ("sft", "lexical")
HYPERNET_DIR = "hypernet"
EMBEDDING_KEYS = ("embedder", "lm_head")


def lexical_loss(pred: jax.Array, source: jax.Array, vocab: sampler_lib.SampledVocab) -> jax.Array:
    """Squared distance of each one-part (non-copied) token's prediction to its base
    embedding, averaged over those tokens and divided by the mean norm of their base
    embeddings (then averaged over the `n` embedding kinds)."""
    single = vocab.valid & ~vocab.copied & vocab.mask[:, 0] & ~vocab.mask[:, 1:].any(axis=1)
    target = jnp.take(source, vocab.parts[:, 0], axis=0).astype(jnp.float32)
    weight = single.astype(jnp.float32)[:, None]
    count = jnp.maximum(weight.sum(), 1.0)
    distance = (jnp.square(pred - target).sum(-1) * weight).sum(0) / count
    norm = (jnp.linalg.norm(target, axis=-1) * weight).sum(0) / count
    return jnp.mean(distance / (norm + 1e-8))


def with_embeddings(model_params: Mapping, embeddings: jax.Array, num_embeddings: int, dtype: Any) -> dict:
    """The model's parameters (without embeddings) with `[V, n, D]` embeddings in place."""
    params = dict(model_params)
    params["embedder"] = {"embedding": embeddings[:, 0].astype(dtype)}
    if num_embeddings == 2:
        params["lm_head"] = {"kernel": embeddings[:, 1].T.astype(dtype)}
    return params


@dataclasses.dataclass(frozen=True)
class HypernetRun:
    """A hypernetwork run before its first step (see `build`).

    trainable = {"hypernet": the trained parameters}
    frozen    = {"hypernet": the rescaler, "model": the base model without embeddings,
                 "source": its embeddings [Vs, n, D]}
    """

    base: ByteifyTokenizer
    config: ModelConfig
    module: hypernet_lib.Hypernet
    trainable: dict
    frozen: dict
    trainable_shardings: dict
    frozen_shardings: dict
    rules: Any
    model_name: str

    def hypernet_params(self, trainable: Mapping, frozen: Mapping) -> dict:
        return params_lib.merge(trainable["hypernet"], frozen["hypernet"])

    def trained(self, trainable: Mapping) -> hypernet_lib.TrainedHypernet:
        """The hypernetwork with `trainable`'s parameters, on the host."""
        m = self.module
        return hypernet_lib.TrainedHypernet(
            config=m.config, hidden_size=m.hidden_size, num_embeddings=m.num_embeddings,
            max_parts=m.max_parts,
            params=jax.device_get(self.hypernet_params(trainable, self.frozen)),
            source_tokenizer=str(self.base.spec), source_vocab_size=len(self.base),
            base_model=self.model_name,
        )

    def base_params(self) -> dict:
        """The base model's full parameter tree (its own embeddings back in place)."""
        source = self.frozen["source"]
        return with_embeddings(self.frozen["model"], source, self.module.num_embeddings, source.dtype)


def build(
    model: str,
    tokenizer: str,
    hypernet_config: hypernet_lib.HypernetConfig,
    max_parts: int,
    *,
    mesh: Mesh,
    seed: int,
    dtype: str,
) -> HypernetRun:
    """Loads the base model, initialises the hypernetwork on its embeddings and splits
    the parameters (the hypernetwork trains, but for its rescaler; the model is frozen)."""
    rules = logical_axis_rules()
    base = load_byteify_tokenizer(tokenizer)
    config, params = setup_lib.load_model(model, None, mesh=mesh, rules=rules, seed=seed)
    check_tokenizer_fits(base, config, model)
    inputs, outputs = embedding_matrices(config, params)
    source = hypernet_lib.stack_embeddings(inputs, outputs)
    module = hypernet_lib.Hypernet(
        hypernet_config, config.hidden_size, 1 if outputs is None else 2, max_parts, jnp.dtype(dtype),
    )
    hn = hypernet_lib.init_params(module, source, seed, num_source_tokens=len(base))
    trainable_hn, fixed_hn = params_lib.partition(hn, hypernet_lib.is_trainable)
    model_params = {k: v for k, v in params.items() if k not in EMBEDDING_KEYS}
    compute = jnp.dtype(dtype)
    # Copies: the step donates the trainable tree.
    trainable = {"hypernet": jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), trainable_hn)}
    frozen = {
        "hypernet": jax.tree.map(jnp.asarray, fixed_hn),
        "model": jax.tree.map(lambda x: jnp.asarray(x, compute), model_params),
        "source": jnp.asarray(source, compute),
    }
    hn_sh = hypernet_lib.param_shardings(module, hn, mesh, rules)
    t_sh, f_sh = params_lib.partition(hn_sh, hypernet_lib.is_trainable)
    model_sh = param_shardings(config, mesh, rules, params=params)
    frozen_sh = {
        "hypernet": f_sh,
        "model": {k: v for k, v in model_sh.items() if k in model_params},
        "source": NamedSharding(mesh, logical_to_spec(("vocab", None, "embed"), source.shape, mesh, rules)),
    }
    logging.info(
        "Hypernetwork: %s trainable parameters (%s, %d layers); base model %s, %s frozen.",
        f"{params_lib.count(trainable):,}", hypernet_config.architecture, hypernet_config.num_layers,
        model, f"{params_lib.count(frozen['model']):,}",
    )
    return HypernetRun(base, config, module, trainable, frozen, {"hypernet": t_sh}, frozen_sh,
                       rules, model)


def vocab_shardings(vocab: sampler_lib.SampledVocab, mesh: Mesh, rules: Any) -> Any:
    """The sampled vocabulary's rows over the `vocab` rule, as the embeddings."""
    axes = sampler_lib.SampledVocab(
        parts=("vocab", None), mask=("vocab", None), copied=("vocab",), valid=("vocab",),
        space_mask=("vocab",),
    )
    return jax.tree.map(
        lambda x, a: NamedSharding(mesh, logical_to_spec(a, np.shape(x), mesh, rules)),
        vocab, axes, is_leaf=lambda x: isinstance(x, tuple),
    )


def make_loss_fn(run: HypernetRun, loss_names: Sequence[str], vocab_rows: int, dtype: str):
    """`loss_fn(trainable, frozen, rows, step_rows)` under a sampled tokenizer: `frozen`
    is `{"params": the run's frozen tree, "vocab": the batch's SampledVocab}`."""
    sft = losses_lib.get_losses(["sft"])[0]
    forward = Forward(make_transformer(dataclasses.replace(run.config, vocab_size=vocab_rows),
                                       dtype=dtype), vocab_rows)

    def loss_fn(trainable, frozen, micro: Batch, batch: Batch):
        vocab = frozen["vocab"]
        fixed = frozen["params"]
        source = fixed["source"]
        pred = hypernet_lib.predict(run.module, run.hypernet_params(trainable, fixed), source,
                                    vocab.parts, vocab.mask, vocab.copied)
        params = with_embeddings(fixed["model"], pred, run.module.num_embeddings, source.dtype)
        out = forward(params, micro.student.input_ids, micro.student.attention_mask)
        ctx = losses_lib.LossContext(
            batch=micro, global_batch=batch,
            student=losses_lib.ModelOutputs(logits=mask_padded_vocab(out.logits, vocab.valid)),
            student_constants=losses_lib.TokenizerConstants(
                space_mask=vocab.space_mask, vocab_mask=vocab.valid),
        )
        lexical = lexical_loss(pred, source, vocab)
        values, metrics = [], {"lexical_distance": lexical}
        for name in loss_names:
            if name == "sft":
                value, diagnostics = sft(ctx)
                metrics.update({f"sft/{k}": v for k, v in diagnostics.items()})
            else:
                value = lexical
            values.append(value)
        return jnp.stack(values).astype(jnp.float32), metrics

    return loss_fn


def make_identity_loss_fn(run: HypernetRun):
    """`loss_fn` of identity pretraining: the batch is `int32 [N]` base token ids; the
    loss is the squared error of their predicted embeddings (summed over dimensions and
    embedding kinds, averaged over tokens)."""

    def loss_fn(trainable, frozen, ids, batch):
        del batch
        fixed = frozen["params"]
        source = fixed["source"]
        parts = ids[:, None]
        pred = hypernet_lib.predict(run.module, run.hypernet_params(trainable, fixed), source,
                                    parts, jnp.ones(parts.shape, bool), jnp.zeros(ids.shape, bool))
        target = jnp.take(source, ids, axis=0).astype(jnp.float32)
        loss = jnp.square(pred - target).sum(axis=(-2, -1)).mean()
        return loss[None], {}

    return loss_fn


class NamedTokenizerEvaluator:
    """Applies the hypernetwork to named tokenizers and scores each transferred model.

    Args:
      run: the run.
      tokenizers: name -> tokenizer spec.
      texts: validation texts (bits per byte).
      max_length: longest forward pass of the scoring.
      workdir: lm-eval results go to `workdir/lm_eval/<name>_step_<n>/`.
    """

    def __init__(self, run: HypernetRun, tokenizers: Mapping[str, str], texts: Sequence[str],
                 max_length: int, workdir: Path):
        self.run = run
        self.tokenizers = {name: load_byteify_tokenizer(spec) for name, spec in tokenizers.items()}
        self.texts = list(texts)
        self.max_length = max_length
        self.workdir = workdir
        self.tasks = harness.bound_tasks()
        self._base: dict[str, float] | None = None

    def _score(self, model: EvalModel, step: int) -> dict[str, float]:
        out = {}
        if self.texts:
            out[f"{model.name}/bits_per_byte"] = bits_per_byte(model, self.texts, self.max_length)
        if self.tasks:
            results = harness.evaluate(
                model, output_dir=self.workdir / "lm_eval" / f"{model.name}_step_{step}"
            )
            for task, metrics in results.get("results", {}).items():
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and "stderr" not in key:
                        out[f"{model.name}/{task}/{key.split(',')[0]}"] = float(value)
        return out

    def __call__(self, trainable: Mapping, step: int) -> dict[str, float]:
        run = self.run
        base_params = jax.device_get(run.base_params())
        if self._base is None:  # the base model is frozen: score it once
            base_config = transfer_lib.with_special_tokens(run.config, run.base)
            self._base = self._score(EvalModel.build(base_config, base_params, run.base, name="base"), step)
        out = dict(self._base)
        hypernet = run.trained(trainable)
        for name, tokenizer in self.tokenizers.items():
            moved = transfer_lib.transfer(
                run.config, base_params, run.base, tokenizer, init="hypernet", hypernet=hypernet,
            )
            model = EvalModel.build(moved.config, moved.params, tokenizer, name=name)
            out.update(self._score(model, step))
        return out


def _eval_texts(limit: int) -> list[str]:
    """The first `limit` text records of the `eval`-scoped source."""
    if limit <= 0:
        return []
    with gin.config_scope("eval"):
        source = sources.make_source()
    texts = []
    for record in sources.iter_records(source):
        text = record.get("text")
        if text:
            texts.append(text)
            if len(texts) >= limit:
                break
    return texts


@gin.configurable(denylist=["workdir"])
def train_zett_hn(
    workdir: Path | None,
    *,
    model: str = gin.REQUIRED,
    tokenizer: str = gin.REQUIRED,
    losses: Sequence[str] = ("sft",),
    steps: int = 1000,
    seed: int = 1234,
    batch_size: int = 16,
    num_workers: int = 1,
    identity_steps: int = 0,
    identity_lr: float = 3e-4,
    identity_tokens: int = 4096,
    train_model_mode: str = "no",
    dtype: str = "float32",
    n_data_parallel: int = 1,
    n_model_parallel: int = -1,
    log_interval: int = 10,
    eval_interval: int = 0,
    save_interval: int = 0,
    eval_at_step_zero: bool = False,
    eval_tokenizers: Mapping[str, str] | None = None,
    eval_texts: int = 64,
    eval_max_length: int = 1024,
    export: bool = True,
) -> dict[str, Any]:
    """Trains the embedding hypernetwork (see the module docstring); returns the final
    evaluation.

    Args:
      workdir: checkpoints, metrics, the operative config and the exported hypernetwork
        (`workdir/hypernet`); a workdir with checkpoints is resumed.
      model, tokenizer: the base model (HF checkpoint) and its tokenizer spec.
      losses: `sft` and/or `lexical`, combined as `Aggregation` says.
      steps: optimizer steps, identity steps included.
      batch_size: rows per step (of `TokenizerSamplerConfig.block_size` tokens).
      num_workers: Grain worker processes sampling tokenizers (0: the main process).
      identity_steps, identity_lr, identity_tokens: identity pretraining: steps, its
        constant learning rate, base tokens per step. The rest of the run follows
        `learning_rate_schedule` over `steps - identity_steps`.
      train_model_mode: only `no` (the base model stays frozen; the upstream's lora /
        full hypernetwork runs are not supported).
      dtype: compute dtype of the model and the hypernetwork (parameters train in fp32).
      n_data_parallel, n_model_parallel: the mesh (one may be -1: the rest).
      log_interval, eval_interval, save_interval: 0 disables the last two (the end always
        evaluates and saves).
      eval_tokenizers: name -> tokenizer spec of the tokenizers the hypernetwork is
        evaluated on (bits per byte of `eval_texts` validation texts from the
        `eval/make_source` source, and `eval.tasks` when bound).
      export: write the trained hypernetwork to `workdir/hypernet` at the end.

    The sampler and the architecture are bound on their own classes
    (`TokenizerSamplerConfig.*`, `HypernetConfig.*`), as are `learning_rate_schedule.*`,
    `make_optimizer.*`, `Aggregation.*`, `Checkpointer.*`, `MetricsWriter.*` and the
    `train/make_source` / `eval/make_source` sources.
    """
    if workdir is None:
        raise ValueError("train_zett_hn needs --workdir (checkpoints, metrics and the export go there).")
    if train_model_mode != "no":
        raise ValueError(
            f"train_model_mode={train_model_mode!r}: hypernetwork training keeps the base model "
            "frozen (train_model_mode='no'); adapt the model afterwards by distillation."
        )
    unknown = [name for name in losses if name not in LOSSES]
    if unknown or not losses:
        raise ValueError(f"Unknown hypernet losses {unknown or losses!r}; valid: {', '.join(LOSSES)}.")
    if not 0 <= identity_steps < steps:
        raise ValueError(f"identity_steps ({identity_steps}) must be in [0, steps={steps}).")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = _make_mesh(n_data_parallel, n_model_parallel)
    sampler_config = sampler_lib.TokenizerSamplerConfig()
    run = build(model, tokenizer, hypernet_lib.HypernetConfig(), sampler_config.hn_surface_maxlen,
                mesh=mesh, seed=seed, dtype=dtype)
    loss_names = tuple(losses)
    aggregation = agg.Aggregation()
    main_schedule = optim.learning_rate_schedule(steps - identity_steps)
    schedule = main_schedule
    if identity_steps:
        schedule = optax.join_schedules(
            [optax.constant_schedule(identity_lr), main_schedule], boundaries=[identity_steps]
        )
    tx = optim.make_optimizer(run.trainable, schedule)

    dataset = sampler_lib.make_dataset(run.base, sampler_config, batch_size=batch_size, seed=seed,
                                       num_workers=num_workers)
    data_iter = iter(dataset)
    vocab_rows = sampler_lib.vocabulary_rows(sampler_config, len(run.base.all_special_tokens))

    trainable = jax.device_put(run.trainable, run.trainable_shardings)
    frozen = jax.device_put(run.frozen, run.frozen_shardings)
    state = jax.jit(
        lambda p: step_lib.init_train_state(p, tx, jax.random.key(seed), aggregation, len(loss_names)),
    )(trainable)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    train_step = step_lib.make_train_step(
        make_loss_fn(run, loss_names, vocab_rows, dtype), tx, aggregation, loss_names=loss_names,
        total_steps=steps, learning_rate_fn=schedule,
    )
    rows_shape = (batch_size, sampler_config.block_size)
    example_rows = Batch(student=SideBatch(
        input_ids=jax.ShapeDtypeStruct(rows_shape, jnp.int32),
        attention_mask=jax.ShapeDtypeStruct(rows_shape, jnp.bool_),
        loss_mask=jax.ShapeDtypeStruct(rows_shape, jnp.bool_),
    ))
    rows_sh = batch_shardings(mesh, example_rows, run.rules)
    s = sampler_config.hn_surface_maxlen
    example_vocab = sampler_lib.SampledVocab(
        parts=np.zeros((vocab_rows, s), np.int32), mask=np.zeros((vocab_rows, s), bool),
        copied=np.zeros(vocab_rows, bool), valid=np.zeros(vocab_rows, bool),
        space_mask=np.zeros(vocab_rows, bool),
    )
    vocab_sh = vocab_shardings(example_vocab, mesh, run.rules)
    extra_sh = {"params": run.frozen_shardings, "vocab": vocab_sh}
    jit_step = jax.jit(train_step, in_shardings=(state_shardings, rows_sh, extra_sh),
                       out_shardings=(state_shardings, None), donate_argnums=(0,))
    identity_step = None
    if identity_steps:
        identity_aggregation = dataclasses.replace(
            aggregation, multitask_aggregation_fn="mean", loss_weights=None, loss_schedules=None
        )
        identity_step = jax.jit(
            step_lib.make_train_step(make_identity_loss_fn(run), tx, identity_aggregation,
                                     loss_names=("identity",), total_steps=steps,
                                     learning_rate_fn=schedule),
            in_shardings=(state_shardings, NamedSharding(mesh, jax.sharding.PartitionSpec()),
                          {"params": run.frozen_shardings}),
            out_shardings=(state_shardings, None), donate_argnums=(0,),
        )

    checkpointer = Checkpointer(workdir)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0,
                           config={"losses": list(loss_names), "steps": steps})
    start = checkpointer.latest_step()
    if start is not None:
        state = checkpointer.restore(start, abstract_like(state), data_iter)
        writer.truncate_after(start)
        logging.info("Resumed from step %d in %s.", start, workdir)
    else:
        start = 0
    evaluator = NamedTokenizerEvaluator(run, eval_tokenizers or {}, _eval_texts(eval_texts),
                                        eval_max_length, workdir)
    if eval_at_step_zero and start == 0:
        writer.write(0, evaluator(state.params, 0), split="eval")

    throughput = _Throughput()
    preempted = False
    with PreemptionWatcher() as watcher:
        for step_num in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            with sharding_context(mesh, run.rules):
                if step_num <= identity_steps:
                    rng = np.random.default_rng([seed, step_num])
                    ids = rng.choice(len(run.base), min(identity_tokens, len(run.base)), replace=False)
                    throughput.record(Batch(student=SideBatch(
                        input_ids=ids[None], attention_mask=np.ones((1, len(ids)), bool),
                        loss_mask=None)), time.perf_counter() - t0)
                    state, metrics = identity_step(state, jnp.asarray(ids, jnp.int32),
                                                   {"params": frozen})
                else:
                    batch = next(data_iter)
                    throughput.record(batch.rows, time.perf_counter() - t0)
                    stats = {"vocab_size": batch.vocab_size, "pieces_truncated": batch.truncated,
                             "noise_std": batch.noise, "texts_dropped": batch.dropped}
                    device = batch.for_device()
                    rows = jax.tree.map(jax.make_array_from_process_local_data, rows_sh, device.rows)
                    vocab = jax.device_put(device.vocab, vocab_sh)
                    state, metrics = jit_step(state, rows, {"params": frozen, "vocab": vocab})
                    metrics = {**metrics, **stats}
            if step_num % log_interval == 0 or step_num == steps:
                loss = float(jax.device_get(metrics["loss"]))
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"Loss is {loss} at step {step_num}: stopping (last checkpoint "
                        f"{checkpointer.latest_step()} in {checkpointer.directory})."
                    )
                rates, per_step = throughput.metrics()
                writer.write(step_num, {**jax.device_get(metrics), **rates})
                logging.info("step %d/%d, ETA %s", step_num, steps,
                             format_duration((steps - step_num) * per_step))
            if eval_interval and step_num % eval_interval == 0 and step_num != steps:
                writer.write(step_num, evaluator(state.params, step_num), split="eval")
            preempted = watcher.requested or checkpointer.reached_preemption(step_num)
            if (save_interval and step_num % save_interval == 0) or preempted:
                checkpointer.save(step_num, state, data_iter)
                entry.save_operative_config(workdir)
            if preempted:
                logging.warning("Preempted: saved step %d; exiting.", step_num)
                break

    final: dict[str, Any] = {}
    if not preempted:
        final_step = int(jax.device_get(state.step))
        if checkpointer.latest_step() != final_step:
            checkpointer.save(final_step, state, data_iter)
        final = evaluator(state.params, final_step)
        writer.write(final_step, final, split="eval")
        if export and jax.process_index() == 0:
            out = run.trained(state.params).save(workdir / HYPERNET_DIR)
            logging.info("Exported the hypernetwork to %s.", out)
    checkpointer.close()
    writer.close()
    return final
