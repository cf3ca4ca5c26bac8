"""The train step: accumulation equals one big batch; aggregations are wired right."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenkit.losses import aggregation as agg
from tokenkit.training import step as S

D, B = 4, 8
NAMES = ("fit", "shrink")


def loss_fn(params, frozen, micro, batch):
    del frozen
    w = params["layers"]["w"]  # [2, D]
    pred = jnp.einsum("bd,d->b", micro["x"], (w[0] * w[1]) * params["head"])
    denom = batch["mask"].sum()  # global normalisation
    fit = jnp.sum(micro["mask"] * (pred - micro["y"]) ** 2) / denom
    shrink = jnp.sum(micro["mask"] * jnp.abs(pred)) / denom
    return jnp.stack([fit, shrink]), {"pred_mean": pred.mean()}


def _setup(method, k=1, weights=None):
    rng = np.random.default_rng(0)
    params = {"layers": {"w": jnp.asarray(rng.normal(size=(2, D)), jnp.float32)},
              "head": jnp.asarray(rng.normal(size=D), jnp.float32)}
    batch = {"x": jnp.asarray(rng.normal(size=(B, D)), jnp.float32),
             "y": jnp.asarray(rng.normal(size=B), jnp.float32),
             "mask": jnp.asarray([1, 1, 0, 1, 1, 1, 0, 1], jnp.float32)}
    aggregation = agg.Aggregation(multitask_aggregation_fn=method, loss_weights=weights)
    tx = optax.sgd(0.1)
    state = S.init_train_state(params, tx, jax.random.key(0), aggregation, len(NAMES))
    step = jax.jit(S.make_train_step(loss_fn, tx, aggregation, loss_names=NAMES,
                                     total_steps=10, grad_acc_steps=k))
    return state, batch, step


@pytest.mark.parametrize("method", ["mean", "sum", "identity", "pcgrad", "approx_gradmag"])
def test_accumulation_equals_one_big_batch(method):
    state, batch, step1 = _setup(method, k=1)
    _, _, step4 = _setup(method, k=4)
    s1, m1 = step1(state, batch)
    s4, m4 = step4(state, batch)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["loss/fit"], m4["loss/fit"], rtol=1e-5)


def test_mean_is_the_mean_of_weighted_losses_and_its_gradient():
    state, batch, step = _setup("mean", weights=(2.0, 0.5))
    new, metrics = step(state, batch)
    losses, _ = loss_fn(state.params, None, batch, batch)
    expected = jnp.mean(losses * jnp.array([2.0, 0.5]))
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)
    grads = jax.grad(lambda p: jnp.mean(loss_fn(p, None, batch, batch)[0] * jnp.array([2.0, 0.5])))(state.params)
    np.testing.assert_allclose(new.params["head"], state.params["head"] - 0.1 * grads["head"], rtol=1e-5)
    assert int(new.step) == 1


def test_identity_chain_equals_sum():
    state, batch, step_sum = _setup("sum")
    _, _, step_id = _setup("identity")
    a, _ = step_sum(state, batch)
    b, metrics = step_id(state, batch)
    np.testing.assert_allclose(a.params["head"], b.params["head"], rtol=1e-5)
    assert "global_grad_norm_before_agg/fit" in metrics


def test_pcgrad_matches_the_aggregation_on_full_jacobian():
    state, batch, step = _setup("pcgrad")
    new, _ = step(state, batch)
    jac = jax.jacrev(lambda p: loss_fn(p, None, batch, batch)[0])(state.params)
    aggregation = agg.Aggregation(multitask_aggregation_fn="pcgrad")
    grads, _ = agg.aggregate_task_grads(aggregation, jac)
    np.testing.assert_allclose(new.params["head"], state.params["head"] - 0.1 * grads["head"], rtol=1e-5)


def test_approx_gradmag_probes_the_last_layer():
    state, batch, step = _setup("approx_gradmag")
    _, metrics = step(state, batch)
    jac = jax.jacrev(lambda p: loss_fn(p, None, batch, batch)[0])(state.params)
    last = jac["layers"]["w"][:, -1]  # per-loss gradient of the last layer slice
    expected = 1.0 / (jnp.linalg.norm(last, axis=1) + agg.NORM_EPSILON)
    np.testing.assert_allclose(metrics["approx_loss_weight/fit"], expected[0], rtol=1e-5)
    np.testing.assert_allclose(metrics["approx_loss_weight/shrink"], expected[1], rtol=1e-5)


def test_gradnorm_updates_its_weights():
    state, batch, step = _setup("gradnorm")
    new, metrics = step(state, batch)
    w = np.asarray(new.aggregation_state.weights)
    assert w.shape == (2,) and not np.allclose(w, 1.0)
    np.testing.assert_allclose(w.sum(), 2.0, rtol=1e-5)
    assert "gradnorm_weight/fit" in metrics


def test_indivisible_batch_is_a_clear_error():
    state, batch, step = _setup("mean", k=3)
    with pytest.raises(ValueError, match="not divisible by grad_acc_steps=3"):
        step(state, batch)


def test_leaf_probe_measures_one_parameter_even_a_frozen_one():
    def loss_fn_frozen_scale(params, frozen, micro, batch):
        scaled = dict(params, head=params["head"] * frozen["scale"])
        return loss_fn(scaled, None, micro, batch)

    state, batch, _ = _setup("approx_gradmag")
    frozen = {"scale": jnp.full((D,), 1.5, jnp.float32)}
    aggregation = agg.Aggregation(multitask_aggregation_fn="approx_gradmag")
    step = jax.jit(S.make_train_step(
        loss_fn_frozen_scale, optax.sgd(0.1), aggregation, loss_names=NAMES, total_steps=10,
        probe=S.leaf_probe(("scale",)),
    ))
    _, metrics = step(state, batch, frozen)
    jac = jax.jacrev(lambda f: loss_fn_frozen_scale(state.params, f, batch, batch)[0])(frozen)
    expected = 1.0 / (jnp.linalg.norm(jac["scale"], axis=1) + agg.NORM_EPSILON)
    np.testing.assert_allclose(metrics["approx_loss_weight/fit"], expected[0], rtol=1e-5)
    np.testing.assert_allclose(metrics["approx_loss_weight/shrink"], expected[1], rtol=1e-5)
    with pytest.raises(KeyError, match="nope/x"):
        S.leaf_probe(("nope", "x")).zeros(state.params, frozen)
