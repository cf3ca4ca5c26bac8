"""`baseline_uld`: universal logit distillation (Boizard et al., 2024).

Vocabularies differ, so ULD compares *sorted* next-token distributions: the L1 distance
between the student's and the teacher's probabilities, each sorted in decreasing order,
with the smaller vocabulary padded by zeros (the vocabulary-size gap). Positions are
paired by index, as in the method (no alignment).

Differences from the upstream code: the rows may have different lengths (the first
`min(Lt, Ls) - 1` prediction positions are compared); a position counts when the token
it predicts is in both loss masks (upstream: the student's attention mask at the
predicting position, so it also scores the prediction after the last token and against
teacher padding); and the loss is normalised by the global batch's count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokenkit.batch import Batch
from tokenkit.losses.context import LossContext, safe_divide
from tokenkit.losses.logprobs import log_softmax


def _positions(batch: Batch, length: int) -> jax.Array:
    """`[B, length - 1]`: prediction positions whose next token both sides train on."""
    student = batch.student.loss_mask[:, 1:length].astype(bool)
    teacher = batch.side("teacher").loss_mask[:, 1:length].astype(bool)
    return (student & teacher).astype(jnp.float32)


def sorted_probability_distance(student_probs: jax.Array, teacher_probs: jax.Array) -> jax.Array:
    """`[...]`: L1 distance of the decreasingly sorted distributions, zero-padded to one width."""
    gap = student_probs.shape[-1] - teacher_probs.shape[-1]
    s_sorted = jnp.sort(student_probs, axis=-1, descending=True)
    t_sorted = jnp.sort(teacher_probs, axis=-1, descending=True)
    pad = [(0, 0)] * (s_sorted.ndim - 1)
    if gap > 0:
        t_sorted = jnp.pad(t_sorted, pad + [(0, gap)])
    elif gap < 0:
        s_sorted = jnp.pad(s_sorted, pad + [(0, -gap)])
    return jnp.abs(s_sorted - t_sorted).sum(-1)


def baseline_uld_loss(ctx: LossContext) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean sorted-probability L1 distance over positions both sides train on."""
    name = "baseline_uld"
    teacher, _ = ctx.frozen_teacher(name)
    length = min(teacher.logits.shape[1], ctx.student.logits.shape[1])
    s_probs = jnp.exp(log_softmax(ctx.student.logits[:, : length - 1]))
    t_probs = jnp.exp(log_softmax(teacher.logits[:, : length - 1]))
    distance = sorted_probability_distance(s_probs, t_probs)
    mask = _positions(ctx.batch, length)
    step_batch = ctx.step_batch
    global_length = min(step_batch.side("teacher").shape[1], step_batch.student.shape[1])
    total = jnp.sum(distance * mask)
    loss = safe_divide(total, jnp.sum(_positions(step_batch, global_length)))
    return loss, {"micro_batch_uld": safe_divide(total, jnp.sum(mask))}
