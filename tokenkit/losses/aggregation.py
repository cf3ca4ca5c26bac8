"""Combining several losses into one update: weights, schedules and gradient surgery.

Pure functions the trainer calls inside its jitted step. `Aggregation` (Gin-configurable,
upstream option names) says how; what the trainer has to compute depends on its `kind`:

- `"loss"` (`mean`, the upstream default, or `sum`): combine the weighted losses
  (`combine_losses`) and differentiate once.
- `"probe"` (`approx_gradmag`, `approx_gradmag_preserve_mag`): per-loss gradients of a
  cheap probe subset of parameters (upstream: the last layer) give each loss a weight
  `1 / |g_i|` (`approx_gradmag_weights`); then differentiate
  `sum_i w_i l_i / denominator` once (on the probe parameters that equals the sum of the
  normalised per-loss gradients).
- `"gradnorm"`: like a probe, with weights learnt by GradNorm (`gradnorm_update`, its
  state from `gradnorm_init`).
- `"per_loss_grads"` (a `+`-chain of `pcgrad`, `gradmag`, `gradclip:MAX_NORM`,
  `identity`): full per-loss gradients, stacked on a leading axis (`jax.jacrev` of the
  vector of weighted losses), are transformed and summed (`aggregate_task_grads`); the
  reported loss is the sum.

Loss weights multiply the losses before any of this; each may follow a schedule over
the training steps: `constant`, `linear` (0 -> w), `cosine` (w -> 0),
`reverse_cosine` (0 -> w), `warmup:N` (0 -> w over N steps, then w).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax
from flax import struct

from tokenkit.losses.context import check_choice

LOSS_METHODS = ("mean", "sum")
PROBE_METHODS = ("approx_gradmag", "approx_gradmag_preserve_mag")
GRAD_TRANSFORMS = ("pcgrad", "gradmag", "gradclip", "identity")
SCHEDULES = ("constant", "linear", "cosine", "reverse_cosine", "warmup")
NORM_EPSILON = 1e-8


def _parse_schedule(schedule: str) -> tuple[str, float | None]:
    name, _, arg = schedule.partition(":")
    check_choice("loss schedule", name, SCHEDULES)
    if name == "warmup":
        try:
            steps = float(arg)
        except ValueError:
            raise ValueError(f"Invalid loss schedule {schedule!r}; write warmup:N with N > 0 steps.") from None
        if steps <= 0:
            raise ValueError(f"Invalid loss schedule {schedule!r}; warmup needs N > 0 steps.")
        return name, steps
    if arg:
        raise ValueError(f"Invalid loss schedule {schedule!r}; only warmup takes an argument.")
    return name, None


def _parse_transforms(method: str) -> list[tuple[str, tuple]]:
    chain = []
    for part in method.split("+"):
        name, *args = part.split(":")
        check_choice("multitask_aggregation_fn part", name, GRAD_TRANSFORMS)
        parsed = tuple(json.loads(a) for a in args)
        if name == "gradclip" and (len(parsed) != 1 or not parsed[0] > 0):
            raise ValueError(f"Invalid {part!r}; write gradclip:MAX_NORM with MAX_NORM > 0.")
        if name != "gradclip" and name != "gradmag" and parsed:
            raise ValueError(f"Invalid {part!r}; {name} takes no argument.")
        chain.append((name, parsed))
    return chain


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Aggregation:
    """How the losses of a step are combined (see the module docstring).

    multitask_aggregation_fn: `mean` (upstream's default, None), `sum`,
      `approx_gradmag`, `approx_gradmag_preserve_mag`, `gradnorm`, or a `+`-chain of
      `pcgrad`, `gradmag`, `gradclip:MAX_NORM`, `identity`.
    loss_weights: one weight per loss (default 1 each).
    loss_schedules: one schedule per loss (default constant).
    gradnorm_alpha: GradNorm's restoring-force exponent.
    gradnorm_lr: learning rate of GradNorm's AdamW over the weights.
    """

    multitask_aggregation_fn: str | None = "mean"
    loss_weights: Sequence[float] | None = None
    loss_schedules: Sequence[str] | None = None
    gradnorm_alpha: float = 0.12
    gradnorm_lr: float = 2.5e-2

    def __post_init__(self):
        method = self.multitask_aggregation_fn or "mean"
        object.__setattr__(self, "multitask_aggregation_fn", method)
        if method not in LOSS_METHODS + PROBE_METHODS + ("gradnorm",):
            try:
                _parse_transforms(method)
            except ValueError as e:
                raise ValueError(
                    f"Invalid multitask_aggregation_fn={method!r}: {e} Valid: one of "
                    f"{list(LOSS_METHODS + PROBE_METHODS + ('gradnorm',))} or a '+'-chain of "
                    f"{list(GRAD_TRANSFORMS)}."
                ) from None
        if self.loss_weights is not None:
            object.__setattr__(self, "loss_weights", tuple(float(w) for w in self.loss_weights))
        if self.loss_schedules is not None:
            object.__setattr__(self, "loss_schedules", tuple(self.loss_schedules))
            for schedule in self.loss_schedules:
                _parse_schedule(schedule)

    @property
    def kind(self) -> str:
        """`loss`, `probe`, `gradnorm` or `per_loss_grads`: what the trainer computes."""
        method = self.multitask_aggregation_fn
        if method in LOSS_METHODS:
            return "loss"
        if method in PROBE_METHODS:
            return "probe"
        if method == "gradnorm":
            return "gradnorm"
        return "per_loss_grads"

    def check_num_losses(self, n: int) -> None:
        for field in ("loss_weights", "loss_schedules"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"{field} has {len(value)} entries for {n} losses: {list(value)}.")


def schedule_multiplier(schedule: str, step: jax.Array, total_steps: int) -> jax.Array:
    """The factor a schedule applies to a loss weight at `step` (0-based)."""
    name, arg = _parse_schedule(schedule)
    step = jnp.asarray(step, jnp.float32)
    if name == "constant":
        return jnp.ones((), jnp.float32)
    if name == "warmup":
        return jnp.minimum(step / arg, 1.0)
    fraction = step / total_steps
    if name == "linear":
        return fraction
    if name == "cosine":
        return (1 + jnp.cos(jnp.pi * fraction)) / 2
    return (1 - jnp.cos(jnp.pi * fraction)) / 2


def loss_weights(aggregation: Aggregation, n_losses: int, step: jax.Array, total_steps: int) -> jax.Array:
    """`float32[n_losses]`: each loss's weight at `step`, schedule applied."""
    aggregation.check_num_losses(n_losses)
    base = aggregation.loss_weights or (1.0,) * n_losses
    schedules = aggregation.loss_schedules or ("constant",) * n_losses
    return jnp.stack(
        [w * schedule_multiplier(s, step, total_steps) for w, s in zip(base, schedules)]
    ).astype(jnp.float32)


def combine_losses(aggregation: Aggregation, weighted_losses: jax.Array) -> jax.Array:
    """The scalar to differentiate for `kind == "loss"`: mean or sum of weighted losses."""
    if aggregation.kind != "loss":
        raise ValueError(f"combine_losses is for mean/sum; {aggregation.multitask_aggregation_fn!r} is {aggregation.kind}.")
    if aggregation.multitask_aggregation_fn == "mean":
        return jnp.mean(weighted_losses)
    return jnp.sum(weighted_losses)


# --- per-loss gradients ------------------------------------------------------------


def stack_task_grads(task_grads: Sequence[Any]) -> Any:
    """A list of per-loss gradient pytrees -> one pytree with a leading loss axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *task_grads)


def global_norms(task_grads: Any) -> jax.Array:
    """`[n]`: the global L2 norm of each loss's gradient (leading axis = loss)."""
    squares = [jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1) for x in jax.tree.leaves(task_grads)]
    return jnp.sqrt(sum(squares))


