"""ALM on chunk ids equals the dense-matrix formulation; its properties hold."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.losses import dense_reference as dense
from tests.losses.support import make_setup, split_context
from tokenkit.losses.alm import ALM_MODE_PARTS, AlmOptions, alm_loss
from tokenkit.losses.context import ModelOutputs
from tokenkit.losses.divergences import BINARY_DIVERGENCES, ZERO_AT_EQUALITY

MODES = ["+".join(c) for r in range(len(ALM_MODE_PARTS) + 1) for c in itertools.combinations(ALM_MODE_PARTS, r)]
CHUNKINGS = ("unconstrained", "space", "unbiased")
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def setups():
    return {
        "subword": make_setup(0),
        "bytes": make_setup(1, len_teacher=20, len_student=48, vocab_student=260, student_bytes=True),
    }


def _dense(setup, chunking, options: AlmOptions):
    return dense.alm_dense(
        setup.batch, setup.student_logits, setup.teacher_logits, chunking=chunking,
        **setup.dense_constants(), **dataclasses.asdict(options),
    )


def _check(setup, chunking, options):
    ours, ours_diag = alm_loss(setup.ctx, chunking, options)
    ref, ref_diag = _dense(setup, chunking, options)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL, err_msg=f"{chunking} {options}")
    assert set(ref_diag) <= set(ours_diag)
    for key, value in ref_diag.items():
        np.testing.assert_allclose(ours_diag[key], value, rtol=RTOL, atol=ATOL, err_msg=f"{key} {chunking} {options}")


def _every_divergence(setup, chunking, mode):
    for diff in BINARY_DIVERGENCES:
        options = AlmOptions(alm_mode=mode, alm_diff_fn=diff, space_merge_threshold=0.3, renyi_alpha=0.7)
        _check(setup, chunking, options)


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_dense_for_every_divergence(setups, chunking, mode):
    _every_divergence(setups["subword"], chunking, mode)


@pytest.mark.parametrize("chunking", ["unconstrained", "space"])
@pytest.mark.parametrize("mode", ["", "append_space", "merge_by_space_prob+append_space", "eos_as_space+append_space"])
def test_matches_dense_for_a_byte_level_student(setups, chunking, mode):
    _every_divergence(setups["bytes"], chunking, mode)


@pytest.mark.parametrize("numerator", ["token_count", "chunk_count", "log1p_token_count"])
@pytest.mark.parametrize("denominator", ["token_count", "chunk_count"])
@pytest.mark.parametrize("sizes", [(1,), (2,), (1, 3)])
@pytest.mark.parametrize("mode", ["", "append_space", "merge_by_space_prob+append_space"])
def test_matches_dense_for_normalisations_and_chunk_sizes(setups, numerator, denominator, sizes, mode):
    for diff in ("binary_ce", "abs", "joschu_k3"):
        options = AlmOptions(
            alm_mode=mode, alm_diff_fn=diff, distill_chunk_sizes=sizes,
            distill_main_path_numerator=numerator, distill_main_path_denominator=denominator,
        )
        _check(setups["subword"], "unconstrained", options)


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.5, 1.0])
def test_matches_dense_across_merge_thresholds(setups, threshold):
    options = AlmOptions(space_merge_threshold=threshold)
    for kind in setups:
        _check(setups[kind], "space", options)


@pytest.mark.parametrize(
    "options",
    [
        AlmOptions(),
        AlmOptions(alm_mode="append_space", alm_diff_fn="reverse_binary_kl"),
        AlmOptions(alm_mode="eos_as_space+merge_by_space_prob+append_space", alm_diff_fn="joschu_k2"),
        AlmOptions(alm_mode="", distill_chunk_sizes=(1, 2), distill_main_path_numerator="token_count"),
    ],
    ids=["default", "append_rkl", "eos_k2", "sizes"],
)
def test_gradients_match_dense(setups, options):
    setup = setups["subword"]

    def ours(s_logits):
        ctx = dataclasses.replace(setup.ctx, student=setup.student_outputs(s_logits))
        return alm_loss(ctx, "unconstrained", options)[0]

    def ref(s_logits):
        return dense.alm_dense(
            setup.batch, s_logits, setup.teacher_logits, chunking="unconstrained",
            **setup.dense_constants(), **dataclasses.asdict(options),
        )[0]

    g_ours = jax.grad(ours)(setup.student_logits)
    g_ref = jax.grad(ref)(setup.student_logits)
    assert float(jnp.abs(g_ref).max()) > 0
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-7)
    # The teacher gets no gradient through the loss.
    g_teacher = jax.grad(
        lambda t: alm_loss(dataclasses.replace(setup.ctx, teacher=setup.teacher_outputs(t)), "unconstrained", options)[0]
    )(setup.teacher_logits)
    assert float(jnp.abs(g_teacher).max()) == 0.0


def test_jit_matches_eager(setups):
    setup = setups["bytes"]
    options = AlmOptions()
    eager = alm_loss(setup.ctx, "space", options)
    jitted = jax.jit(lambda ctx: alm_loss(ctx, "space", options))(setup.ctx)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), eager, jitted)


def _teacher_as_student(setup):
    """A context whose student has the teacher's tokens, chunks and logits."""
    batch = dict(setup.batch)
    for key in ("input_ids", "attention_mask", "loss_mask", *(f"chunks_{{}}_{c}" for c in CHUNKINGS)):
        pattern = key if "{}" in key else key + "_{}"
        batch[pattern.format("student")] = batch[pattern.format("teacher")]
    return dataclasses.replace(
        setup.with_batch(batch), student=setup.ctx.teacher, student_constants=setup.ctx.teacher_constants
    )


