"""The train step: gradient accumulation, multi-loss aggregation, optimizer update.

The step is model-agnostic. It takes a `loss_fn(trainable, frozen, micro_batch,
global_batch)` returning the vector of the step's (unweighted) losses and a dict of
scalar diagnostics, and turns one *global* batch into one optimizer update:

- the batch is split into `grad_acc_steps` micro-batches, strided so that each holds
  rows from every data-parallel shard, and scanned over (`lax.scan`), so memory is that
  of one micro-batch;
- losses are normalised by statistics of the global batch (see `tokenkit.losses`), so
  the *sum* over micro-batches is exactly the loss of the whole batch, and accumulation
  by k micro-batches of b rows equals one batch of k*b rows;
- several losses are combined as `tokenkit.losses.aggregation.Aggregation` says
  (weighted mean/sum, GradMag on probe parameters, GradNorm, PCGrad and friends).

`make_train_step` returns a pure function `(state, batch, frozen) -> (state, metrics)`
for the trainer to `jax.jit` with its shardings, donating `state`. `frozen` holds the
parameters that never train (the teacher, the student's frozen part); it is an argument
rather than a closure so that it is neither copied into the program nor differentiated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tokenkit.losses import aggregation as agg
from tokenkit.training.optim import global_norm

Batch = Mapping[str, jax.Array]
LossFn = Callable[[Any, Any, Batch, Batch], tuple[jax.Array, dict[str, jax.Array]]]


@struct.dataclass
class TrainState:
    """What a step updates and a checkpoint stores.

    step: optimizer steps taken so far (int32 scalar).
    params: the trainable parameters only (fp32 master weights).
    opt_state: the optimizer state over `params`.
    rng: raw key data (`jax.random.key_data`), for losses or models that sample.
    aggregation_state: GradNorm's state, or an empty dict.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    aggregation_state: Any


def init_train_state(
    params: Any,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    aggregation: agg.Aggregation,
    n_losses: int,
) -> TrainState:
    """A fresh state at step 0."""
    aggregation_state = (
        agg.gradnorm_init(aggregation, n_losses) if aggregation.kind == "gradnorm" else {}
    )
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng,
        aggregation_state=aggregation_state,
    )


def split_micro_batches(batch: Batch, k: int) -> Batch:
    """`[B, ...]` -> `[k, B/k, ...]` with micro-batch i = rows i, i+k, i+2k, ...

    Striding (rather than contiguous blocks) keeps every data-parallel shard busy in
    every micro-batch when B is sharded in contiguous blocks over devices.
    """
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % k:
            raise ValueError(
                f"Batch dimension {x.shape[0]} is not divisible by grad_acc_steps={k}."
            )
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return {key: split(value) for key, value in batch.items()}


def _tree_add(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.add, a, b)


