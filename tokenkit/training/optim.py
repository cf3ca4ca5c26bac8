"""Optimizer: AdamW with a decay mask, parameter groups, clipping and LR schedules.

The optimizer only ever sees the *trainable* parameters (the trainer splits them off
with `tokenkit.training.params.partition`), so frozen weights such as the teacher's
never get optimizer state. Gradient accumulation happens inside the jitted step
(`tokenkit.training.step`), so one optimizer update always consumes the whole global
batch and the learning-rate schedule counts optimizer steps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax
from absl import logging

SCHEDULES = ("linear", "cosine", "constant")
# Upstream default: the losses' projector parameters learn twice as fast (the upstream
# also doubles its learned loss weights; tokenkit has none).
DEFAULT_PARAM_GROUPS = (
    (r".*(projector_query|projector_s2t|projector_t2s|projector_latents).*", 2.0),
)


def path_string(path: Sequence[Any]) -> str:
    """`('model', 'layers', 'attn', 'kernel')` -> `'model/layers/attn/kernel'`.

    Accepts plain keys or JAX key-path entries (`DictKey`, `GetAttrKey`, ...).
    """
    return "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


@gin.configurable(denylist=["steps"])
def learning_rate_schedule(
    steps: int,
    *,
    learning_rate: float = 1e-5,
    warmup_steps: int = 0,
    decay: str = "linear",
    final_lr_fraction: float = 0.0,
    prefix_steps: int = 0,
    prefix_learning_rate: float = 0.0,
) -> optax.Schedule:
    """An optional linear prefix, linear warmup, then linear/cosine decay or constant.

    Args:
      steps: total optimizer steps of the run.
      learning_rate: peak learning rate (after warmup).
      warmup_steps: linear warmup from 0 to `learning_rate`.
      decay: `linear` (to `final_lr_fraction * learning_rate` at `steps`), `cosine`
        (likewise, cosine-shaped) or `constant`.
      final_lr_fraction: learning rate at the end, as a fraction of the peak.
      prefix_steps, prefix_learning_rate: a linear ramp from 0 to
        `prefix_learning_rate` before the warmup (upstream's "linear prefix").
    """
    if decay not in SCHEDULES:
        raise ValueError(f"Unknown decay {decay!r}; valid: {', '.join(SCHEDULES)}.")
    if warmup_steps + prefix_steps > steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) + prefix_steps ({prefix_steps}) exceed "
            f"steps ({steps})."
        )
    decay_steps = max(steps - warmup_steps - prefix_steps, 1)
    final = learning_rate * final_lr_fraction
    if decay == "linear":
        decay_fn = optax.linear_schedule(learning_rate, final, decay_steps)
    elif decay == "cosine":
        decay_fn = optax.cosine_decay_schedule(
            learning_rate, decay_steps, alpha=final_lr_fraction
        )
    else:
        decay_fn = optax.constant_schedule(learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, prefix_learning_rate, max(prefix_steps, 1)),
            optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1)),
            decay_fn,
        ],
        boundaries=[prefix_steps, prefix_steps + warmup_steps],
    )


def weight_decay_mask(params: Mapping[str, Any]) -> Any:
    """True for weights that decay: not biases, not normalisation scales.

    Decided by name rather than rank because scanned layers stack every parameter
    with a leading layer axis (a norm scale is then 2-D).
    """
    def decays(path: tuple[Any, ...], _: Any) -> bool:
        names = path_string(path).lower().split("/")
        if names[-1] in ("bias", "b", "scale"):
            return False
        return not any("norm" in name for name in names)

    # tree_map keeps empty sub-dicts (e.g. no LoRA), which flatten/unflatten would drop.
    return jax.tree_util.tree_map_with_path(decays, params)


def param_group_labels(
    params: Mapping[str, Any], groups: Sequence[tuple[str, float]]
) -> tuple[Any, dict[str, float]]:
    """Labels each parameter with the first group whose regex matches its path.

    Returns the label tree and `{label: lr_scale}`; unmatched parameters get the
    `default` label with scale 1.
    """
    scales = {"default": 1.0}
    compiled = []
    for i, (pattern, scale) in enumerate(groups):
        label = f"group{i}"
        compiled.append((re.compile(pattern), label))
        scales[label] = float(scale)
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: next(
            (lab for rx, lab in compiled if rx.fullmatch(path_string(path))), "default"
        ),
        params,
    )
    flat_labels = jax.tree.leaves(labels)
    counts = {lab: flat_labels.count(lab) for lab in scales}
    for i, (pattern, scale) in enumerate(groups):
        if counts[f"group{i}"]:
            logging.info(
                "Parameter group %r (lr x%g): %d tensors.", pattern, scale, counts[f"group{i}"]
            )
    return labels, scales


@gin.configurable(denylist=["trainable_params", "schedule"])
def make_optimizer(
    trainable_params: Mapping[str, Any],
    schedule: optax.Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    param_groups: Sequence[tuple[str, float]] = DEFAULT_PARAM_GROUPS,
) -> optax.GradientTransformation:
    """AdamW over the trainable parameters.

    Gradients are clipped by their global norm over *all* trainable parameters (one
    norm, not one per group), then each parameter group runs AdamW with the schedule
    scaled by its `lr_scale`. `param_groups` is a sequence of `(regex, lr_scale)`,
    matched in order against the `/`-joined parameter path.
    """
    labels, scales = param_group_labels(trainable_params, param_groups)

    def adamw(scale: float) -> optax.GradientTransformation:
        return optax.adamw(
            learning_rate=(lambda count: schedule(count) * scale) if scale != 1.0 else schedule,
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=weight_decay,
            mask=weight_decay_mask,
        )

    inner = optax.multi_transform({lab: adamw(s) for lab, s in scales.items()}, labels)
    if max_grad_norm is None:
        return inner
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), inner)


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over every leaf of a pytree, in fp32."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.float32)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))
