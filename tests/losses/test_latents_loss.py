"""alm_latents on chunk ids equals the dense formulation; options are validated."""

import dataclasses

import jax
import numpy as np
import pytest

from tests.losses import dense_reference as dense
from tests.losses.support import as_flat, make_setup, split_context
from tokenkit.losses.context import ModelOutputs
from tokenkit.losses.latents import NORMALIZATIONS, LatentsOptions, alm_latents_loss, init_latents_params


@pytest.fixture(scope="module")
def setup():
    return make_setup(11, hidden_teacher=5, hidden_student=5, n_layers=2)


def _dense(setup, options, projector=None, ctx=None):
    ctx = setup.ctx if ctx is None else ctx
    return dense.latents_dense(
        as_flat(ctx.batch),
        ctx.student.hidden_states,
        ctx.teacher.hidden_states,
        latents_chunks=options.latents_chunks,
        latents_to_align=options.latents_to_align,
        latents_normalization=options.latents_normalization,
        n_prefix_layers=options.n_prefix_layers,
        projector=projector,
        student_attentions=ctx.student.attentions,
        teacher_attentions=ctx.teacher.attentions,
        global_batch=as_flat(ctx.global_batch),
    )


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("chunks", ["naive", "space"])
@pytest.mark.parametrize("to_align", ["last_hidden_state", "all_hidden_states", "qkv", "last_hidden_state+qkv"])
def test_matches_dense(setup, normalization, chunks, to_align):
    options = LatentsOptions(latents_to_align=to_align, latents_chunks=chunks, latents_normalization=normalization)
    loss, diag = alm_latents_loss(setup.ctx, options)
    ref, ref_diag = _dense(setup, options)
    np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-6)
    for key in ref_diag:
        np.testing.assert_allclose(diag[key], ref_diag[key], rtol=1e-5, atol=1e-6)
    assert float(loss) > 0


def test_projection_value_and_gradient(setup):
    options = LatentsOptions(latents_do_project=True)
    params = init_latents_params(jax.random.key(0), 5, 5, options)
    assert params["projector_latents"]["kernel"].shape == (5, 5)
    ctx = dataclasses.replace(setup.ctx, params=params)

    def ours(p):
        return alm_latents_loss(dataclasses.replace(ctx, params={"projector_latents": p}), options)[0]

    def ref(p):
        return _dense(setup, options, projector=p)[0]

    p = params["projector_latents"]
    np.testing.assert_allclose(ours(p), ref(p), rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), jax.grad(ours)(p), jax.grad(ref)(p)
    )
    with pytest.raises(ValueError, match="projector_latents"):
        alm_latents_loss(setup.ctx, options)
    narrow = make_setup(11, hidden_teacher=5, hidden_student=3)
    with pytest.raises(ValueError, match="latents_do_project=True"):
        alm_latents_loss(narrow.ctx, LatentsOptions())


def test_prefix_layers_shift_the_student_index(setup):
    options = LatentsOptions(latents_to_align="all_hidden_states+qkv", n_prefix_layers=1)
    teacher = setup.ctx.teacher
    # Teacher with one layer fewer: its layer i pairs with the student's layer i + 1.
    short = ModelOutputs(teacher.logits, teacher.hidden_states[:-1], teacher.attentions[:-1])
    ctx = dataclasses.replace(setup.ctx, teacher=short)
    np.testing.assert_allclose(alm_latents_loss(ctx, options)[0], _dense(setup, options, ctx=ctx)[0], rtol=1e-5)
    with pytest.raises(ValueError, match="n_prefix_layers"):
        alm_latents_loss(setup.ctx, LatentsOptions(latents_to_align="all_hidden_states", n_prefix_layers=1))


def test_zero_for_identical_latents_and_micro_batches_add_up():
    setup = make_setup(12, hidden_teacher=5, hidden_student=5)
    ctx = setup.ctx
    # Same chunk ends on both sides: give the student the teacher's row layout.
    batch = dict(setup.batch)
    for key in ("chunks_{}_unconstrained", "chunks_{}_space", "loss_mask_{}", "input_ids_{}"):
        batch[key.format("student")] = batch[key.format("teacher")]
    same = dataclasses.replace(setup.with_batch(batch), student=ctx.teacher)
    assert float(alm_latents_loss(same, LatentsOptions(latents_to_align="all_hidden_states+qkv"))[0]) == 0.0
    # l1 normalisation is a micro-batch statistic, but with a fixed scale (qkv with l1
    # is unscaled) micro-batch losses add up exactly.
    options = LatentsOptions(latents_to_align="qkv", latents_normalization="l1")
    whole = float(alm_latents_loss(ctx, options)[0])
    parts = sum(float(alm_latents_loss(split_context(ctx, s), options)[0]) for s in (slice(0, 1), slice(1, 3)))
    np.testing.assert_allclose(parts, whole, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(latents_to_align="last_hidden"), "last_hidden_state"),
        (dict(latents_to_align="last_hidden_state+all_hidden_states"), "not both"),
        (dict(latents_chunks="unconstrained"), "naive"),
        (dict(latents_normalization="l3"), "l2_channelwise"),
        (dict(latents_do_project=True, latents_to_align="all_hidden_states"), "last_hidden_state"),
        (dict(n_prefix_layers=-1), "n_prefix_layers"),
    ],
)
def test_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LatentsOptions(**kwargs)
