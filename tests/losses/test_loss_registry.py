"""The registry: names, Gin options, requirements, parameters; every loss jit-compiles."""

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.losses.support import make_setup
from tokenkit import losses


def test_names_are_the_upstream_ones_and_unknown_names_list_them():
    assert losses.LOSS_NAMES == (
        "sft", "alm_unconstrained", "alm_space", "alm_unbiased", "alm", "alm_latents",
        "baseline_dskd", "baseline_uld", "baseline_mined",
    )
    with pytest.raises(ValueError, match="alm_unconstrained.*baseline_mined"):
        losses.get_loss("alm_words")
    with pytest.raises(ValueError, match="more than once"):
        losses.get_losses(["sft", "sft"])
    with pytest.raises(ValueError, match="list only one"):
        losses.get_losses(["alm", "alm_unbiased"])


def test_alm_is_the_upstream_alias_of_alm_unbiased():
    setup = make_setup(3)
    alias, unbiased = losses.get_loss("alm"), losses.get_loss("alm_unbiased")
    assert alias.name == "alm" and alias.chunkings == unbiased.chunkings == ("unbiased",)
    np.testing.assert_allclose(alias(setup.ctx)[0], unbiased(setup.ctx)[0])


def test_the_single_knob_overrides_the_merge_threshold():
    setup = make_setup(3)
    low = losses.get_loss("alm_unconstrained", space_merge_threshold=0.95)
    assert low.options.space_merge_threshold == 0.95
    default = losses.get_loss("alm_unconstrained")
    assert default.options.space_merge_threshold == 0.1
    assert float(low(setup.ctx)[0]) != float(default(setup.ctx)[0])
    with pytest.raises(TypeError):
        losses.get_losses("sft")


def test_requirements():
    by_name = {name: losses.get_loss(name) for name in losses.LOSS_NAMES}
    assert not by_name["sft"].needs_teacher
    assert all(by_name[n].needs_teacher for n in losses.LOSS_NAMES if n != "sft")
    assert by_name["alm_latents"].needs_hidden_states and not by_name["alm_latents"].needs_attentions
    assert by_name["baseline_dskd"].needs_hidden_states and by_name["baseline_dskd"].needs_output_embeddings
    assert by_name["baseline_mined"].needs_mined_mapping
    assert not by_name["alm_space"].needs_hidden_states
    assert {n: l.chunkings for n, l in by_name.items() if l.chunkings} == {
        "alm_unconstrained": ("unconstrained",),
        "alm_space": ("space",),
        "alm_unbiased": ("unbiased",),
        "alm": ("unbiased",),
        "alm_latents": ("unconstrained",),
        "baseline_mined": ("unconstrained",),
    }


def test_gin_options_reach_the_loss():
    with gin.unlock_config():
        gin.parse_config(
            "registry_test/AlmOptions.alm_mode = 'append_space'\n"
            "registry_test/AlmOptions.alm_diff_fn = 'abs'\n"
            "registry_test/LatentsOptions.latents_to_align = 'last_hidden_state+qkv'\n"
            "registry_test/LatentsOptions.latents_do_project = False\n"
            "registry_test/DskdOptions.divergence = 'akl'\n"
        )
        with gin.config_scope("registry_test"):
            alm = losses.get_loss("alm_space")
            latents = losses.get_loss("alm_latents")
            dskd = losses.get_loss("baseline_dskd")
    assert alm.options.alm_mode == "append_space" and alm.options.alm_diff_fn == "abs"
    assert latents.needs_attentions
    assert dskd.options.divergence == "akl"
    setup = make_setup(31)
    direct = losses.alm_loss(setup.ctx, "space", losses.AlmOptions(alm_mode="append_space", alm_diff_fn="abs"))
    np.testing.assert_allclose(alm(setup.ctx)[0], direct[0])
    # Outside the scope, the defaults.
    assert losses.get_loss("alm_space").options == losses.AlmOptions()


def test_bad_gin_option_fails_when_the_loss_is_built():
    with gin.unlock_config():
        gin.parse_config("registry_bad/AlmOptions.alm_diff_fn = 'l2'")
        with gin.config_scope("registry_bad"), pytest.raises(ValueError, match="binary_ce"):
            losses.get_loss("alm_unbiased")


def test_every_loss_runs_under_jit_with_finite_gradients():
    setup = make_setup(32, hidden_teacher=5, hidden_student=5)
    all_losses = losses.get_losses([n for n in losses.LOSS_NAMES if n != "alm"])
    params = losses.init_loss_params(all_losses, jax.random.key(0), 5, 5)
    assert set(params) == {"projector_query", "projector_s2t", "projector_t2s"}
    ctx = dataclasses.replace(setup.ctx, params=params)

    @jax.jit
    def step(student_logits, params):
        c = dataclasses.replace(ctx, params=params, student=setup.student_outputs(
            student_logits, hidden_states=ctx.student.hidden_states, attentions=ctx.student.attentions,
            output_embeddings=ctx.student.output_embeddings))
        values = [loss(c) for loss in all_losses]
        return jnp.stack([v for v, _ in values]), [d for _, d in values]

    values, diagnostics = step(setup.student_logits, params)
    assert np.isfinite(np.asarray(values)).all() and (np.asarray(values) > 0).all()
    for d in diagnostics:
        assert all(np.isfinite(np.asarray(x)).all() and np.ndim(x) == 0 for x in d.values())
    grads = jax.jit(jax.grad(lambda x, p: jnp.sum(step(x, p)[0]), argnums=(0, 1)))(setup.student_logits, params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(grads))
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(grads))


def test_latent_projection_params_by_name():
    with gin.unlock_config():
        gin.parse_config("registry_proj/LatentsOptions.latents_do_project = True")
        with gin.config_scope("registry_proj"):
            latents = losses.get_loss("alm_latents")
    params = losses.init_loss_params([latents], jax.random.key(1), 4, 6)
    assert params["projector_latents"]["kernel"].shape == (4, 6)
    assert params["projector_latents"]["bias"].shape == (6,)
