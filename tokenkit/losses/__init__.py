"""Losses: pure functions of a `LossContext` and static options, over chunk ids.

Interface
---------
A loss is `fn(ctx: LossContext) -> (scalar loss, dict of scalar diagnostics)`, pure and
jit-able; its static options live in a frozen, Gin-configurable options class whose
fields carry the upstream names and defaults (`AlmOptions`, `LatentsOptions`,
`DskdOptions`, `MinedOptions`); invalid values raise when the options are built,
naming the valid ones. `get_loss(name)` builds the options (reading the Gin bindings)
and returns a `Loss`: call it with a context; its fields say what the trainer must put
into the context (teacher outputs, hidden states, q/k/v, output embeddings, the MinED
mapping), which chunkings the batch must carry, and `init_params` creates its trainable parameters (DSKD projectors, the
latent projection), to be passed back in `ctx.params`.

Normalisation: every loss divides a sum over the micro-batch by a count over
`ctx.global_batch` (the whole step's batch), so the trainer *sums* micro-batch gradients
and gets the gradient of the loss of the whole batch. The few statistics that need the
models' outputs (the merged-chunk count of `merge_by_space_prob`, latent scales, DSKD's
correct-projection mask) are per micro-batch; docs/losses.md lists them.

Names (as upstream): `sft`, `alm_unconstrained`, `alm_space`, `alm_unbiased` (also
`alm`, the upstream's alias), `alm_latents`, `baseline_dskd`, `baseline_uld`,
`baseline_mined`. Several losses are
combined by `aggregation` (weights, schedules, mean/sum, GradMag, GradNorm, PCGrad...).
See docs/losses.md for every option and a worked example of chunk ids.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax

from tokenkit.losses import aggregation
from tokenkit.losses.alm import AlmOptions, alm_loss
from tokenkit.losses.context import (
    DEFAULT_SPACE_MASK_MODE,
    LossContext,
    ModelOutputs,
    TokenizerConstants,
    build_space_mask,
)
from tokenkit.losses.dskd import DskdOptions, baseline_dskd_loss, init_dskd_params
from tokenkit.losses.latents import LATENTS_CHUNKS, LatentsOptions, alm_latents_loss, init_latents_params
from tokenkit.losses.mined import MinedOptions, baseline_mined_loss
from tokenkit.losses.sft import sft_loss
from tokenkit.losses.uld import baseline_uld_loss

LossFn = Callable[[LossContext], tuple[jax.Array, dict[str, jax.Array]]]


def _no_params(rng: jax.Array, student_hidden_size: int, teacher_hidden_size: int) -> dict:
    del rng, student_hidden_size, teacher_hidden_size
    return {}


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss by name, with its options bound, and what it needs from the trainer."""

    name: str
    fn: LossFn
    options: Any = None
    needs_teacher: bool = True
    needs_hidden_states: bool = False
    needs_attentions: bool = False
    needs_output_embeddings: bool = False
    needs_mined_mapping: bool = False
    chunkings: tuple[str, ...] = ()  # which `Batch.chunks` it reads
    init_params: Callable[[jax.Array, int, int], dict] = _no_params

    def __call__(self, ctx: LossContext) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.fn(ctx)


def _alm(chunking: str, name: str | None = None, space_merge_threshold: float | None = None) -> Loss:
    options = AlmOptions()
    if space_merge_threshold is not None:
        options = dataclasses.replace(options, space_merge_threshold=space_merge_threshold)
    return Loss(
        name or f"alm_{chunking}",
        functools.partial(alm_loss, chunking=chunking, options=options),
        options,
        chunkings=(chunking,),
    )


def _latents() -> Loss:
    options = LatentsOptions()
    return Loss(
        "alm_latents",
        functools.partial(alm_latents_loss, options=options),
        options,
        needs_hidden_states=bool(options.parts & {"last_hidden_state", "all_hidden_states"}),
        needs_attentions="qkv" in options.parts,
        chunkings=(LATENTS_CHUNKS[options.latents_chunks],),
        init_params=lambda rng, ds, dt: init_latents_params(rng, ds, dt, options),
    )