def probe_paths(params: Any) -> Callable[[Any], Any]:
    """Selects the probe parameters for GradMag/GradNorm: the last layer.

    Layers are stacked on a leading axis under a `layers` key, so the probe is the last
    slice of every trainable leaf under `layers`; with no trainable layer parameters
    (e.g. embeddings-only training) the whole trainable tree is the probe.
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    in_layers = [
        any(getattr(k, "key", None) == "layers" for k in path) for path, _ in flat
    ]
    return in_layers if any(in_layers) else None  # type: ignore[return-value]


def _with_probe(params: Any, probe: list[jax.Array], in_layers: list[bool] | None) -> Any:
    """`params` with `probe` added to the last layer slice (or to everything)."""
    leaves, treedef = jax.tree.flatten(params)
    out, i = [], 0
    for j, leaf in enumerate(leaves):
        if in_layers is None:
            out.append(leaf + probe[i].astype(leaf.dtype))
            i += 1
        elif in_layers[j]:
            out.append(leaf.at[-1].add(probe[i].astype(leaf.dtype)))
            i += 1
        else:
            out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def _probe_zeros(params: Any, in_layers: list[bool] | None) -> list[jax.Array]:
    leaves = jax.tree.leaves(params)
    if in_layers is None:
        return [jnp.zeros(x.shape, jnp.float32) for x in leaves]
    return [jnp.zeros(x.shape[1:], jnp.float32) for x, m in zip(leaves, in_layers) if m]


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    aggregation: agg.Aggregation,
    *,
    loss_names: tuple[str, ...],
    total_steps: int,
    grad_acc_steps: int = 1,
    learning_rate_fn: optax.Schedule | None = None,
) -> Callable[[TrainState, Batch, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `step(state, batch) -> (state, metrics)`; see the module docstring."""
    n = len(loss_names)
    aggregation.check_num_losses(n)
    k = grad_acc_steps
    if k < 1:
        raise ValueError(f"grad_acc_steps must be >= 1, got {k}.")

    def weighted(trainable, frozen, micro, batch, weights):
        losses, metrics = loss_fn(trainable, frozen, micro, batch)
        return losses * weights, (losses, metrics)

    def scan_micro(fn, init, micro_batches):
        def body(carry, micro):
            return _tree_add(carry, fn(micro)), None

        if k == 1:
            return fn(jax.tree.map(lambda x: x[0], micro_batches))
        total, _ = jax.lax.scan(body, init, micro_batches)
        return total

    def step(state: TrainState, batch: Batch, frozen: Any = None):
        weights = agg.loss_weights(aggregation, n, state.step, total_steps)
        micro_batches = split_micro_batches(batch, k)
        trainable = state.params
        kind = aggregation.kind
        extra: dict[str, jax.Array] = {}
        aggregation_state = state.aggregation_state

        def zero_carry(fn_micro):
            """A zero accumulator shaped like `fn_micro`'s output."""
            shapes = jax.eval_shape(fn_micro, jax.tree.map(lambda x: x[0], micro_batches))
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        if kind == "per_loss_grads":
            def micro_fn(micro):
                jac, (losses, metrics) = jax.jacrev(
                    lambda p: weighted(p, frozen, micro, batch, weights), has_aux=True
                )(trainable)
                return jac, losses, metrics

            task_grads, losses, metrics = scan_micro(micro_fn, zero_carry(micro_fn), micro_batches)
            grads, norms = agg.aggregate_task_grads(aggregation, task_grads)
            extra.update({f"{key}/{name}": v[i] for key, v in norms.items()
                          for i, name in enumerate(loss_names)})
            total_loss = jnp.sum(losses * weights)
        else:
            scale, denominator = weights, None
            if kind in ("probe", "gradnorm"):
                in_layers = probe_paths(trainable)
                zeros = _probe_zeros(trainable, in_layers)

                def probe_fn(micro):
                    jac, _ = jax.jacrev(
                        lambda probe: weighted(_with_probe(trainable, probe, in_layers),
                                               frozen, micro, batch, weights),
                        has_aux=True,
                    )(zeros)
                    return jac

                probe_grads = scan_micro(probe_fn, zero_carry(probe_fn), micro_batches)
                if kind == "probe":
                    probe_weights, denominator, diag = agg.approx_gradmag_weights(
                        aggregation, probe_grads
                    )
                    scale = weights * probe_weights
                else:
                    scale = weights * aggregation_state.weights
                    diag = {"approx_grad_norm": agg.global_norms(probe_grads)}
                extra.update({f"{key}/{name}": v[i] for key, v in diag.items()
                              for i, name in enumerate(loss_names)})

            def objective(p, micro):
                losses, metrics = loss_fn(p, frozen, micro, batch)
                scaled = losses * scale
                if kind == "loss":
                    value = agg.combine_losses(aggregation, scaled)
                else:
                    value = jnp.sum(scaled) / (1.0 if denominator is None else denominator)
                return value, (losses, metrics)

            def micro_fn(micro):
                grads, (losses, metrics) = jax.grad(objective, has_aux=True)(trainable, micro)
                return grads, losses, metrics

            grads, losses, metrics = scan_micro(micro_fn, zero_carry(micro_fn), micro_batches)
            if kind == "loss":
                total_loss = agg.combine_losses(aggregation, losses * weights)
            else:
                total_loss = jnp.sum(losses * scale) / (1.0 if denominator is None else denominator)
            if kind == "gradnorm":
                aggregation_state, diag = agg.gradnorm_update(
                    aggregation, aggregation_state, losses * weights,
                    agg.global_norms(probe_grads), state.step,
                )
                extra.update({f"gradnorm_{key}/{name}": v[i] for key, v in diag.items()
                              for i, name in enumerate(loss_names)})

        grad_norm = global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        params = optax.apply_updates(trainable, updates)
        out = {
            "loss": total_loss,
            "grad_norm": grad_norm,
            **{f"loss/{name}": losses[i] for i, name in enumerate(loss_names)},
            **{f"loss_weight/{name}": weights[i] for i, name in enumerate(loss_names)},
            # Diagnostics are sums over micro-batches of per-micro-batch values.
            **{key: value / k for key, value in metrics.items()},
            **extra,
        }
        if learning_rate_fn is not None:
            out["learning_rate"] = learning_rate_fn(state.step)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state,
            aggregation_state=aggregation_state,
        )
        return new_state, out

    return step