def _scale_tasks(task_grads: Any, factors: jax.Array) -> Any:
    return jax.tree.map(lambda g: g * factors.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), task_grads)


def gradmag(task_grads: Any, epsilon: float = NORM_EPSILON) -> Any:
    """Each loss's gradient divided by its global norm (+ epsilon)."""
    return _scale_tasks(task_grads, 1.0 / (global_norms(task_grads) + epsilon))


def gradclip(task_grads: Any, max_norm: float) -> Any:
    """Each loss's gradient clipped to global norm `max_norm`."""
    norms = global_norms(task_grads)
    return _scale_tasks(task_grads, max_norm / jnp.maximum(norms, max_norm))


def pcgrad(task_grads: Any) -> Any:
    """PCGrad (Yu et al., 2020) over the whole gradient: for each loss, in turn remove the
    component along every other loss's gradient that conflicts with it (negative dot).

    Dot products are taken over all parameters together, as in the paper (upstream
    projects each parameter array separately), and against the running projected
    gradient; the other losses are visited in index order.
    """
    leaves, treedef = jax.tree.flatten(task_grads)
    flat = jnp.concatenate([x.reshape(x.shape[0], -1).astype(jnp.float32) for x in leaves], axis=1)
    n = flat.shape[0]
    projected = []
    for i in range(n):
        g = flat[i]
        for j in range(n):
            if i == j:
                continue
            other = flat[j]
            dot = jnp.vdot(g, other)
            g = g - jnp.minimum(dot, 0.0) * other / jnp.maximum(jnp.vdot(other, other), NORM_EPSILON)
        projected.append(g)
    projected = jnp.stack(projected)
    out, offset = [], 0
    for x in leaves:
        size = x[0].size
        out.append(projected[:, offset : offset + size].reshape(x.shape).astype(x.dtype))
        offset += size
    return jax.tree.unflatten(treedef, out)