def _dskd() -> Loss:
    options = DskdOptions()
    return Loss(
        "baseline_dskd",
        functools.partial(baseline_dskd_loss, options=options),
        options,
        needs_hidden_states=True,
        needs_output_embeddings=True,
        init_params=init_dskd_params,
    )


def _mined() -> Loss:
    options = MinedOptions()
    return Loss(
        "baseline_mined",
        functools.partial(baseline_mined_loss, options=options),
        options,
        needs_mined_mapping=True,
        chunkings=("unconstrained",),
    )


# name -> factory(space_merge_threshold) (the ALM losses take the override).
_FACTORIES: dict[str, Callable[[float | None], Loss]] = {
    "sft": lambda _: Loss("sft", sft_loss, needs_teacher=False),
    "alm_unconstrained": lambda t: _alm("unconstrained", space_merge_threshold=t),
    "alm_space": lambda t: _alm("space", space_merge_threshold=t),
    "alm_unbiased": lambda t: _alm("unbiased", space_merge_threshold=t),
    # The upstream's name for ALM on the unbiased chunking.
    "alm": lambda t: _alm("unbiased", "alm", space_merge_threshold=t),
    "alm_latents": lambda _: _latents(),
    "baseline_dskd": lambda _: _dskd(),
    "baseline_uld": lambda _: Loss("baseline_uld", baseline_uld_loss),
    "baseline_mined": lambda _: _mined(),
}
LOSS_NAMES = tuple(_FACTORIES)


def get_loss(name: str, *, space_merge_threshold: float | None = None) -> Loss:
    """The loss called `name`, options read from Gin now; unknown names list the valid ones.

    `space_merge_threshold` overrides `AlmOptions.space_merge_threshold` of the ALM
    losses (`data.pairs.TokenizerPair`'s single knob).
    """
    if name not in _FACTORIES:
        raise ValueError(f"Unknown loss {name!r}; valid losses: {list(LOSS_NAMES)}.")
    return _FACTORIES[name](space_merge_threshold)


def get_losses(names: Sequence[str], *, space_merge_threshold: float | None = None) -> list[Loss]:
    """`get_loss` for each name; repeated names are an error (their diagnostics would clash)."""
    if isinstance(names, str):
        raise TypeError(f"get_losses takes a list of names, got the string {names!r}.")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise ValueError(f"Losses listed more than once: {duplicates}.")
    if "alm" in names and "alm_unbiased" in names:
        raise ValueError("'alm' is the upstream's name of 'alm_unbiased'; list only one of them.")
    return [get_loss(n, space_merge_threshold=space_merge_threshold) for n in names]


def space_mask_mode(losses: Sequence[Loss]) -> str:
    """The space-mask mode the losses use (`AlmOptions.space_mask_mode`; the default when
    no loss has ALM options)."""
    modes = {loss.options.space_mask_mode for loss in losses if isinstance(loss.options, AlmOptions)}
    return modes.pop() if modes else DEFAULT_SPACE_MASK_MODE


def init_loss_params(
    losses: Sequence[Loss], rng: jax.Array, student_hidden_size: int, teacher_hidden_size: int
) -> dict:
    """The trainable parameters of all `losses`, by parameter name (for `ctx.params`)."""
    params: dict = {}
    for loss, key in zip(losses, jax.random.split(rng, max(len(losses), 1))):
        params.update(loss.init_params(key, student_hidden_size, teacher_hidden_size))
    return params


__all__ = [
    "LOSS_NAMES",
    "AlmOptions",
    "DskdOptions",
    "LatentsOptions",
    "Loss",
    "LossContext",
    "MinedOptions",
    "ModelOutputs",
    "TokenizerConstants",
    "aggregation",
    "build_space_mask",
    "get_loss",
    "get_losses",
    "init_loss_params",
]
