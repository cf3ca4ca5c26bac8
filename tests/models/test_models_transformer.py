"""Forward-pass options: dtypes, remat, attention implementations, input-id expansion."""

from __future__ import annotations

import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenkit.models import transformer as transformer_module
from tokenkit.models import (
    ModelConfig,
    Transformer,
    embed_tokens,
    init_params,
    make_transformer,
)

LLAMA = ModelConfig(
    "llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=8,
)
GEMMA2 = ModelConfig(
    "gemma2", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=8, activation="gelu_tanh", tie_word_embeddings=True,
    sandwich_norms=True, norm_offset=1.0, scale_embeddings=True, query_pre_attn_scalar=8,
    attn_logit_softcap=5.0, final_logit_softcap=4.0,
    layer_types=("sliding_attention", "full_attention"), sliding_window=3,
)


def _scaled_params(config, seed=0):
    """Random params at a scale where the layers change the output (std 1/sqrt(fan-in))."""
    params = init_params(Transformer(config), jax.random.key(seed))
    keys = iter(jax.random.split(jax.random.key(seed + 1), 64))

    def redraw(x):
        # Stacked kernels [L, fan_in, ...]; roughly unit-variance activations.
        return jax.random.normal(next(keys), x.shape) * x.shape[1] ** -0.5 if x.ndim >= 3 else x

    params = jax.tree.map(redraw, params)
    if "lm_head" in params:
        params["lm_head"]["kernel"] = jax.random.normal(next(keys), (config.hidden_size, config.vocab_size)) * config.hidden_size ** -0.5
    params["embedder"]["embedding"] = jax.random.normal(next(keys), params["embedder"]["embedding"].shape)
    return params


def _apply(model, params, *args, **kwargs):
    """model.apply under jit (eager scan is slow)."""
    return jax.jit(lambda p, a: model.apply({"params": p}, *a, **kwargs))(params, args)


def _batch(config, b=3, t=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, (b, t)).astype(np.int32)
    mask = (np.arange(t)[None] < np.linspace(t, 2, b).astype(int)[:, None]).astype(np.int32)
    return ids * mask, mask


@pytest.mark.parametrize("config", [LLAMA, GEMMA2], ids=["llama", "gemma2"])
def test_bf16_compute_with_fp32_params_and_logits(config):
    params = _scaled_params(config)
    ids, mask = _batch(config)
    ref = _apply(Transformer(config), params, ids, mask).logits
    model = make_transformer(config, dtype="bfloat16", param_dtype="float32", logits_dtype="float32")
    out = jax.jit(lambda p: model.apply({"params": p}, ids, mask, output_hidden_states=True))(params)
    assert out.logits.dtype == jnp.float32
    assert out.hidden_states.dtype == jnp.bfloat16
    real = mask.astype(bool)
    err = np.abs(np.asarray(out.logits) - np.asarray(ref))[real].max()
    assert err < 0.1 * np.abs(np.asarray(ref))[real].max()
    assert err > 0  # it really ran in bf16
    bf16_logits = _apply(
        Transformer(config, dtype=jnp.bfloat16, logits_dtype=None), params, ids, mask
    ).logits
    assert bf16_logits.dtype == jnp.bfloat16


def test_remat_policies_give_the_same_values_and_gradients():
    params = _scaled_params(LLAMA)
    ids, mask = _batch(LLAMA)

    def loss(p, policy):
        logits = _apply(Transformer(LLAMA, remat_policy=policy), p, ids, mask).logits
        return jnp.sum(jax.nn.log_softmax(logits) * mask[..., None])

    ref_value, ref_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, "none")
    for policy in ("full", "dots", "dots_no_batch"):
        value, grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, policy)
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="remat_policy 'most'.*valid: none, full, dots, dots_no_batch"):
        _apply(Transformer(LLAMA, remat_policy="most"), params, ids, mask)


def test_model_options_are_not_a_gin_surface_of_their_own():
    # The compute options are bound where a run is assembled (build_run.dtype, ...):
    # a binding of the inner factory would be ignored, so it fails at parse time.
    with gin.unlock_config():
        with pytest.raises(ValueError, match="make_transformer"):
            gin.parse_config("make_transformer.remat_policy = 'full'")
    gin.clear_config()
    model = make_transformer(LLAMA, remat_policy="full", dtype="bfloat16")
    assert model.remat_policy == "full" and model.dtype == jnp.bfloat16


