"""SFT: cross-entropy over loss-masked student targets, globally normalised."""

import dataclasses

import jax
import numpy as np

from tests.losses import dense_reference as dense
from tests.losses.support import make_setup, split_context
from tokenkit.losses.context import ModelOutputs
from tokenkit.losses.sft import sft_loss


def test_matches_dense_value_and_gradient():
    setup = make_setup(2)
    vocab_mask = setup.student_constants.vocab_mask
    loss, diag = sft_loss(setup.ctx)
    ref = dense.sft_dense(setup.batch, setup.student_logits, vocab_mask)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(diag["micro_batch_ce"], ref, rtol=1e-6)

    def ours(logits):
        return sft_loss(dataclasses.replace(setup.ctx, student=setup.student_outputs(logits)))[0]

    np.testing.assert_allclose(
        jax.grad(ours)(setup.student_logits),
        jax.grad(lambda x: dense.sft_dense(setup.batch, x, vocab_mask))(setup.student_logits),
        rtol=1e-5, atol=1e-8,
    )


def test_runs_without_teacher_and_padded_rows_get_no_mass():
    setup = make_setup(3)
    ctx = dataclasses.replace(setup.ctx, teacher=None, teacher_constants=None)
    loss, _ = sft_loss(ctx)
    # Raising the padded vocabulary rows' logits must not change the loss.
    padded = ~np.asarray(setup.student_constants.vocab_mask)
    bumped = setup.student_logits + 50.0 * padded
    loss2, _ = sft_loss(dataclasses.replace(ctx, student=setup.student_outputs(bumped)))
    np.testing.assert_allclose(loss, loss2, rtol=1e-6)


def test_micro_batches_add_up_and_mask_excludes():
    setup = make_setup(4)
    whole, _ = sft_loss(setup.ctx)
    halves = sum(float(sft_loss(split_context(setup.ctx, s))[0]) for s in (slice(0, 1), slice(1, 3)))
    np.testing.assert_allclose(halves, whole, rtol=1e-5)
    # Logits predicting masked targets do not matter.
    mask = np.asarray(setup.batch["loss_mask_student"])
    free = np.zeros_like(mask)
    free[:, :-1] = ~mask[:, 1:]
    noisy = setup.student_logits + 7.0 * free[..., None] * np.random.default_rng(0).normal(size=setup.student_logits.shape)
    np.testing.assert_allclose(sft_loss(dataclasses.replace(setup.ctx, student=setup.student_outputs(noisy)))[0], whole, rtol=1e-6)
