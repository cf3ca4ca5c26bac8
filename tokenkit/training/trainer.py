"""The training loop behind `python -m tokenkit.train`.

`train(workdir)` (Gin-configurable; option names follow the upstream trainer) builds the
run (`tokenkit.training.setup`), the data (`tokenkit.data.assembly`), one jitted and
sharded train step (`tokenkit.training.step`), and loops:

    batch <- Grain iterator (encoded, aligned in worker processes)
    state, metrics <- step(state, batch, frozen)      # one jit, state donated
    every log_interval:  metrics.jsonl / TensorBoard line with loss, tokens/s, ETA
    every eval_interval: bits per byte of student and teacher on the validation texts
    every save_interval: Orbax checkpoint of state + data iterator position

A workdir that holds checkpoints is resumed from the latest one. SIGTERM saves at the
next step boundary and returns normally; a non-finite loss stops the run with an error,
keeping the last good checkpoint. At the end the student is exported in the HF format
(`training.export`, the code behind `python -m tokenkit.export`).

Several processes (a TPU slice, GPU hosts, `tools/multiprocess.py`) run the same loop:
each reads the rows of the global batch its devices hold (`training.multihost`), Orbax
saves and restores in all of them, process 0 alone writes metrics and the operative
config, evaluation and the export run in all (sharded parameters are gathered). A
SIGTERM to any process stops all at the same step. The workdir may be remote
(`gs://bucket/run`, `tokenkit.storage`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh

from tokenkit import entry, storage
from tokenkit import losses as losses_lib
from tokenkit.batch import Batch
from tokenkit.data.assembly import DataConfig, build_data
from tokenkit.data.pairs import TokenizerPair
from tokenkit.losses import aggregation as agg
from tokenkit.models import batch_shardings, make_mesh
from tokenkit.models.sharding import sharding_context
from tokenkit.progress import format_duration
from tokenkit.training import cost as cost_lib
from tokenkit.training import export as export_lib
from tokenkit.training import multihost, optim, setup as setup_lib, step as step_lib
from tokenkit.training.checkpoint import Checkpointer, abstract_like
from tokenkit.training.evaluator import Evaluator, report
from tokenkit.training.metrics import MetricsWriter
from tokenkit.training.preemption import PreemptionWatcher

GRADMAG_PROBES = {
    "final_norm": lambda: step_lib.leaf_probe(("student", "final_norm", "scale")),
    "last_layer": step_lib.last_layer_probe,
}
EXPORT_DIR = export_lib.EXPORT_DIR


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops without saving."""


def required_chunkings(losses: Sequence[losses_lib.Loss]) -> tuple[str, ...]:
    """Which chunk ids the data pipeline must compute for these losses."""
    return tuple(dict.fromkeys(kind for loss in losses for kind in loss.chunkings))


def make_loss_fn(run: setup_lib.RunSetup):
    """`loss_fn(trainable, frozen, micro_batch, global_batch) -> (losses [n], metrics)`."""
    losses = run.losses
    needs_hidden = any(l.needs_hidden_states for l in losses)
    needs_qkv = any(l.needs_attentions for l in losses)
    needs_embeddings = any(l.needs_output_embeddings for l in losses)
    mined = None if run.mined_mapping is None else jnp.asarray(run.mined_mapping)

    def outputs(side, params, lora, side_batch):
        out = side.forward(
            params, side_batch.input_ids, side_batch.attention_mask, lora=lora,
            expansion=side.expansion, output_hidden_states=needs_hidden, output_qkv=needs_qkv,
        )
        attentions = None
        if out.qkv is not None:  # per layer: (queries, keys, values)
            attentions = tuple(zip(*(tuple(x) for x in out.qkv)))
        return losses_lib.ModelOutputs(
            logits=out.logits,
            hidden_states=None if out.hidden_states is None else tuple(out.hidden_states),
            attentions=attentions,
            output_embeddings=side.output_embeddings(params) if needs_embeddings else None,
        )

    def loss_fn(trainable, frozen, micro: Batch, batch: Batch):
        student_out = outputs(run.student, run.student_params(trainable, frozen),
                              trainable.get("lora"), micro.student)
        teacher_out = None
        if run.teacher is not None:
            teacher_out = jax.lax.stop_gradient(outputs(
                run.teacher, run.teacher_params(trainable, frozen), None, micro.side("teacher")
            ))
        ctx = losses_lib.LossContext(
            batch=micro,
            global_batch=batch,
            student=student_out,
            student_constants=run.student_constants,
            teacher=teacher_out,
            teacher_constants=run.teacher_constants,
            params=trainable.get("loss", {}),
            mined_mapping=mined,
        )
        values, metrics = [], {}
        for loss in losses:
            value, diagnostics = loss(ctx)
            values.append(value)
            metrics.update({f"{loss.name}/{k}": v for k, v in diagnostics.items()})
        return jnp.stack(values).astype(jnp.float32), metrics

    return loss_fn