def test_dot_product_attention_implementation_matches_einsum():
    params = _scaled_params(LLAMA)
    ids, mask = _batch(LLAMA)
    ref = _apply(Transformer(LLAMA), params, ids, mask).logits
    out = _apply(Transformer(LLAMA, attention_impl="xla"), params, ids, mask).logits
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=1e-5)
    with pytest.raises(ValueError, match="soft-capping"):
        Transformer(GEMMA2, attention_impl="xla").apply({"params": _scaled_params(GEMMA2)}, ids, mask)


@pytest.mark.parametrize("config", [LLAMA, GEMMA2], ids=["llama", "gemma2"])
def test_causal_blocks_give_the_same_values_and_gradients(config, monkeypatch):
    """Long inputs without a cache attend in query blocks (only keys up to each block's
    end): the same logits and gradients as one block, with padding, sliding windows and
    soft-capping, and a last block shorter than the others."""
    params = _scaled_params(config)
    ids, mask = _batch(config, b=3, t=11)

    def loss(p):
        logits = Transformer(config).apply({"params": p}, ids, mask).logits
        return jnp.sum(jax.nn.log_softmax(logits) * mask[..., None]), logits

    monkeypatch.setattr(transformer_module, "CAUSAL_BLOCK", 64)
    (ref_value, ref_logits), ref_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    monkeypatch.setattr(transformer_module, "CAUSAL_BLOCK", 4)  # blocks of 4, 4, 3 queries
    (value, logits), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(ref_logits)[real], atol=1e-5)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_padding_does_not_change_real_positions():
    params = _scaled_params(GEMMA2)
    ids, _ = _batch(GEMMA2, b=1, t=6)
    short = _apply(Transformer(GEMMA2), params, ids[:, :4]).logits
    padded_ids = ids.copy()
    padded_ids[:, 4:] = 7
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    padded = _apply(Transformer(GEMMA2), params, padded_ids, mask).logits
    np.testing.assert_allclose(np.asarray(padded)[:, :4], np.asarray(short), atol=1e-5)


def test_expansion_rows_are_added_before_gemma_scaling():
    params = _scaled_params(GEMMA2)
    extra = jax.random.normal(jax.random.key(7), (10, GEMMA2.hidden_size))
    with_extra = {**params, "expand_embedder": {"embedding": extra}}
    ids, mask = _batch(GEMMA2)
    expanded = (ids * 3 + 1) % 10
    model = Transformer(GEMMA2)
    out = _apply(model, with_extra, ids, mask, expanded_input_ids=expanded).logits

    table = params["embedder"]["embedding"]
    manual = (table[ids] + extra[expanded]) * math.sqrt(GEMMA2.hidden_size)
    ref = _apply(model, params, ids, mask, inputs_embeds=manual).logits
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    np.testing.assert_allclose(
        embed_tokens(GEMMA2, table, ids, extra, expanded), manual, rtol=1e-6
    )
    plain = _apply(model, with_extra, ids, mask).logits
    assert np.abs(np.asarray(plain) - np.asarray(out)).max() > 1e-2  # the rows matter
    with pytest.raises(ValueError, match="expand_embedder"):
        model.apply({"params": params}, ids, mask, expanded_input_ids=expanded)


def test_return_logits_false_skips_the_head():
    params = _scaled_params(LLAMA)
    ids, mask = _batch(LLAMA)
    out = _apply(Transformer(LLAMA), params, ids, mask, return_logits=False,
                                   output_hidden_states=True)
    assert out.logits is None and out.hidden_states.shape == (3, 3, 9, 32)


