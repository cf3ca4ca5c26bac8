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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tokenkit.losses import aggregation as agg
from tokenkit.training.optim import global_norm

Batch = Any  # a tokenkit.batch.Batch (any pytree of [B, ...] arrays)
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
    """Every leaf `[B, ...]` -> `[k, B/k, ...]` with micro-batch i = rows i, i+k, i+2k, ...

    Striding (rather than contiguous blocks) keeps every data-parallel shard busy in
    every micro-batch when B is sharded in contiguous blocks over devices.
    """
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % k:
            raise ValueError(
                f"Batch dimension {x.shape[0]} is not divisible by grad_acc_steps={k}."
            )
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _tree_add(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.add, a, b)


class Probe(NamedTuple):
    """Where GradMag/GradNorm measure each loss's gradient: a zero perturbation added to
    some parameters, whose per-loss gradients are the measurement.

    zeros(trainable, frozen) -> the perturbation (a list of arrays);
    inject(trainable, frozen, perturbation) -> (trainable, frozen) with it added.
    """

    zeros: Callable[[Any, Any], list[jax.Array]]
    inject: Callable[[Any, Any, list[jax.Array]], tuple[Any, Any]]


def last_layer_probe() -> Probe:
    """The upstream's probe: the last transformer layer's trainable parameters.

    Layers are stacked on a leading axis under a `layers` key, so this is the last
    slice of every trainable leaf under `layers` (with none, the whole trainable tree).
    Exact to the upstream, but its gradient runs back through the whole layer scan (the
    stacked arrays depend on the perturbation), once per loss.
    """

    def in_layers(trainable: Any) -> list[bool] | None:
        flat = jax.tree_util.tree_flatten_with_path(trainable)[0]
        marks = [any(getattr(k, "key", None) == "layers" for k in path) for path, _ in flat]
        return marks if any(marks) else None

    def zeros(trainable: Any, frozen: Any) -> list[jax.Array]:
        del frozen
        marks, leaves = in_layers(trainable), jax.tree.leaves(trainable)
        if marks is None:
            return [jnp.zeros(x.shape, jnp.float32) for x in leaves]
        return [jnp.zeros(x.shape[1:], jnp.float32) for x, m in zip(leaves, marks) if m]

    def inject(trainable: Any, frozen: Any, probe: list[jax.Array]) -> tuple[Any, Any]:
        marks = in_layers(trainable)
        leaves, treedef = jax.tree.flatten(trainable)
        out, i = [], 0
        for j, leaf in enumerate(leaves):
            if marks is None or marks[j]:
                delta = probe[i].astype(leaf.dtype)
                out.append(leaf + delta if marks is None else leaf.at[-1].add(delta))
                i += 1
            else:
                out.append(leaf)
        return jax.tree.unflatten(treedef, out), frozen

    return Probe(zeros, inject)


def leaf_probe(path: tuple[str, ...]) -> Probe:
    """A probe on one named parameter, trainable or frozen (e.g. the final norm's scale).

    Its gradient only runs back from the losses to that parameter, so for a parameter
    after the layer stack the probe costs a forward pass and a few small backward ones.
    """

    def find(trainable: Any, frozen: Any) -> tuple[int, Any]:
        for index, tree in enumerate((trainable, frozen)):
            node = tree
            for key in path:
                if not isinstance(node, Mapping) or key not in node:
                    break
                node = node[key]
            else:
                return index, node
        raise KeyError(f"Probe parameter {'/'.join(path)} is in neither parameter tree.")

    def zeros(trainable: Any, frozen: Any) -> list[jax.Array]:
        _, leaf = find(trainable, frozen)
        return [jnp.zeros(leaf.shape, jnp.float32)]

    def inject(trainable: Any, frozen: Any, probe: list[jax.Array]) -> tuple[Any, Any]:
        index, leaf = find(trainable, frozen)
        trees = [trainable, frozen]

        def put(node: Mapping, keys: tuple[str, ...]) -> dict:
            if not keys:
                return leaf + probe[0].astype(leaf.dtype)
            return {**node, keys[0]: put(node[keys[0]], keys[1:])}

        trees[index] = put(trees[index], path)
        return trees[0], trees[1]

    return Probe(zeros, inject)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    aggregation: agg.Aggregation,
    *,
    loss_names: tuple[str, ...],
    total_steps: int,
    grad_acc_steps: int = 1,
    learning_rate_fn: optax.Schedule | None = None,
    probe: Probe | None = None,
) -> Callable[[TrainState, Batch, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds `step(state, batch, frozen) -> (state, metrics)`; see the module docstring.

    `probe` says where GradMag/GradNorm measure gradients (default: the last layer).
    """
    probe = last_layer_probe() if probe is None else probe
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
                zeros = probe.zeros(trainable, frozen)

                def probe_fn(micro):
                    jac, _ = jax.jacrev(
                        lambda delta: weighted(*probe.inject(trainable, frozen, delta),
                                               micro, batch, weights),
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
