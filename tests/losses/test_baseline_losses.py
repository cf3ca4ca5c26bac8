"""DSKD, ULD and MinED baselines against dense formulations, and their properties."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.losses import dense_reference as dense
from tests.losses.support import make_setup, split_context
from tokenkit.losses.context import ModelOutputs
from tokenkit.losses.divergences import DISTRIBUTION_DIVERGENCES
from tokenkit.losses.dskd import DskdOptions, baseline_dskd_loss, init_dskd_params
from tokenkit.losses.mined import MinedOptions, baseline_mined_loss
from tokenkit.losses.uld import baseline_uld_loss, sorted_probability_distance


@pytest.fixture(scope="module")
def setup():
    return make_setup(21, hidden_teacher=6, hidden_student=4)


# --- DSKD -----------------------------------------------------------------------


@pytest.mark.parametrize("divergence", list(DISTRIBUTION_DIVERGENCES))
def test_dskd_matches_dense(setup, divergence):
    params = init_dskd_params(jax.random.key(1), 4, 6)
    assert params["projector_query"]["kernel"].shape == (8, 12)
    assert params["projector_s2t"]["kernel"].shape == (4, 6)
    assert params["projector_t2s"]["kernel"].shape == (6, 4)
    options = DskdOptions(divergence=divergence, teacher_temperature=1.5)
    ctx = dataclasses.replace(setup.ctx, params=params)
    loss, diag = baseline_dskd_loss(ctx, options)
    ref, ref_diag = dense.dskd_dense(
        setup.batch, ctx.student, ctx.teacher, params,
        setup.student_constants.vocab_mask, setup.teacher_constants.vocab_mask,
        **dataclasses.asdict(options),
    )
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    for key in ref_diag:
        np.testing.assert_allclose(diag[key], ref_diag[key], rtol=1e-5, atol=1e-7)
    assert 0.0 <= float(diag["t2s_acc"]) <= 1.0


def test_dskd_trains_the_projectors_and_the_student(setup):
    params = init_dskd_params(jax.random.key(2), 4, 6)

    def loss(params, student_logits):
        ctx = dataclasses.replace(
            setup.ctx, params=params, student=dataclasses.replace(setup.ctx.student, logits=setup.student_outputs(student_logits).logits)
        )
        return baseline_dskd_loss(ctx, DskdOptions(divergence="kl"))[0]

    g_params, g_logits = jax.grad(loss, argnums=(0, 1))(params, setup.student_logits)
    for name in ("projector_query", "projector_s2t", "projector_t2s"):
        assert float(jnp.abs(g_params[name]["kernel"]).max()) > 0, name
    assert float(jnp.abs(g_logits).max()) > 0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g_params))


def test_dskd_needs_params_and_hidden_states(setup):
    with pytest.raises(ValueError, match="projector_query"):
        baseline_dskd_loss(setup.ctx)
    no_hidden = dataclasses.replace(setup.ctx, student=setup.student_outputs(setup.student_logits))
    with pytest.raises(ValueError, match="hidden_states"):
        baseline_dskd_loss(no_hidden)
    with pytest.raises(ValueError, match="srkl"):
        DskdOptions(divergence="js")


# --- ULD ------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_student", [40, 64, 120])
def test_uld_matches_dense_for_any_vocabulary_gap(vocab_student):
    s = make_setup(22, vocab_student=vocab_student, vocab_teacher=72)
    loss, _ = baseline_uld_loss(s.ctx)
    ref = dense.uld_dense(
        s.batch, s.student_logits, s.teacher_logits, s.student_constants.vocab_mask, s.teacher_constants.vocab_mask
    )
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    g = jax.grad(lambda x: baseline_uld_loss(dataclasses.replace(s.ctx, student=s.student_outputs(x)))[0])(s.student_logits)
    g_ref = jax.grad(
        lambda x: dense.uld_dense(s.batch, x, s.teacher_logits, s.student_constants.vocab_mask, s.teacher_constants.vocab_mask)
    )(s.student_logits)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-8)


def test_uld_is_permutation_invariant_and_zero_for_permuted_teacher():
    probs = jax.nn.softmax(jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 10)), jnp.float32))
    permuted = probs[..., ::-1]
    np.testing.assert_allclose(sorted_probability_distance(probs, permuted), 0.0, atol=1e-7)
    # Zero padding: a wider vocabulary with the same mass on the same values is distance 0.
    wider = jnp.pad(probs, ((0, 0), (0, 0), (0, 5)))
    np.testing.assert_allclose(sorted_probability_distance(probs, wider), 0.0, atol=1e-7)
    np.testing.assert_allclose(sorted_probability_distance(wider, probs), 0.0, atol=1e-7)
    other = jax.nn.softmax(2 * jnp.log(probs))
    assert float(sorted_probability_distance(probs, other).min()) > 0


def test_uld_micro_batches_add_up():
    s = make_setup(23)
    whole = float(baseline_uld_loss(s.ctx)[0])
    parts = sum(float(baseline_uld_loss(split_context(s.ctx, r))[0]) for r in (slice(0, 1), slice(1, 3)))
    np.testing.assert_allclose(parts, whole, rtol=1e-5)


# --- MinED ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [24, 25])
def test_mined_matches_dense(seed):
    s = make_setup(seed)
    options = MinedOptions(kd_temp=1.5)
    loss, diag = baseline_mined_loss(s.ctx, options)
    ref = dense.mined_dense(
        s.batch, s.student_logits, s.teacher_logits, s.ctx.mined_mapping,
        s.student_constants.vocab_mask, s.teacher_constants.vocab_mask, kd_temp=1.5,
    )
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    assert float(diag["mined_one_to_one_mask_sum"]) > 0 and float(diag["mined_onehot_mask_sum"]) > 0
    g = jax.grad(lambda x: baseline_mined_loss(dataclasses.replace(s.ctx, student=s.student_outputs(x)), options)[0])(
        s.student_logits
    )
    g_ref = jax.grad(
        lambda x: dense.mined_dense(
            s.batch, x, s.teacher_logits, s.ctx.mined_mapping,
            s.student_constants.vocab_mask, s.teacher_constants.vocab_mask, kd_temp=1.5,
        )
    )(s.student_logits)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-8)


def test_mined_tokens_without_a_counterpart_get_no_target_probability():
    s = make_setup(27)
    mapping = np.asarray(s.ctx.mined_mapping).copy()
    mapping[::3] = -1
    ctx = dataclasses.replace(s.ctx, mined_mapping=jnp.asarray(mapping))
    loss, _ = baseline_mined_loss(ctx, MinedOptions(kd_temp=1.0))
    # The reference: the same targets, those columns' teacher logits pushed to -inf.
    ref = dense.mined_dense(
        s.batch, s.student_logits, s.teacher_logits, jnp.asarray(mapping),
        s.student_constants.vocab_mask, s.teacher_constants.vocab_mask, kd_temp=1.0,
    )
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    assert np.isfinite(float(loss))
    unlimited = float(baseline_mined_loss(s.ctx, MinedOptions(kd_temp=1.0))[0])
    assert abs(float(loss) - unlimited) > 1e-4
    with pytest.raises(ValueError, match="max_distance=-1"):
        MinedOptions(max_distance=-1)


def test_mined_uses_the_mapping_and_adds_up():
    s = make_setup(26)
    base = float(baseline_mined_loss(s.ctx)[0])
    shuffled = jnp.roll(s.ctx.mined_mapping, 3)
    assert float(baseline_mined_loss(dataclasses.replace(s.ctx, mined_mapping=shuffled))[0]) != base
    parts = sum(float(baseline_mined_loss(split_context(s.ctx, r))[0]) for r in (slice(0, 1), slice(1, 3)))
    np.testing.assert_allclose(parts, base, rtol=1e-5)
    with pytest.raises(ValueError, match="mined_mapping"):
        baseline_mined_loss(dataclasses.replace(s.ctx, mined_mapping=None))
