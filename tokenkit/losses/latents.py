"""`alm_latents`: match hidden states (and optionally q/k/v) at aligned chunk ends.

At the last token of chunk `k` both models have read the same bytes, so their hidden
states there are comparable. For every chunk with a student token, the student's and
the teacher's latents at the chunk ends are gathered (`C` rows per example, no `L x L`
anything), the student's optionally projected to the teacher's width, and their
squared (`l2*`) or absolute (`l1*`) difference is divided by the teacher latents' mean
square (or mean absolute value), overall or per channel (`*_channelwise`).

The scale statistic of the teacher's latents is taken over the micro-batch (it needs the
teacher's outputs); the count of chunks the loss is averaged over is global.
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp

from tokenkit.losses import chunks as chunklib
from tokenkit.losses.context import LossContext, check_choice, safe_divide

LATENT_KINDS = ("last_hidden_state", "all_hidden_states", "qkv")
LATENTS_CHUNKS = {"naive": "unconstrained", "space": "space"}
NORMALIZATIONS = ("l1", "l2", "l1_channelwise", "l2_channelwise")
EPSILON = 1e-8
PARAM_NAME = "projector_latents"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LatentsOptions:
    """Static options of `alm_latents` (upstream names and defaults).

    latents_to_align: '+'-combination of `last_hidden_state` or `all_hidden_states`
      (embeddings and every layer), and `qkv` (each layer's q/k/v projections).
    latents_chunks: `naive` (unconstrained chunks) or `space` (space chunks).
    latents_do_project: learn a linear map from the student's to the teacher's width
      (only with `last_hidden_state`).
    latents_normalization: `l1`, `l2`, `l1_channelwise` or `l2_channelwise`.
    n_prefix_layers: student layer index = teacher layer index + this (a student with
      extra leading layers).
    """

    latents_to_align: str = "last_hidden_state"
    latents_chunks: str = "naive"
    latents_do_project: bool = False
    latents_normalization: str = "l2_channelwise"
    n_prefix_layers: int = 0

    def __post_init__(self):
        parts = self.parts
        unknown = sorted(parts - set(LATENT_KINDS))
        if unknown or not parts:
            raise ValueError(
                f"Invalid latents_to_align={self.latents_to_align!r} (unknown parts {unknown}); "
                f"use a '+'-combination of {list(LATENT_KINDS)}."
            )
        if {"last_hidden_state", "all_hidden_states"} <= parts:
            raise ValueError("latents_to_align: choose last_hidden_state or all_hidden_states, not both.")
        check_choice("latents_chunks", self.latents_chunks, list(LATENTS_CHUNKS))
        check_choice("latents_normalization", self.latents_normalization, NORMALIZATIONS)
        if self.latents_do_project and self.latents_to_align != "last_hidden_state":
            raise ValueError(
                "latents_do_project=True needs latents_to_align='last_hidden_state' "
                f"(got {self.latents_to_align!r})."
            )
        if self.n_prefix_layers < 0:
            raise ValueError(f"Invalid n_prefix_layers={self.n_prefix_layers}; must be >= 0.")

    @property
    def parts(self) -> frozenset[str]:
        return frozenset(p for p in self.latents_to_align.split("+") if p)


def init_latents_params(
    rng: jax.Array, student_hidden_size: int, teacher_hidden_size: int, options: LatentsOptions
) -> dict:
    """`{"projector_latents": {"kernel", "bias"}}` when projecting, else `{}`."""
    if not options.latents_do_project:
        return {}
    kernel = jax.nn.initializers.lecun_normal()(rng, (student_hidden_size, teacher_hidden_size), jnp.float32)
    return {PARAM_NAME: {"kernel": kernel, "bias": jnp.zeros((teacher_hidden_size,), jnp.float32)}}


def _concat_qkv(layer) -> jax.Array:
    return jnp.concatenate(layer, -1) if isinstance(layer, (tuple, list)) else layer


def _scale(teacher: jax.Array, mask: jax.Array, normalization: str, epsilon: float | None) -> jax.Array:
    """Mean |t| or t^2 over the chunks in `mask` (per channel for `*_channelwise`)."""
    magnitude = jnp.square(teacher) if normalization.startswith("l2") else jnp.abs(teacher)
    magnitude = magnitude * mask[..., None]
    n_chunks = jnp.sum(mask)
    if normalization.endswith("channelwise"):
        scale = safe_divide(jnp.sum(magnitude, axis=(0, 1)), n_chunks)
    else:
        scale = safe_divide(jnp.sum(magnitude), n_chunks * teacher.shape[-1])
    return scale if epsilon is None else scale + epsilon


def _layer_loss(student, teacher, mask, global_chunks, *, squared, normalization, epsilon):
    diff = student - teacher
    elementwise = (jnp.square(diff) if squared else jnp.abs(diff)) * mask[..., None]
    if normalization is not None:
        elementwise = elementwise / _scale(teacher, mask, normalization, epsilon)
    return safe_divide(jnp.sum(elementwise), global_chunks * teacher.shape[-1])


def _chunk_state(batch, chunking: str, name: str):
    """(teacher ends, student ends, student-chunk mask) for `batch`."""
    t_ids, s_ids = chunklib.loss_chunk_ids(batch, chunking, name)
    num_chunks = chunklib.num_chunk_slots(t_ids.shape[1], s_ids.shape[1])
    mask = (chunklib.chunk_token_counts(s_ids, num_chunks) > 0).astype(jnp.float32)
    return (
        chunklib.chunk_last_positions(t_ids, num_chunks),
        chunklib.chunk_last_positions(s_ids, num_chunks),
        mask,
    )


def alm_latents_loss(
    ctx: LossContext, options: LatentsOptions | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Latent matching at chunk ends, averaged over layers; see the module docstring."""
    options = LatentsOptions() if options is None else options
    name = "alm_latents"
    teacher, _ = ctx.frozen_teacher(name)
    chunking = LATENTS_CHUNKS[options.latents_chunks]
    t_last, s_last, mask = _chunk_state(ctx.batch, chunking, name)
    global_chunks = jnp.sum(_chunk_state(ctx.step_batch, chunking, name)[2])
    parts = options.parts

    def ends(x, last):
        return chunklib.gather_positions(x.astype(jnp.float32), last)

    pairs = []
    if parts & {"last_hidden_state", "all_hidden_states"}:
        if ctx.student.hidden_states is None or teacher.hidden_states is None:
            raise ValueError(f"{name} with {options.latents_to_align!r} needs hidden_states of both models.")
        if "last_hidden_state" in parts:
            pairs = [(len(teacher.hidden_states) - 1, len(ctx.student.hidden_states) - 1)]
        else:
            pairs = [(i, i + options.n_prefix_layers) for i in range(len(teacher.hidden_states))]
            if len(ctx.student.hidden_states) < len(teacher.hidden_states) + options.n_prefix_layers:
                raise ValueError(
                    f"{name}: the student has {len(ctx.student.hidden_states)} hidden states, fewer "
                    f"than the teacher's {len(teacher.hidden_states)} + n_prefix_layers "
                    f"{options.n_prefix_layers}."
                )
    hidden_loss = jnp.zeros((), jnp.float32)
    for t_index, s_index in pairs:
        t_end = ends(teacher.hidden_states[t_index], t_last)
        s_end = ends(ctx.student.hidden_states[s_index], s_last)
        if options.latents_do_project:
            projector = ctx.require_param(PARAM_NAME, name)
            s_end = s_end @ projector["kernel"] + projector["bias"]
        if s_end.shape[-1] != t_end.shape[-1]:
            raise ValueError(
                f"{name}: student latents have width {s_end.shape[-1]}, the teacher's "
                f"{t_end.shape[-1]}; set latents_do_project=True to learn a projection."
            )
        hidden_loss += _layer_loss(
            s_end, t_end, mask, global_chunks,
            squared=options.latents_normalization.startswith("l2"),
            normalization=options.latents_normalization,
            epsilon=EPSILON,
        ) / len(pairs)

    attention_loss = jnp.zeros((), jnp.float32)
    if "qkv" in parts:
        if ctx.student.attentions is None or teacher.attentions is None:
            raise ValueError(f"{name} with 'qkv' needs the attentions (q/k/v) of both models.")
        n_layers = len(teacher.attentions)
        for layer in range(n_layers):
            t_end = ends(_concat_qkv(teacher.attentions[layer]), t_last)
            s_end = ends(_concat_qkv(ctx.student.attentions[layer + options.n_prefix_layers]), s_last)
            # As upstream: q/k/v differences are always squared, and only the l2
            # normalisations rescale them (without the epsilon).
            normalization = options.latents_normalization
            attention_loss += _layer_loss(
                s_end, t_end, mask, global_chunks,
                squared=True,
                normalization=normalization if normalization.startswith("l2") else None,
                epsilon=None,
            ) / n_layers
    loss = hidden_loss + attention_loss
    return loss, {"hidden_state_latent_loss": hidden_loss, "attention_latent_loss": attention_loss}
