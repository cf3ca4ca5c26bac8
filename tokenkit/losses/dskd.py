"""`baseline_dskd`: dual-space knowledge distillation (Zhang et al., 2024) across vocabularies.

Learned cross-attention between the two token sequences (queries from the student's
current and next-token embeddings, keys from the teacher's, normalised by their global
std) maps teacher hidden states into the student's space and back:

- teacher -> student: attention-weighted teacher states, projected to the student's
  width and read out with the student's (frozen for this term) output embeddings, are
  trained by cross-entropy on the student's next tokens; the student then distils from
  them (`divergence`), on the positions where they predict the right token;
- student -> teacher: attention-weighted student states, projected to the teacher's
  width and read out with the teacher's output embeddings, distil from the teacher (KL).

The cross-attention is `[B, Ls, Lt]` by nature of the method. Differences from the
upstream code: padded vocabulary rows are masked in both projected logits (upstream
leaves them at logit 0, which under forward KL gives a huge loss), and `skl` is the
skewed forward KL (upstream's name for it does not resolve).
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp

from tokenkit.losses.context import LARGE_NEGATIVE, LossContext, check_choice, masked_logits, safe_divide
from tokenkit.losses.divergences import DISTRIBUTION_DIVERGENCES, forward_kl
from tokenkit.losses.sft import target_count

EPSILON = 1e-8
PARAM_NAMES = ("projector_query", "projector_s2t", "projector_t2s")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DskdOptions:
    """Static options of `baseline_dskd` (upstream names and defaults).

    divergence: teacher->student distillation divergence, one of `kl`, `rkl`, `skl`
      (skewed forward), `srkl` (skewed reverse), `akl` (adaptive).
    kd_temp: softmax temperature of both distributions in every KD term.
    teacher_temperature: extra temperature of the projected teacher distribution.
    skew_lambda: mixing weight of the skewed divergences.
    adaptive_kl_alpha: teacher tail mass of the adaptive KL.
    """

    divergence: str = "srkl"
    kd_temp: float = 2.0
    teacher_temperature: float = 1.0
    skew_lambda: float = 0.1
    adaptive_kl_alpha: float = 0.5

    def __post_init__(self):
        check_choice("divergence", self.divergence, list(DISTRIBUTION_DIVERGENCES))
        if self.kd_temp <= 0 or self.teacher_temperature <= 0:
            raise ValueError(
                f"Invalid kd_temp={self.kd_temp} / teacher_temperature={self.teacher_temperature}; must be > 0."
            )


def _dense_init(rng, fan_in: int, fan_out: int) -> dict:
    kernel = jax.nn.initializers.lecun_normal()(rng, (fan_in, fan_out), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((fan_out,), jnp.float32)}


def init_dskd_params(rng: jax.Array, student_hidden_size: int, teacher_hidden_size: int) -> dict:
    """The three projectors: query (2Ds -> 2Dt), student->teacher (Ds -> Dt), teacher->student (Dt -> Ds)."""
    q, s2t, t2s = jax.random.split(rng, 3)
    return {
        "projector_query": _dense_init(q, 2 * student_hidden_size, 2 * teacher_hidden_size),
        "projector_s2t": _dense_init(s2t, student_hidden_size, teacher_hidden_size),
        "projector_t2s": _dense_init(t2s, teacher_hidden_size, student_hidden_size),
    }


def _apply(params, x):
    return x @ params["kernel"] + params["bias"]


def baseline_dskd_loss(
    ctx: LossContext, options: DskdOptions | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """t2s cross-entropy + t2s KD + s2t KD; see the module docstring."""
    options = DskdOptions() if options is None else options
    name = "baseline_dskd"
    teacher, t_const = ctx.frozen_teacher(name)
    student = ctx.student
    for outputs, side in ((student, "student"), (teacher, "teacher")):
        if outputs.hidden_states is None or outputs.output_embeddings is None:
            raise ValueError(f"{name} needs the {side}'s hidden_states and output_embeddings.")
    batch = ctx.batch
    teacher_batch = batch.side("teacher")
    ids_s = batch.student.input_ids
    lm_s = batch.student.loss_mask[:, 1:].astype(jnp.float32)
    lm_t = teacher_batch.loss_mask[:, 1:].astype(jnp.float32)
    attn_s = batch.student.attention_mask[:, 1:].astype(bool)
    attn_t = teacher_batch.attention_mask[:, 1:].astype(bool)
    projectors = {p: ctx.require_param(p, name) for p in PARAM_NAMES}

    s_embeds = student.hidden_states[0].astype(jnp.float32)
    t_embeds = teacher.hidden_states[0].astype(jnp.float32)
    s_hidden = student.hidden_states[-1][:, :-1].astype(jnp.float32)
    t_hidden = teacher.hidden_states[-1][:, :-1].astype(jnp.float32)
    # A position is indexed by its own embedding and its target's (the next token's).
    s_index = jnp.concatenate([s_embeds[:, :-1], s_embeds[:, 1:]], -1)
    t_index = jnp.concatenate([t_embeds[:, :-1], t_embeds[:, 1:]], -1)
    t_target = t_embeds[:, 1:]
    # Global std over batch, positions and channels, as in the DSKD reference code.
    t_keys = t_index / t_index.std()
    t_values = _apply(projectors["projector_t2s"], t_hidden / t_hidden.std() + t_target / t_target.std())
    s_queries = _apply(projectors["projector_query"], s_index)
    s_values = _apply(projectors["projector_s2t"], s_hidden)

    scores = jnp.einsum("bsd,btd->bst", s_queries, t_keys) / jnp.sqrt(2.0 * t_hidden.shape[-1])
    t2s_weights = jax.nn.softmax(
        jnp.where(attn_s[:, :, None] & attn_t[:, None, :], scores, LARGE_NEGATIVE), -1
    )
    s2t_weights = jax.nn.softmax(
        jnp.where(attn_t[:, :, None] & attn_s[:, None, :], jnp.swapaxes(scores, 1, 2), LARGE_NEGATIVE), -1
    )

    # Teacher -> student.
    s_vocab = ctx.student_constants.vocab_mask
    t2s_logits = masked_logits(
        (t2s_weights @ t_values) @ jax.lax.stop_gradient(student.output_embeddings.astype(jnp.float32)).T,
        s_vocab,
    )
    targets = ids_s[:, 1:].astype(jnp.int32)
    t2s_ce = -jnp.take_along_axis(jax.nn.log_softmax(t2s_logits, -1), targets[..., None], -1)[..., 0]
    t2s_ce_loss = safe_divide(jnp.sum(t2s_ce * lm_s), target_count(ctx.step_batch))
    correct = (jnp.argmax(t2s_logits, -1) == targets).astype(jnp.float32)
    divergence = DISTRIBUTION_DIVERGENCES[options.divergence]
    t2s_kd = divergence(
        student.logits[:, :-1],
        jax.lax.stop_gradient(t2s_logits),
        kd_temp=options.kd_temp,
        teacher_temp=options.teacher_temperature,
        skew_lambda=options.skew_lambda,
        adaptive_kl_alpha=options.adaptive_kl_alpha,
    )
    # Averaged over this micro-batch's correctly projected targets (the correctness
    # mask exists only here), then scaled by the micro-batch's share of the step's
    # rows so micro-batch losses still add up.
    kd_mask = lm_s * correct
    t2s_kd_loss = jnp.sum(t2s_kd * kd_mask) / (jnp.sum(kd_mask) + EPSILON * kd_mask.size)
    t2s_kd_loss = t2s_kd_loss * ids_s.shape[0] / ctx.step_batch.student.shape[0]

    # Student -> teacher.
    s2t_logits = masked_logits(
        (s2t_weights @ s_values) @ teacher.output_embeddings.astype(jnp.float32).T, t_const.vocab_mask
    )
    s2t_kd = forward_kl(s2t_logits, teacher.logits[:, :-1], kd_temp=options.kd_temp)
    teacher_targets = jnp.sum(ctx.step_batch.side("teacher").loss_mask[:, 1:].astype(jnp.float32))
    s2t_kd_loss = safe_divide(jnp.sum(s2t_kd * lm_t), teacher_targets)

    loss = t2s_ce_loss + t2s_kd_loss + s2t_kd_loss
    return loss, {
        "t2s_ce_loss": t2s_ce_loss,
        "t2s_kd_loss": t2s_kd_loss,
        "s2t_kd_loss": s2t_kd_loss,
        "t2s_acc": safe_divide(jnp.sum(correct * lm_s), jnp.sum(lm_s)),
    }
