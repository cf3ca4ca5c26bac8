"""Numerical parity with transformers' PyTorch models, both directions, and KV-cache decoding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tokenkit.models import Transformer, init_cache, load_pretrained, save_pretrained

import transformers  # noqa: E402

# Same list as conftest.MODEL_NAMES (parametrize needs it at collection time).
MODEL_NAMES = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "phi3")
TOL = 1e-4
LENGTHS = (10, 7, 4)  # longer than the sliding window (4) of the windowed models


def _ours(path):
    config, params = load_pretrained(path)
    return config, params, Transformer(config)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_and_hidden_states_match_transformers(name, hf_checkpoints, tiny_hf):
    path, hf_model = hf_checkpoints(name)
    config, params, model = _ours(path)
    ids, mask = tiny_hf.right_padded_batch(config.vocab_size, LENGTHS, 10)
    ref_logits, ref_hidden = tiny_hf.hf_forward(hf_model, ids, mask)

    out = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, output_hidden_states=True))(
        params, ids, mask
    )
    real = mask.astype(bool)
    logits = np.asarray(out.logits)
    assert np.abs(ref_logits).max() > 0.5, "test model too small to be informative"
    diff = np.abs(logits - ref_logits)[real].max()
    assert diff <= TOL, f"{name}: max |logit diff| {diff:.2e}"

    hidden = np.asarray(out.hidden_states)
    assert hidden.shape[0] == len(ref_hidden) == config.num_layers + 1
    for i, ref in enumerate(ref_hidden):
        scale = max(1.0, np.abs(ref[real]).max())
        err = np.abs(hidden[i] - ref)[real].max() / scale
        assert err <= TOL, f"{name}: hidden state {i} differs by {err:.2e} (relative)"


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma2", "gemma3", "gpt2", "phi3"])
def test_saved_checkpoint_loads_in_transformers(name, hf_checkpoints, tiny_hf, tmp_path):
    path, hf_model = hf_checkpoints(name)
    config, params, _ = _ours(path)
    save_pretrained(tmp_path, config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager"
    ).eval()
    ids, mask = tiny_hf.right_padded_batch(config.vocab_size, LENGTHS, 10, seed=1)
    ref, _ = tiny_hf.hf_forward(hf_model, ids, mask)
    got, _ = tiny_hf.hf_forward(reloaded, ids, mask)
    real = mask.astype(bool)
    assert np.abs(got - ref)[real].max() <= TOL
    assert reloaded.config.tie_word_embeddings == config.tie_word_embeddings


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_kv_cache_decoding_matches_full_forward(name, hf_checkpoints):
    path, _ = hf_checkpoints(name)
    config, params, model = _ours(path)
    total = 11
    prompt_lengths = np.array([6, 3, 5])
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, config.vocab_size, size=(3, total)).astype(np.int32)
    full = np.asarray(
        jax.jit(lambda p, i: model.apply({"params": p}, i).logits)(params, tokens)
    )

    step = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, m, cache=c))
    width = prompt_lengths.max()
    prompt = np.where(np.arange(width)[None] < prompt_lengths[:, None], tokens[:, :width], 0)
    prompt_mask = (np.arange(width)[None] < prompt_lengths[:, None]).astype(np.int32)
    out = step(params, prompt, prompt_mask, init_cache(config, 3, 16))
    rows = np.arange(3)
    for b in rows:
        n = prompt_lengths[b]
        np.testing.assert_allclose(np.asarray(out.logits)[b, :n], full[b, :n], atol=TOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(out.cache.lengths), prompt_lengths)

    cache, pos = out.cache, prompt_lengths.copy()
    for chunk in (1, 1, 2, 1):  # one and several tokens per step
        idx = pos[:, None] + np.arange(chunk)[None]
        out = step(params, tokens[rows[:, None], idx], np.ones((3, chunk), np.int32), cache)
        np.testing.assert_allclose(
            np.asarray(out.logits), full[rows[:, None], idx], atol=TOL, rtol=0,
            err_msg=f"{name}: decoding positions {idx.tolist()}",
        )
        cache, pos = out.cache, pos + chunk
    np.testing.assert_array_equal(np.asarray(cache.lengths), pos)