def _make_mesh(n_data_parallel: int, n_model_parallel: int) -> Mesh:
    """The run's mesh; a product smaller than the device count uses the first devices."""
    devices = jax.devices()
    wanted = n_data_parallel * n_model_parallel
    if n_data_parallel > 0 and n_model_parallel > 0 and wanted < len(devices):
        logging.warning(
            "Mesh %d x %d uses %d of the %d devices.", n_data_parallel, n_model_parallel,
            wanted, len(devices),
        )
        devices = devices[:wanted]
    return make_mesh(n_data_parallel, n_model_parallel, devices=devices)


def _to_global(batch: Batch, shardings: Any) -> Batch:
    """A per-process batch (the rows this process's devices hold, `multihost.data_shard`)
    -> global arrays sharded over the data axis."""
    return jax.tree.map(jax.make_array_from_process_local_data, shardings, batch)


class _Throughput:
    """Host-side counters between log lines: tokens, data wait, truncations."""

    def __init__(self) -> None:
        self.truncated = {"teacher": 0, "student": 0}
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.tokens = {"student": 0, "teacher": 0}
        self.wait_s = 0.0
        self.steps = 0
        self.since = now

    def record(self, batch: Batch, wait_s: float) -> None:
        self.wait_s += wait_s
        self.steps += 1
        for name, side in batch.sides().items():
            self.truncated[name] += side.num_truncated()
            self.tokens[name] += side.num_tokens()

    def metrics(self, copies: int = 1) -> tuple[dict[str, float], float]:
        """Rates since the last call over all processes, and seconds per step; then
        starts counting anew. Every process must call it (counts are summed over them);
        `copies`: how many processes read each row (more than one when the batch is
        replicated over a model axis that spans processes)."""
        now = time.perf_counter()
        elapsed = max(now - self.since, 1e-9)
        per_step = elapsed / max(self.steps, 1)
        counts = multihost.sum_over_processes({
            "student": self.tokens["student"], "teacher": self.tokens["teacher"],
            "truncated_student": self.truncated["student"],
            "truncated_teacher": self.truncated["teacher"], "wait_s": self.wait_s,
        })
        processes = jax.process_count()
        out = {
            "tokens_per_second": counts["student"] / copies / elapsed,
            "teacher_tokens_per_second": counts["teacher"] / copies / elapsed,
            "seconds_per_step": per_step,
            "data_wait_fraction": counts["wait_s"] / processes / elapsed,
            "truncated_teacher_total": round(counts["truncated_teacher"] / copies),
            "truncated_student_total": round(counts["truncated_student"] / copies),
        }
        self._reset(now)
        return out, per_step