@pytest.mark.parametrize("mode", ["", "append_space", "merge_by_space_prob+append_space"])
def test_zero_when_student_equals_teacher(setups, mode):
    ctx = _teacher_as_student(setups["subword"])
    for diff in ZERO_AT_EQUALITY:
        loss, diag = alm_loss(ctx, "unconstrained", AlmOptions(alm_mode=mode, alm_diff_fn=diff))
        assert abs(float(loss)) < 1e-6, (diff, float(loss))
        assert float(diag["legacy_loss"]) == 0.0
    # binary_ce is a cross-entropy: at equality it is the binary entropy, its minimum.
    ce_equal, _ = alm_loss(ctx, "unconstrained", AlmOptions(alm_mode=mode))
    ce_other, _ = alm_loss(setups["subword"].ctx, "unconstrained", AlmOptions(alm_mode=mode))
    assert 0 < float(ce_equal) < float(ce_other)


def test_decreases_as_student_moves_toward_teacher(setups):
    setup = setups["subword"]
    target = _teacher_as_student(setup)
    # Student = teacher's own tokens and chunks; interpolate its logits toward the teacher's.
    noise = jnp.asarray(np.random.default_rng(5).normal(size=setup.teacher_logits.shape) * 3, jnp.float32)
    for diff in ("binary_ce", "abs", "reverse_binary_kl", "joschu_k3"):
        options = AlmOptions(alm_diff_fn=diff)
        values = []
        for alpha in (0.0, 0.5, 0.9, 1.0):
            logits = setup.teacher_logits + (1 - alpha) * noise
            ctx = dataclasses.replace(target, student=setup.teacher_outputs(logits))
            values.append(float(alm_loss(ctx, "unconstrained", options)[0]))
        assert all(a > b for a, b in zip(values, values[1:])), (diff, values)


