import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenkit.training import optim


def test_linear_schedule_shape():
    fn = optim.learning_rate_schedule(100, learning_rate=1.0, warmup_steps=10, decay="linear")
    assert float(fn(0)) == 0.0
    assert float(fn(5)) == pytest.approx(0.5)
    assert float(fn(10)) == pytest.approx(1.0)
    assert float(fn(55)) == pytest.approx(0.5)
    assert float(fn(100)) == pytest.approx(0.0)


def test_cosine_schedule_ends_at_fraction():
    fn = optim.learning_rate_schedule(
        50, learning_rate=2.0, warmup_steps=0, decay="cosine", final_lr_fraction=0.1
    )
    assert float(fn(0)) == pytest.approx(2.0)
    assert float(fn(25)) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(fn(50)) == pytest.approx(0.2)


def test_prefix_then_warmup():
    fn = optim.learning_rate_schedule(
        100, learning_rate=1.0, warmup_steps=10, prefix_steps=10, prefix_learning_rate=0.2,
        decay="constant",
    )
    assert float(fn(5)) == pytest.approx(0.1)
    assert float(fn(15)) == pytest.approx(0.5)
    assert float(fn(60)) == pytest.approx(1.0)


def test_bad_schedule_names_valid_ones():
    with pytest.raises(ValueError, match="linear, cosine, constant"):
        optim.learning_rate_schedule(10, decay="exponential")
    with pytest.raises(ValueError, match="exceed"):
        optim.learning_rate_schedule(10, warmup_steps=20)


def test_weight_decay_mask_by_name():
    params = {
        "layers": {"attn": {"kernel": jnp.ones((2, 3, 3)), "bias": jnp.ones((2, 3))},
                   "input_norm": {"scale": jnp.ones((2, 3))}},
        "embedder": {"embedding": jnp.ones((5, 3))},
    }
    mask = optim.weight_decay_mask(params)
    assert mask["layers"]["attn"]["kernel"] is True
    assert mask["layers"]["attn"]["bias"] is False
    assert mask["layers"]["input_norm"]["scale"] is False
    assert mask["embedder"]["embedding"] is True


def test_param_groups_scale_the_update():
    params = {"model": {"w": jnp.ones(4)}, "loss": {"projector_latents": {"kernel": jnp.ones(4)}}}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = optim.make_optimizer(
        params, optax.constant_schedule(0.1), weight_decay=0.0, max_grad_norm=None
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first update is -lr * sign(g); the projector group has lr x2.
    np.testing.assert_allclose(updates["model"]["w"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(updates["loss"]["projector_latents"]["kernel"], -0.2, rtol=1e-5)


def test_clipping_uses_one_global_norm_across_groups():
    # Upstream clipped each parameter group by its own norm; we clip once, globally.
    params = {"a": jnp.zeros(1), "b_projector_latents": jnp.zeros(1)}
    grads = {"a": jnp.array([3.0]), "b_projector_latents": jnp.array([4.0])}
    eps = 1e6  # makes Adam's first update ~ -lr * g / eps, i.e. proportional to g
    tx = optim.make_optimizer(
        params, optax.constant_schedule(1.0), max_grad_norm=1.0, weight_decay=0.0,
        eps=eps, param_groups=((".*projector.*", 1.0),),
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], -0.6 / eps, rtol=1e-4)
    np.testing.assert_allclose(updates["b_projector_latents"], -0.8 / eps, rtol=1e-4)
    assert float(optim.global_norm(grads)) == pytest.approx(5.0)