def aggregate_task_grads(aggregation: Aggregation, task_grads: Any) -> tuple[Any, dict[str, jax.Array]]:
    """Applies the `+`-chain to stacked per-loss gradients and sums over losses.

    Returns the combined gradient and per-loss global norms before and after (`[n]`).
    """
    if aggregation.kind != "per_loss_grads":
        raise ValueError(
            f"aggregate_task_grads needs a '+'-chain of {list(GRAD_TRANSFORMS)}; "
            f"got {aggregation.multitask_aggregation_fn!r}."
        )
    before = global_norms(task_grads)
    for name, args in _parse_transforms(aggregation.multitask_aggregation_fn):
        if name == "pcgrad":
            task_grads = pcgrad(task_grads)
        elif name == "gradmag":
            task_grads = gradmag(task_grads, *args)
        elif name == "gradclip":
            task_grads = gradclip(task_grads, *args)
    after = global_norms(task_grads)
    grad = jax.tree.map(lambda g: jnp.sum(g, axis=0), task_grads)
    return grad, {"global_grad_norm_before_agg": before, "global_grad_norm_after_agg": after}


def approx_gradmag_weights(
    aggregation: Aggregation, probe_task_grads: Any
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(weights `[n]`, denominator, diagnostics) from per-loss gradients of the probe params.

    Differentiate `sum_i weights_i * loss_i / denominator`; the weights are
    `1 / (|g_i| + eps)` (stop-gradient); `_preserve_mag` divides by their sum so the
    update keeps the scale of one loss.
    """
    if aggregation.kind != "probe":
        raise ValueError(f"approx_gradmag_weights is for {list(PROBE_METHODS)}, not {aggregation.multitask_aggregation_fn!r}.")
    norms = global_norms(probe_task_grads)
    weights = jax.lax.stop_gradient(1.0 / (norms + NORM_EPSILON))
    if aggregation.multitask_aggregation_fn == "approx_gradmag_preserve_mag":
        denominator = jnp.sum(weights)
    else:
        denominator = jnp.ones((), jnp.float32)
    return weights, denominator, {"approx_grad_norm": norms, "approx_loss_weight": weights}


# --- GradNorm ----------------------------------------------------------------------


@struct.dataclass
class GradNormState:
    """GradNorm's learnt loss weights, the losses at step 0, and its optimizer state."""

    weights: jax.Array
    initial_losses: jax.Array
    opt_state: Any


def _gradnorm_tx(aggregation: Aggregation) -> optax.GradientTransformation:
    return optax.adamw(learning_rate=aggregation.gradnorm_lr)


def gradnorm_init(aggregation: Aggregation, n_losses: int) -> GradNormState:
    """Weights 1, initial losses unset (filled at step 0)."""
    weights = jnp.ones((n_losses,), jnp.float32)
    return GradNormState(weights, jnp.ones((n_losses,), jnp.float32), _gradnorm_tx(aggregation).init(weights))


def gradnorm_update(
    aggregation: Aggregation,
    state: GradNormState,
    losses: jax.Array,
    probe_grad_norms: jax.Array,
    step: jax.Array,
) -> tuple[GradNormState, dict[str, jax.Array]]:
    """One GradNorm step (Chen et al., 2018) on the loss weights.

    `losses` are this step's weighted losses, `probe_grad_norms` the norms of their
    probe-parameter gradients (`global_norms`), both `[n]`; the step's update uses
    `state.weights` (before this call). The weights move to make each `w_i |g_i|`
    approach the mean times `(relative inverse training rate) ** alpha`, then are
    renormalised to sum to n. The target is a constant, as in the paper (upstream
    differentiates through it).
    """
    if aggregation.kind != "gradnorm":
        raise ValueError(f"gradnorm_update needs multitask_aggregation_fn='gradnorm', not {aggregation.multitask_aggregation_fn!r}.")
    losses = jax.lax.stop_gradient(losses)
    initial = jnp.where(jnp.asarray(step) == 0, losses, state.initial_losses)
    ratio = losses / initial
    relative = ratio / jnp.mean(ratio)

    def objective(weights):
        weighted_norms = probe_grad_norms * weights
        target = jax.lax.stop_gradient(jnp.mean(weighted_norms) * relative**aggregation.gradnorm_alpha)
        return jnp.mean(jnp.abs(weighted_norms - target))

    tx = _gradnorm_tx(aggregation)
    updates, opt_state = tx.update(jax.grad(objective)(state.weights), state.opt_state, state.weights)
    weights = optax.apply_updates(state.weights, updates)
    weights = weights / jnp.sum(weights) * weights.shape[0]
    new_state = GradNormState(weights, initial, opt_state)
    return new_state, {"weight": weights, "initial_loss": initial, "loss_ratio": ratio, "approx_grad_norm": probe_grad_norms}