def test_qkv_are_the_raw_projections_of_each_layer():
    params = _scaled_params(LLAMA)
    ids, mask = _batch(LLAMA)
    model = Transformer(LLAMA)
    out = model.apply({"params": params}, ids, mask, output_qkv=True, output_hidden_states=True)
    q, k, v = out.qkv
    n, b, t = LLAMA.num_layers, ids.shape[0], ids.shape[1]
    assert q.shape == (n, b, t, LLAMA.num_heads * LLAMA.head_dim)
    assert k.shape == v.shape == (n, b, t, LLAMA.num_kv_heads * LLAMA.head_dim)
    # Layer 1's query: its attention norm of layer 0's output, times its query kernel.
    layer = jax.tree.map(lambda x: x[1], params["layers"])
    h = out.hidden_states[1].astype(jnp.float32)
    normed = h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + LLAMA.rms_norm_eps)
    normed = normed * layer["attn_norm"]["scale"]
    want = jnp.einsum("btd,dhk->bthk", normed, layer["attention"]["query"]["kernel"])
    np.testing.assert_allclose(q[1], want.reshape(b, t, -1), rtol=1e-4, atol=1e-4)
    assert model.apply({"params": params}, ids, mask).qkv is None


@pytest.mark.parametrize("config", [LLAMA, GEMMA2], ids=["llama", "gemma2"])
def test_unstacked_layers_equal_the_scan(config):
    """`layer_loop="unstacked"` over `unstack_layers(params)` gives the scan's logits,
    hidden states and qkv, and the same cache across a prefill and a decode step."""
    params = _scaled_params(config)
    flat = transformer_module.unstack_layers(params, config.num_layers)
    assert "layers" not in flat and set(flat) >= {"layers_0", "layers_1"}
    scan, unstacked = Transformer(config), Transformer(config, layer_loop="unstacked")
    ids, mask = _batch(config)
    a = _apply(scan, params, ids, mask, output_hidden_states=True, output_qkv=True)
    b = _apply(unstacked, flat, ids, mask, output_hidden_states=True, output_qkv=True)
    np.testing.assert_allclose(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.hidden_states, a.hidden_states, rtol=1e-5, atol=1e-5)
    for x, y in zip(b.qkv, a.qkv):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)

    def prefill_then_step(model, p):
        cache = transformer_module.init_cache(config, ids.shape[0], 16)
        cache = _apply(model, p, ids, mask, cache=cache).cache
        step = _apply(model, p, ids[:, :1], np.ones_like(ids[:, :1]), cache=cache)
        return step.logits, step.cache

    (la, ca), (lb, cb) = prefill_then_step(scan, params), prefill_then_step(unstacked, flat)
    np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cb.key, ca.key, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cb.lengths, ca.lengths)
    assert float(jnp.abs(ca.key).sum()) > 0  # the cache was written
    with pytest.raises(ValueError, match="layer_loop 'python' unknown"):
        _apply(Transformer(config, layer_loop="python"), params, ids, mask)


@pytest.mark.parametrize("config", [LLAMA, GEMMA2], ids=["llama", "gemma2"])
@pytest.mark.parametrize("block", [64, 4], ids=["one_block", "blocks_of_4"])
def test_packed_rows_equal_separate_sequences(config, block, monkeypatch):
    """A row `[context, a, b]` (segments 0, 1, 2; a's and b's positions following the
    context's) gives each token the logits it has in `context + a` and `context + b` run
    alone, with sliding windows and padding, in one causal block and in several."""
    monkeypatch.setattr(transformer_module, "CAUSAL_BLOCK", block)
    params = _scaled_params(config)
    rng = np.random.default_rng(3)
    context, a, b = (rng.integers(0, config.vocab_size, n).astype(np.int32) for n in (5, 4, 3))
    model = Transformer(config)
    alone = [_apply(model, params, np.concatenate([context, x])[None]).logits[0]
             for x in (a, b)]
    row = np.concatenate([context, a, b, [0, 0]])[None]
    mask = np.asarray([[1] * 12 + [0, 0]], np.int32)
    positions = np.asarray([list(range(9)) + list(range(5, 8)) + [0, 0]], np.int32)
    segments = np.asarray([[0] * 5 + [1] * 4 + [2] * 3 + [0, 0]], np.int32)
    packed = _apply(model, params, row, mask, positions=positions, segment_ids=segments).logits[0]
    np.testing.assert_allclose(packed[:9], alone[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[9:12], alone[1][5:], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(alone[1][5:] - alone[0][5:8]).max()) > 1e-2  # b does not see a
    with pytest.raises(ValueError, match="positions and segment_ids pack rows"):
        cache = transformer_module.init_cache(config, 1, 16)
        _apply(model, params, row, mask, cache=cache, positions=positions)
