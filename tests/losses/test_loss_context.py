"""Context helpers: space and vocabulary masks, log-probs, chunk reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenkit.logits import MASKED_LOGIT, mask_padded_vocab, vocab_mask
from tokenkit.losses import chunks
from tokenkit.losses.context import build_space_mask, masked_logits
from tokenkit.losses.logprobs import position_stats, token_logprobs_at

TOKENS = ["a", "\u0120the", "\u010a", "\u0109x", "<s>", "", "b\u0120"]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("space", [1]),
        ("newline", [2]),
        ("tab", [3]),
        ("special", [4]),
        ("space+tab+newline+special", [1, 2, 3, 4]),
    ],
)
def test_space_mask_modes(mode, expected):
    mask = build_space_mask(TOKENS, [4], space_mask_mode=mode, padded_size=9)
    assert mask.shape == (9,)
    assert np.nonzero(mask)[0].tolist() == expected


def test_space_mask_and_vocab_mask_errors():
    with pytest.raises(ValueError, match="newline"):
        build_space_mask(TOKENS, [], space_mask_mode="space+lines")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_space_mask(TOKENS, [99])
    np.testing.assert_array_equal(vocab_mask(3, 5), [True, True, True, False, False])
    with pytest.raises(ValueError, match="transfer the model"):
        vocab_mask(5, 3)
    with pytest.raises(ValueError, match="padded vocabulary"):
        masked_logits(jnp.zeros((1, 2, 4)), jnp.ones(5, bool))
    masked = mask_padded_vocab(jnp.ones((1, 4)), jnp.asarray([True, True, False, False]))
    np.testing.assert_array_equal(masked, [[1, 1, MASKED_LOGIT, MASKED_LOGIT]])
    assert masked.dtype == jnp.float32


def test_position_stats_match_log_softmax_values_and_gradients():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)) * 3, jnp.float32)
    vocab = jnp.arange(7) < 6
    ids = jnp.asarray(rng.integers(0, 6, size=(2, 5)))
    subset = jnp.asarray([True, False, True, False, False, False, True])

    def dense(x):
        logp = jax.nn.log_softmax(jnp.where(vocab, x, -1e30), -1)
        target = jnp.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
        return target, jnp.log(jnp.exp(logp) @ (subset & vocab)), logp[..., 2]

    def ours(x):
        # The model side masks the padded rows before any loss sees the logits.
        x = mask_padded_vocab(x, vocab)
        stats = position_stats(x, ids, subset & vocab)
        return stats.next_token_logprobs(), stats.subset_logprobs(), token_logprobs_at(x, stats.log_norm, 2)

    for a, b in zip(ours(logits), dense(logits)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    stats = position_stats(mask_padded_vocab(logits, vocab), ids, subset & vocab)
    np.testing.assert_allclose(stats.next_token_cross_entropy(), -dense(logits)[0], rtol=1e-5)
    # The hand-written backward pass equals autodiff of the dense form.
    weights = [jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in dense(logits)]

    def scalar(fn):
        return lambda x: sum(jnp.sum(w * y) for w, y in zip(weights, fn(x)))

    g_ours, g_dense = jax.grad(scalar(ours))(logits), jax.grad(scalar(dense))(logits)
    np.testing.assert_allclose(g_ours, g_dense, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(g_ours[..., 6]).max()) == 0.0  # padded row


def test_subset_logprobs_stay_finite_where_probabilities_underflow():
    logits = jnp.asarray([[[0.0, -200.0, -205.0]]])
    stats = position_stats(logits, jnp.zeros((1, 1), jnp.int32), jnp.asarray([False, True, True]))
    np.testing.assert_allclose(stats.subset_logprobs(), [[np.logaddexp(-200.0, -205.0)]], rtol=1e-6)
    empty = position_stats(logits, jnp.zeros((1, 1), jnp.int32), jnp.zeros(3, bool))
    assert float(empty.subset_logprobs()[0, 0]) == -np.inf


def test_worked_example_from_the_docs():
    # teacher tokens: "Hel" "lo" "Ġworld" | student: "H" "ello" "Ġwor" "ld"
    teacher = jnp.asarray([[0, 0, 1]])
    student = jnp.asarray([[0, 0, 1, 1]])
    logp_t = jnp.asarray([[-1.0, -2.0]])  # log-probs of tokens 1 and 2 ("lo", "Ġworld")
    logp_s = jnp.asarray([[-0.5, -1.5, -0.25]])
    c = chunks.num_chunk_slots(3, 4)
    assert c == 3
    np.testing.assert_allclose(chunks.chunk_sum(logp_t, teacher[:, 1:], c), [[-1.0, -2.0, 0.0]])
    np.testing.assert_allclose(chunks.chunk_sum(logp_s, student[:, 1:], c), [[-0.5, -1.75, 0.0]])
    np.testing.assert_array_equal(chunks.chunk_last_positions(teacher, c), [[1, 2, 0]])
    np.testing.assert_array_equal(chunks.chunk_last_positions(student, c), [[1, 3, 0]])
    np.testing.assert_allclose(chunks.chunk_token_counts(teacher[:, 1:], c), [[1, 1, 0]])


def test_chunk_ops_drop_no_chunk_tokens_and_keep_rows_apart():
    ids = jnp.asarray([[0, -1, 1, 1], [-1, 0, 0, 2]])
    values = jnp.asarray([[1.0, 10.0, 2.0, 3.0], [100.0, 4.0, 5.0, 6.0]])
    np.testing.assert_allclose(chunks.chunk_sum(values, ids, 3), [[1, 5, 0], [9, 0, 6]])
    np.testing.assert_allclose(chunks.chunk_max(values, ids, 3, empty=-7), [[1, 3, -7], [5, -7, 6]])
    masked = chunks.mask_chunk_ids(ids, jnp.asarray([[1, 1, 0, 1], [1, 1, 1, 1]]))
    np.testing.assert_array_equal(masked, [[0, -1, -1, 1], [-1, 0, 0, 2]])
    # Merging: a boundary after chunks 1 and 3 -> merged ids 0 0 1 1 2.
    np.testing.assert_array_equal(
        chunks.merged_chunk_ids(jnp.asarray([[False, True, False, True, False]])), [[0, 0, 1, 1, 2]]
    )
    np.testing.assert_allclose(chunks.group_sum(jnp.arange(6.0)[None], 3), [[3.0, 12.0]])
    np.testing.assert_allclose(
        chunks.last_nonempty_in_group(jnp.asarray([[1.0, 2.0, 0.0, 4.0]]), jnp.asarray([[1, 1, 0, 1]]), 2), [[2.0, 4.0]]
    )
    assert chunks.num_chunk_slots(10, 7, (2, 3)) == 12