@gin.configurable(denylist=["workdir"])
def train(
    workdir: storage.Location | None,
    *,
    losses: Sequence[str] = ("sft",),
    steps: int = 1000,
    seed: int = 1234,
    grad_acc_steps: int = 1,
    n_data_parallel: int = 1,
    n_model_parallel: int = -1,
    log_interval: int = 10,
    sync_interval: int = 10,
    eval_interval: int = 0,
    save_interval: int = 0,
    eval_at_step_zero: bool = False,
    save_at_step_zero: bool = False,
    export: bool = True,
    gradmag_probe: str = "final_norm",
    dry_run: bool = False,
    device_peak_tflops: float | None = None,
) -> dict[str, Any]:
    """Trains as configured by Gin; returns the final evaluation (for callers and tests).

    Args:
      workdir: checkpoints, metrics, the operative config and the export go here; a workdir
        with checkpoints is resumed.
      losses: loss names (see `tokenkit.losses`), combined as `Aggregation` says.
      steps: optimizer steps; each consumes one global batch of `DataConfig.batch_size`.
      grad_acc_steps: micro-batches per step (memory of one micro-batch, same result).
      n_data_parallel, n_model_parallel: mesh shape (one may be -1: the rest).
      log_interval / sync_interval: metrics lines / host syncs (non-finite checks).
      eval_interval, save_interval: 0 disables (the end of training always saves).
      gradmag_probe: where GradMag / GradNorm measure each loss's gradient: `final_norm`
        (the student's final norm scale: a forward pass and small backward ones) or
        `last_layer` (the upstream's choice: the last layer's trainable parameters,
        which costs one backward pass through the whole layer stack per loss).
      dry_run: build everything, compile the step, report its cost (FLOPs, memory) and
        return without training (`{"dry_run": cost}`); nothing is written but the
        operative config.
      device_peak_tflops: peak FLOP/s per device (in TFLOP/s) for the MFU logged with the
        metrics; default: the dense bf16 figure of the host's device kind
        (`training.cost.PEAK_FLOPS`), none on a CPU.

    What else a run is made of is bound on its own configurable: `build_run.*` (models,
    tokenizers, transfer, training mode), `DataConfig.*`, `TokenizerPair.*` (the pair
    directory and its thresholds), the loss options, `Aggregation.*`, the optimizer,
    `Checkpointer.*` (e.g. `keep`), `MetricsWriter.*`, and `eval.*`: with `eval.tasks`
    bound (e.g. by including gin/eval/tiny_world.gin), every evaluation also runs those
    lm-eval tasks on the student with the other `eval.*` settings (the frozen teacher
    once); results also go to `workdir/lm_eval/<side>_step_<n>/`.
    """
    if workdir is None:
        raise ValueError("train needs --workdir (checkpoints, metrics and the export go there).")
    workdir = storage.path(workdir)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    mesh = _make_mesh(n_data_parallel, n_model_parallel)
    logging.info("Mesh: %s", dict(mesh.shape))
    if gradmag_probe not in GRADMAG_PROBES:
        raise ValueError(f"Unknown gradmag_probe {gradmag_probe!r}; valid: {', '.join(GRADMAG_PROBES)}.")
    data_config = DataConfig()
    pair = TokenizerPair()
    run = setup_lib.build_run(mesh, losses, seed, pair)
    loss_names = tuple(l.name for l in run.losses)
    aggregation = agg.Aggregation()
    schedule = optim.learning_rate_schedule(steps)
    tx = optim.make_optimizer(run.trainable, schedule)

    # This process reads the rows of each global batch that its devices hold.
    rows = jax.ShapeDtypeStruct((data_config.batch_size,), jnp.int32)
    shard = multihost.data_shard(batch_shardings(mesh, rows, run.rules), rows.shape)
    if jax.process_count() > 1:
        logging.info("Process %d of %d reads part %d of %d of every global batch.",
                     jax.process_index(), jax.process_count(), shard[0] + 1, shard[1])
    dataset, example = build_data(
        data_config, student=run.student.tokenizer,
        teacher=None if run.teacher is None else run.teacher.tokenizer,
        chunkings=required_chunkings(run.losses), seed=seed, pair=pair, pair_data=run.pair_data,
        shard=shard,
    )
    # Processes reading the same rows (a model axis across processes) count them twice.
    copies = jax.process_count() // shard[1]
    data_iter = iter(dataset)

    # --- state, step ----------------------------------------------------------------
    trainable = jax.device_put(run.trainable, run.trainable_shardings)
    frozen = jax.device_put(run.frozen, run.frozen_shardings)
    # Initialised under jit so the optimizer state follows the parameters' shardings and
    # scalars live on the whole mesh.
    state = jax.jit(
        lambda p: step_lib.init_train_state(p, tx, jax.random.key(seed), aggregation, len(loss_names)),
    )(trainable)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    train_step = step_lib.make_train_step(
        make_loss_fn(run), tx, aggregation, loss_names=loss_names, total_steps=steps,
        grad_acc_steps=grad_acc_steps, learning_rate_fn=schedule,
        probe=GRADMAG_PROBES[gradmag_probe](),
    )
    # Shardings of the *global* batch, from the logical-axis rules (batch over "data").
    global_shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((data_config.batch_size,) + x.shape[1:], x.dtype), example
    )
    batch_sh = batch_shardings(mesh, global_shapes, run.rules)
    jit_step = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sh, run.frozen_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )
    # Compiled ahead of the loop (traced with the mesh and rules, so the models'
    # activation constraints apply), which also tells what a step costs.
    batch_spec = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                              global_shapes, batch_sh)
    with sharding_context(mesh, run.rules):
        compiled_step = jit_step.lower(state, batch_spec, frozen).compile()
    cost = cost_lib.step_cost(
        compiled_step,
        student=run.student.config, student_shape=global_shapes.student.input_ids.shape,
        teacher=None if run.teacher is None else run.teacher.config,
        teacher_shape=None if global_shapes.teacher is None else global_shapes.teacher.input_ids.shape,
    )
    peak = cost_lib.device_peak(device_peak_tflops)
    logging.info("%s; peak %s per device x %d devices.", cost.summary(),
                 "unknown" if peak is None else f"{peak / 1e12:.0f} TFLOP/s", mesh.size)
    if dry_run:
        print(cost.summary())
        return {"dry_run": cost.as_dict()}

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

    evaluator = Evaluator(
        run, workdir, eval_texts=data_config.eval_texts,
        eval_chats=data_config.eval_chats, max_length=data_config.eval_max_length,
    )
    final_eval: dict[str, Any] = {}
    if eval_at_step_zero and start == 0:
        writer.write(0, evaluator(state, frozen, 0), split="eval")
    if save_at_step_zero and start == 0:
        checkpointer.save(0, state, data_iter)

    pending: list[tuple[int, dict]] = []
    throughput = _Throughput()
    preempted = False

    def sync() -> None:
        """Pulls pending metrics to the host, checks them, logs every log_interval."""
        nonlocal pending
        for step_num, metrics in jax.device_get(pending):
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"Loss is {loss} at step {step_num}: stopping. The last good checkpoint "
                    f"({checkpointer.latest_step()}) is kept in {checkpointer.directory}; "
                    "lower the learning rate or check the data of this step."
                )
            if step_num % log_interval == 0 or step_num == steps:
                writer.write(step_num, metrics)
        pending = []

    with PreemptionWatcher(multihost.preemption_signals()) as watcher:
        for step_num in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            batch = next(data_iter)
            throughput.record(batch, time.perf_counter() - t0)
            device_batch = _to_global(batch.for_device(), batch_sh)
            # Traced (on the first call) with the mesh and rules, so the models'
            # activation constraints apply.
            state, metrics = compiled_step(state, device_batch, frozen)
            if step_num % log_interval == 0 or step_num == steps:
                jax.block_until_ready(metrics["loss"])
                rates, per_step = throughput.metrics(copies)
                metrics = {**metrics, **rates}
                if peak is not None:
                    metrics["mfu"] = cost.mfu(per_step, peak, mesh.size)
                logging.info("step %d/%d, ETA %s", step_num, steps,
                             format_duration((steps - step_num) * per_step))
            pending.append((step_num, metrics))
            if step_num % sync_interval == 0 or step_num % log_interval == 0:
                sync()
            if eval_interval and step_num % eval_interval == 0 and step_num != steps:
                sync()
                writer.write(step_num, evaluator(state, frozen, step_num), split="eval")
            preempted = watcher.requested or checkpointer.reached_preemption(step_num)
            if (save_interval and step_num % save_interval == 0) or preempted:
                sync()  # never save a state whose loss is not finite
                checkpointer.save(step_num, state, data_iter)
                entry.save_operative_config(workdir)
            if preempted:
                logging.warning("Preempted: saved step %d; exiting.", step_num)
                break
        sync()

    if not preempted:
        final_step = int(jax.device_get(state.step))
        if checkpointer.latest_step() != final_step:
            checkpointer.save(final_step, state, data_iter)
        final_eval = evaluator(state, frozen, final_step)
        writer.write(final_step, final_eval, split="eval")
        report(final_eval)
        if export:  # every process: sharded parameters are gathered
            export_lib.export_student(run, state.params, frozen, workdir / EXPORT_DIR)
    checkpointer.close()
    writer.close()
    logging.info(
        "Truncated examples over the run: %d teacher, %d student (max lengths %d / %d).",
        throughput.truncated["teacher"], throughput.truncated["student"],
        data_config.max_teacher_length, data_config.max_student_length,
    )
    return final_eval
