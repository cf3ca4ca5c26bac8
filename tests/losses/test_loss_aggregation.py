"""Multi-loss aggregation against hand-computed examples."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenkit.losses import aggregation as agg


def _tasks(*vectors):
    """Per-loss gradients of a two-leaf pytree: first coordinate in 'a', the rest in 'b'."""
    stacked = jnp.asarray(vectors, jnp.float32)
    return {"a": stacked[:, :1], "b": stacked[:, 1:]}


def _flat(tree):
    return np.concatenate([np.asarray(tree["a"]), np.asarray(tree["b"])], axis=-1)


def test_pcgrad_projects_conflicting_gradients_over_the_whole_vector():
    # g1 . g2 = -1 < 0: g1 - (-1/|g2|^2) g2 = (0.5, 0.5); g2 - (-1/|g1|^2) g1 = (0, 1).
    out = agg.pcgrad(_tasks([1.0, 0.0], [-1.0, 1.0]))
    np.testing.assert_allclose(_flat(out), [[0.5, 0.5], [0.0, 1.0]], atol=1e-7)
    # Per-leaf projection (the upstream's) would have zeroed g1's first coordinate.


def test_pcgrad_leaves_agreeing_gradients_alone_and_handles_three():
    tasks = _tasks([1.0, 0.0], [1.0, 1.0])
    np.testing.assert_allclose(_flat(agg.pcgrad(tasks)), _flat(tasks))
    # Three losses: g1 against g2 then g3, using the running projection.
    out = _flat(agg.pcgrad(_tasks([1.0, 0.0], [-1.0, 1.0], [0.0, -1.0])))
    g1 = np.array([0.5, 0.5])  # after g2
    g1 = g1 - min(g1 @ [0, -1], 0) * np.array([0.0, -1.0])  # -> (0.5, 0)
    np.testing.assert_allclose(out[0], g1, atol=1e-7)


def test_gradmag_and_gradclip():
    tasks = _tasks([3.0, 4.0], [0.3, 0.4])
    np.testing.assert_allclose(_flat(agg.gradmag(tasks)), [[0.6, 0.8], [0.6, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(_flat(agg.gradclip(tasks, 2.0)), [[1.2, 1.6], [0.3, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(agg.global_norms(tasks), [5.0, 0.5], rtol=1e-6)


def test_aggregate_chain_sums_tasks_and_reports_norms():
    aggregation = agg.Aggregation(multitask_aggregation_fn="pcgrad+gradclip:1.0")
    assert aggregation.kind == "per_loss_grads"
    grad, diag = agg.aggregate_task_grads(aggregation, _tasks([1.0, 0.0], [-1.0, 1.0]))
    # pcgrad -> (0.5, 0.5), (0, 1); clip to norm 1 -> unchanged; sum -> (0.5, 1.5).
    np.testing.assert_allclose(_flat(jax.tree.map(lambda x: x[None], grad))[0], [0.5, 1.5], atol=1e-6)
    np.testing.assert_allclose(diag["global_grad_norm_before_agg"], [1.0, np.sqrt(2)], rtol=1e-6)
    np.testing.assert_allclose(diag["global_grad_norm_after_agg"], [np.sqrt(0.5), 1.0], rtol=1e-6)
    identity, _ = agg.aggregate_task_grads(agg.Aggregation(multitask_aggregation_fn="identity"), _tasks([1, 2], [3, 4]))
    np.testing.assert_allclose(identity["a"], [4.0])
    # A list of per-loss pytrees stacks to the same thing.
    stacked = agg.stack_task_grads([{"a": jnp.ones(2)}, {"a": 2 * jnp.ones(2)}])
    np.testing.assert_allclose(stacked["a"], [[1, 1], [2, 2]])


def test_approx_gradmag_weights():
    probe = _tasks([2.0, 0.0], [0.0, 0.5])
    weights, denominator, diag = agg.approx_gradmag_weights(agg.Aggregation(multitask_aggregation_fn="approx_gradmag"), probe)
    np.testing.assert_allclose(weights, [0.5, 2.0], rtol=1e-6)
    assert float(denominator) == 1.0
    weights, denominator, _ = agg.approx_gradmag_weights(
        agg.Aggregation(multitask_aggregation_fn="approx_gradmag_preserve_mag"), probe
    )
    np.testing.assert_allclose(denominator, 2.5, rtol=1e-6)
    np.testing.assert_allclose(diag["approx_grad_norm"], [2.0, 0.5], rtol=1e-6)


def test_combine_losses_mean_is_the_upstream_default():
    losses = jnp.asarray([1.0, 3.0])
    assert float(agg.combine_losses(agg.Aggregation(), losses)) == 2.0
    assert float(agg.combine_losses(agg.Aggregation(multitask_aggregation_fn=None), losses)) == 2.0
    assert float(agg.combine_losses(agg.Aggregation(multitask_aggregation_fn="sum"), losses)) == 4.0
    with pytest.raises(ValueError, match="probe"):
        agg.combine_losses(agg.Aggregation(multitask_aggregation_fn="approx_gradmag"), losses)


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("constant", 30, 1.0),
        ("linear", 25, 0.25),
        ("cosine", 50, 0.5),
        ("cosine", 0, 1.0),
        ("reverse_cosine", 0, 0.0),
        ("reverse_cosine", 100, 1.0),
        ("warmup:10", 5, 0.5),
        ("warmup:10", 20, 1.0),
    ],
)
def test_schedules(schedule, step, expected):
    np.testing.assert_allclose(agg.schedule_multiplier(schedule, step, 100), expected, atol=1e-6)


def test_loss_weights_with_schedules_inside_jit():
    aggregation = agg.Aggregation(loss_weights=[2.0, 0.5], loss_schedules=["linear", "constant"])
    weights = jax.jit(lambda s: agg.loss_weights(aggregation, 2, s, 100))(jnp.asarray(50))
    np.testing.assert_allclose(weights, [1.0, 0.5])
    np.testing.assert_allclose(agg.loss_weights(agg.Aggregation(), 3, 0, 10), [1, 1, 1])
    with pytest.raises(ValueError, match="loss_weights has 2 entries for 3 losses"):
        agg.loss_weights(aggregation, 3, 0, 100)


def test_gradnorm_one_step_by_hand():
    aggregation = agg.Aggregation(multitask_aggregation_fn="gradnorm", gradnorm_alpha=0.12, gradnorm_lr=0.025)
    state = agg.gradnorm_init(aggregation, 2)
    new, diag = agg.gradnorm_update(aggregation, state, jnp.asarray([2.0, 1.0]), jnp.asarray([3.0, 1.0]), 0)
    # Step 0: ratios 1, target = mean(w|g|) = 2 for both; d/dw mean|w g - 2| = (1.5, -0.5).
    # AdamW's first step moves each weight by lr * sign (+ decay 1e-4 * w), then sum -> 2.
    raw = np.array([1 - 0.025 * (1 + 1e-4), 1 + 0.025 * (1 - 1e-4)])
    np.testing.assert_allclose(new.weights, raw / raw.sum() * 2, rtol=1e-5)
    np.testing.assert_allclose(new.initial_losses, [2.0, 1.0])
    np.testing.assert_allclose(diag["loss_ratio"], [1.0, 1.0])
    # Later steps keep the step-0 losses as reference.
    later, diag = agg.gradnorm_update(aggregation, new, jnp.asarray([1.0, 1.0]), jnp.asarray([1.0, 1.0]), 1)
    np.testing.assert_allclose(later.initial_losses, [2.0, 1.0])
    np.testing.assert_allclose(diag["loss_ratio"], [0.5, 1.0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(multitask_aggregation_fn="pcgard"), "pcgrad"),
        (dict(multitask_aggregation_fn="gradclip"), "MAX_NORM"),
        (dict(multitask_aggregation_fn="pcgrad:3"), "takes no argument"),
        (dict(loss_schedules=["exp"]), "reverse_cosine"),
        (dict(loss_schedules=["warmup"]), "warmup:N"),
    ],
)
def test_invalid_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        agg.Aggregation(**kwargs)


def test_gin_binds_the_upstream_names():
    # A scope keeps these bindings away from every other test in the session.
    with gin.unlock_config():
        gin.parse_config(
            "aggregation_test/Aggregation.multitask_aggregation_fn = 'approx_gradmag_preserve_mag'\n"
            "aggregation_test/Aggregation.loss_weights = [1.0, 0.5]"
        )
    with gin.config_scope("aggregation_test"):
        aggregation = agg.Aggregation()
    assert aggregation.kind == "probe"
    assert aggregation.loss_weights == (1.0, 0.5)
    assert agg.Aggregation().kind == "loss"