def test_loss_mask_excludes_chunks(setups):
    setup = setups["subword"]
    options = AlmOptions(alm_mode="append_space", distill_main_path_denominator="token_count")
    base, _ = alm_loss(setup.ctx, "unconstrained", options)
    # Changing the logits at loss-masked teacher/student positions changes nothing...
    rng = np.random.default_rng(3)
    s_masked = ~np.asarray(setup.batch["loss_mask_student"])
    # position p's logits predict token p+1: perturb where the *next* token is masked
    # and the position itself is masked (its space prob is only read at chunk ends).
    s_free = np.zeros_like(s_masked)
    s_free[:, :-1] = s_masked[:, 1:] & s_masked[:, :-1]
    noise = rng.normal(size=setup.student_logits.shape) * 5 * s_free[..., None]
    ctx = dataclasses.replace(setup.ctx, student=setup.student_outputs(setup.student_logits + noise))
    np.testing.assert_allclose(alm_loss(ctx, "unconstrained", options)[0], base, rtol=1e-6)
    # ... while masking more tokens does change the loss.
    batch = dict(setup.batch)
    batch["loss_mask_teacher"] = batch["loss_mask_teacher"].at[:, : batch["loss_mask_teacher"].shape[1] // 2].set(False)
    masked, _ = alm_loss(setup.with_batch(batch), "unconstrained", options)
    assert abs(float(masked) - float(base)) > 1e-4


def _halves_sum_to_whole(ctx, chunking, options):
    whole, _ = alm_loss(ctx, chunking, options)
    parts = [alm_loss(split_context(ctx, rows), chunking, options)[0] for rows in (slice(0, 1), slice(1, 3))]
    return float(whole), float(sum(parts))


@pytest.mark.parametrize(
    "options",
    [
        AlmOptions(alm_mode="append_space"),
        AlmOptions(alm_mode="", distill_main_path_numerator="token_count", distill_main_path_denominator="token_count"),
        AlmOptions(alm_mode="", distill_chunk_sizes=(1, 2)),
        AlmOptions(distill_main_path_denominator="token_count"),  # merging keeps token counts
    ],
    ids=["append", "tokens", "sizes", "merge_tokens"],
)
def test_global_normalisation_makes_micro_batches_add_up(options):
    setup = make_setup(7)
    whole, parts = _halves_sum_to_whole(setup.ctx, "unconstrained", options)
    np.testing.assert_allclose(parts, whole, rtol=1e-5)


def test_merged_chunk_count_estimate_is_exact_for_one_micro_batch_and_close_for_halves():
    setup = make_setup(7)
    options = AlmOptions()  # merge_by_space_prob + chunk_count denominator
    _check(setup, "unconstrained", options)
    whole, parts = _halves_sum_to_whole(setup.ctx, "unconstrained", options)
    assert abs(parts - whole) < 0.25 * whole


def test_unbiased_chunks_differ_from_unconstrained(setups):
    setup = setups["subword"]
    a, _ = alm_loss(setup.ctx, "unconstrained", AlmOptions(alm_mode=""))
    b, _ = alm_loss(setup.ctx, "unbiased", AlmOptions(alm_mode=""))
    assert float(a) != float(b)


def test_missing_teacher_or_batch_key_is_a_clear_error(setups):
    ctx = dataclasses.replace(setups["subword"].ctx, teacher=None)
    with pytest.raises(ValueError, match="needs the teacher"):
        alm_loss(ctx, "space", AlmOptions())
    batch = {k: v for k, v in setups["subword"].batch.items() if k != "chunks_student_space"}
    with pytest.raises(KeyError, match="alm_space needs the 'space' chunk ids"):
        alm_loss(setups["subword"].with_batch(batch), "space", AlmOptions())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alm_mode="merge_by_space_prob+apend_space"), "append_space"),
        (dict(alm_diff_fn="kl"), "binary_ce"),
        (dict(distill_main_path_numerator="tokens"), "log1p_token_count"),
        (dict(distill_main_path_denominator="log1p_token_count"), "chunk_count"),
        (dict(distill_chunk_sizes=(0,)), "positive"),
        (dict(binarization_temp=0.0), "binarization_temp"),
        (dict(alm_diff_fn="renyi", renyi_alpha=1.0), "renyi_alpha"),
    ],
)
def test_invalid_options_name_valid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlmOptions(**kwargs)


def test_invalid_chunking(setups):
    with pytest.raises(ValueError, match="unconstrained"):
        alm_loss(setups["subword"].ctx, "words", AlmOptions())
