"""GPT-2 and Phi-3 specifics: LongRoPE, fused HF tensors, learned positions, refusals.

The generic parity, KV-cache and round-trip tests cover `gpt2` and `phi3` (plain RoPE)
with the other architectures (test_models_parity.py); this module covers what only these
two have. `phi3_longrope` switches to its long factors past 8 tokens (conftest).
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tokenkit.models import (
    LoraConfig,
    Transformer,
    UnsupportedConfigError,
    embed_tokens,
    from_hf_dict,
    init_cache,
    init_lora,
    load_pretrained,
    merge_lora,
    save_pretrained,
    to_hf_dict,
)

import torch  # noqa: E402  (a test dependency: parity with the PyTorch models)
import transformers  # noqa: E402

TOL = 1e-4


def _forward(model, params, ids, mask, **kwargs):
    return jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, **kwargs))(params, ids, mask)


def _hf_last_logits(hf_model, row: np.ndarray) -> np.ndarray:
    """transformers' logits of one unpadded row (what its generation sees at each step)."""
    with torch.no_grad():
        out = hf_model(input_ids=torch.from_numpy(row[None].astype(np.int64)))
    return out.logits[0].numpy()


# --------------------------------------------------------------------------------------
# LongRoPE


def test_longrope_config_is_read_as_transformers_runs_it(hf_checkpoints):
    path, hf_model = hf_checkpoints("phi3_longrope")
    config, _ = load_pretrained(path)
    rope = config.rope
    assert (rope.kind, rope.original_max_position_embeddings) == ("longrope", 8)
    assert rope.short_factor == (1.0, 1.3, 2.0) and rope.long_factor == (1.5, 4.0, 9.0)
    assert (config.partial_rotary_factor, config.rotary_dim, config.tie_word_embeddings) == (0.75, 6, True)
    # transformers' attention factor for max_position 64 / original 8.
    assert rope.attention_factor == pytest.approx(hf_model.model.rotary_emb.attention_scaling)
    np.testing.assert_allclose(
        rope.inv_freq(6), hf_model.model.rotary_emb.original_inv_freq.numpy(), rtol=1e-6
    )
    # The old spellings "su" and "yarn" are LongRoPE for Phi-3, as in transformers.
    hf = json.loads((path / "config.json").read_text())
    for alias in ("su", "yarn"):
        old = {**hf, "rope_scaling": {**hf["rope_parameters"], "type": alias, "rope_type": alias}}
        old.pop("rope_parameters")
        assert from_hf_dict(old).rope == rope


@pytest.mark.parametrize("lengths", [(10, 10, 9), (7, 5, 3)], ids=["long", "short"])
def test_longrope_logits_match_transformers_on_padded_batches(lengths, hf_checkpoints, tiny_hf):
    path, hf_model = hf_checkpoints("phi3_longrope")
    config, params = load_pretrained(path)
    ids, mask = tiny_hf.right_padded_batch(config.vocab_size, lengths, max(lengths))
    ref, ref_hidden = tiny_hf.hf_forward(hf_model, ids, mask)
    out = _forward(Transformer(config), params, ids, mask, output_hidden_states=True)
    real = mask.astype(bool)
    assert np.abs(ref).max() > 0.5
    assert np.abs(np.asarray(out.logits) - ref)[real].max() <= TOL
    for i, h in enumerate(ref_hidden):
        err = np.abs(np.asarray(out.hidden_states)[i] - h)[real].max() / max(1.0, np.abs(h[real]).max())
        assert err <= TOL, f"hidden state {i}: {err:.2e}"


def test_longrope_choice_is_per_row(hf_checkpoints, tiny_hf):
    """A short row padded into a long batch keeps its short factors (transformers would
    switch the whole batch on its padded width); each row equals its unpadded forward."""
    path, hf_model = hf_checkpoints("phi3_longrope")
    config, params = load_pretrained(path)
    lengths = (10, 7, 4)
    ids, mask = tiny_hf.right_padded_batch(config.vocab_size, lengths, 10)
    logits = np.asarray(_forward(Transformer(config), params, ids, mask).logits)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(logits[b, :n], _hf_last_logits(hf_model, ids[b, :n]), atol=TOL, rtol=0)
    padded, _ = tiny_hf.hf_forward(hf_model, ids, mask)
    assert np.abs(padded[1, :7] - logits[1, :7]).max() > 1e-2  # the case that differs


def test_longrope_scoring_keeps_one_sequence_per_row(hf_checkpoints, tiny_hf):
    """LongRoPE picks its factors from a row's length, so scoring neither packs nor shares
    contexts for it: sequences with a common context, on both sides of the switch, each
    score as transformers' unpadded forward does."""
    from tokenkit.evaluation import scoring
    from tokenkit.models.side import Forward

    path, hf_model = hf_checkpoints("phi3_longrope")
    config, params = load_pretrained(path)
    rng = np.random.default_rng(3)
    # 6 and 7 tokens alone are short (LONGROPE_ORIGINAL is 8), 9 long; packed, all long.
    context = list(rng.integers(3, config.vocab_size, 5))
    sequences = [context + list(rng.integers(3, config.vocab_size, n)) for n in (1, 2, 4)]
    sequences.append(list(rng.integers(3, config.vocab_size, 5)))
    starts = [5, 5, 5, 1]
    model = SimpleNamespace(forward=Forward(Transformer(config), config.vocab_size),
                            params=params, pad_id=0, expansion=None, config=config)
    got = scoring.score_sequences(model, sequences, starts, min_shared_prefix=4, buckets=(16,),
                                  show_progress=False)
    for seq, start, score in zip(sequences, starts, got):
        logp = torch.log_softmax(torch.from_numpy(_hf_last_logits(hf_model, np.asarray(seq))), -1)
        want = float(sum(logp[i - 1, seq[i]] for i in range(start, len(seq))))
        assert score.n_tokens == len(seq) - start
        assert score.loglik == pytest.approx(want, rel=TOL, abs=TOL)


def _hf_cached_decode(hf_model, row: np.ndarray, prompt: int, chunks) -> list[np.ndarray]:
    """transformers' logits of one unpadded row: the prompt, then `chunks` of tokens fed
    with its cache (its forward with a cache; `generate` would re-prefill at the switch)."""
    with torch.no_grad():
        out = hf_model(input_ids=torch.from_numpy(row[None, :prompt].astype(np.int64)), use_cache=True)
        logits, pos = [out.logits[0].numpy()], prompt
        for chunk in chunks:
            ids = torch.from_numpy(row[None, pos : pos + chunk].astype(np.int64))
            out = hf_model(input_ids=ids, cache=out.cache, use_cache=True)
            logits.append(out.logits[0].numpy())
            pos += chunk
    return logits


def test_longrope_decoding_matches_transformers_cached_forward(hf_checkpoints):
    """Prompts below the original length of 8, decoded past it (1, 1, 2, 1, 1 tokens per
    call): every call equals transformers' forward with its cache on the unpadded row; the
    rows of the batch switch to the long factors at different calls."""
    path, hf_model = hf_checkpoints("phi3_longrope")
    config, params = load_pretrained(path)
    model = Transformer(config)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, config.vocab_size, size=(3, 12)).astype(np.int32)
    prompt_lengths = np.array([6, 3, 5])
    chunks = (1, 1, 2, 1, 1)
    width = prompt_lengths.max()
    prompt_mask = (np.arange(width)[None] < prompt_lengths[:, None]).astype(np.int32)
    step = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, m, cache=c))
    out = step(params, tokens[:, :width] * prompt_mask, prompt_mask, init_cache(config, 3, 16))
    ours = [[np.asarray(out.logits)[b, :n]] for b, n in enumerate(prompt_lengths)]
    cache, pos, rows = out.cache, prompt_lengths.copy(), np.arange(3)
    for chunk in chunks:
        idx = pos[:, None] + np.arange(chunk)[None]
        out = step(params, tokens[rows[:, None], idx], np.ones((3, chunk), np.int32), cache)
        for b in rows:
            ours[b].append(np.asarray(out.logits)[b])
        cache, pos = out.cache, pos + chunk
    assert pos.tolist() == [12, 9, 11]  # every row crossed 8 tokens
    for b, n in enumerate(prompt_lengths):
        ref = _hf_cached_decode(hf_model, tokens[b], n, chunks)
        for call, (got, want) in enumerate(zip(ours[b], ref)):
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=f"row {b}, call {call}")
    # Below the switch, decoding equals a full forward of the prefix; past it the cached
    # prefix keeps its short-factor states, unlike a fresh forward of the whole prefix.
    np.testing.assert_allclose(ours[0][2][-1], _hf_last_logits(hf_model, tokens[0, :8])[-1], atol=TOL, rtol=0)
    assert np.abs(ours[0][3][-1] - _hf_last_logits(hf_model, tokens[0, :9])[-1]).max() > 1e-2


def test_longrope_checkpoint_round_trips_through_transformers(hf_checkpoints, tiny_hf, tmp_path):
    path, hf_model = hf_checkpoints("phi3_longrope")
    config, params = load_pretrained(path)
    save_pretrained(tmp_path, config, params)
    stored = load_file(tmp_path / "model.safetensors")
    original = load_file(path / "model.safetensors")
    assert set(stored) == set(original)  # fused qkv_proj / gate_up_proj, no lm_head (tied)
    for name, value in original.items():
        np.testing.assert_array_equal(stored[name], value, err_msg=name)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.config.rope_parameters["rope_type"] == "longrope"
    assert reloaded.config.original_max_position_embeddings == 8
    ids, mask = tiny_hf.right_padded_batch(config.vocab_size, (10, 9), 10, seed=2)
    got, _ = tiny_hf.hf_forward(reloaded, ids, mask)
    ref, _ = tiny_hf.hf_forward(hf_model, ids, mask)
    assert np.abs(got - ref)[mask.astype(bool)].max() <= TOL
    assert load_pretrained(tmp_path)[0] == config


# --------------------------------------------------------------------------------------
# GPT-2 layout and inputs


def test_gpt2_hub_layout_without_prefix_and_mask_buffers_loads(hf_checkpoints, tmp_path, caplog):
    """The original `gpt2` checkpoint stores GPT2Model's names (no `transformer.`) and the
    causal-mask buffers `h.N.attn.bias`, which transformers skips."""
    path, _ = hf_checkpoints("gpt2")
    config, params = load_pretrained(path)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(path / "model.safetensors").items()}
    for i in range(config.num_layers):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with caplog.at_level("WARNING"):
        config2, params2 = load_pretrained(tmp_path)
    assert "not used" not in caplog.text
    assert config2 == config
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gpt2_expansion_and_inputs_embeds_get_position_embeddings(hf_checkpoints, tiny_hf):
    path, hf_model = hf_checkpoints("gpt2")
    config, params = load_pretrained(path)
    assert params["position_embedder"]["embedding"].shape == (64, 32)
    model = Transformer(config)
    ids, mask = tiny_hf.right_padded_batch(config.vocab_size, (9, 6), 9)
    rng = np.random.default_rng(5)
    extra = rng.normal(size=(20, config.hidden_size)).astype(np.float32)
    expanded = rng.integers(0, 20, ids.shape).astype(np.int32)
    with_table = {**params, "expand_embedder": {"embedding": extra}}
    a = _forward(model, with_table, ids, mask, expanded_input_ids=expanded).logits
    embeds = embed_tokens(config, params["embedder"]["embedding"], ids, extra, expanded)
    b = jax.jit(lambda p, i, m, e: model.apply({"params": p}, i, m, inputs_embeds=e).logits)(
        params, ids, mask, embeds
    )
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    with torch.no_grad():  # transformers adds its position embeddings to inputs_embeds too
        ref = hf_model(inputs_embeds=torch.from_numpy(np.array(embeds)),
                       attention_mask=torch.from_numpy(mask.astype(np.int64))).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(np.asarray(a) - ref)[real].max() <= TOL
    plain = _forward(model, params, ids, mask).logits
    assert np.abs(np.asarray(plain) - np.asarray(a))[real].max() > 1e-2  # the table was used
    remat = _forward(Transformer(config, remat_policy="full"), params, ids, mask).logits
    np.testing.assert_allclose(np.asarray(remat), np.asarray(plain), atol=1e-5)


@pytest.mark.parametrize(
    "name", ["llama", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "phi3", "phi3_longrope"]
)
def test_parameter_count_matches_transformers(name, hf_checkpoints):
    path, hf_model = hf_checkpoints(name)
    config, params = load_pretrained(path)
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    theirs = sum(p.numel() for p in hf_model.parameters())
    assert config.num_params() == ours == theirs


# --------------------------------------------------------------------------------------
# LoRA (sharded loading and forward: test_models_sharding.py)


@pytest.mark.parametrize("name", ["gpt2", "phi3"])
def test_lora_on_split_projections_merges_and_exports_fused(name, hf_checkpoints, tiny_hf, tmp_path):
    path, _ = hf_checkpoints(name)
    config, params = load_pretrained(path)
    lcfg = LoraConfig(rank=4, alpha=8.0)
    lora = init_lora(jax.random.key(0), config, lcfg)
    expected = {"query", "key", "value", "out", "up", "down"} | ({"gate"} if name == "phi3" else set())
    assert {n for group in lora["layers"].values() for n in group} == expected
    keys = iter(jax.random.split(jax.random.key(1), 16))
    trained = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(next(keys), x.shape) * 0.3 if p[-1].key == "b" else x, lora
    )
    ids, mask = tiny_hf.right_padded_batch(config.vocab_size, (8, 5), 8)
    model = Transformer(config, lora_alpha=lcfg.alpha)
    adapted = np.asarray(jax.jit(lambda v: model.apply(v, ids, mask).logits)({"params": params, "lora": trained}))
    base = np.asarray(_forward(Transformer(config), params, ids, mask).logits)
    real = mask.astype(bool)
    assert np.abs(adapted - base)[real].max() > 1e-2
    merged = merge_lora(params, trained, alpha=lcfg.alpha)
    np.testing.assert_allclose(
        np.asarray(_forward(Transformer(config), merged, ids, mask).logits)[real], adapted[real], atol=TOL
    )
    save_pretrained(tmp_path, config, merged)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    got, _ = tiny_hf.hf_forward(exported, ids, mask)
    assert np.abs(got - adapted)[real].max() <= TOL


def test_lora_target_missing_from_the_model_is_named(hf_checkpoints):
    config, _ = load_pretrained(hf_checkpoints("gpt2")[0])
    with pytest.raises(ValueError, match=r"\['gate'\] do not exist in gpt2"):
        init_lora(jax.random.key(0), config, LoraConfig(rank=2, targets=("query", "gate")))


# --------------------------------------------------------------------------------------
# Refusals

GPT2 = dict(model_type="gpt2", vocab_size=50, n_embd=16, n_head=2, n_layer=1, n_positions=32)
PHI3 = dict(model_type="phi3", vocab_size=50, hidden_size=16, intermediate_size=32,
            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64)


@pytest.mark.parametrize(
    "hf, message",
    [
        ({**GPT2, "scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True is not supported"),
        ({**GPT2, "reorder_and_upcast_attn": True}, r"reorder_and_upcast_attn=True is not supported"),
        ({**GPT2, "add_cross_attention": True}, r"add_cross_attention=True is not supported"),
        ({**GPT2, "scale_attn_weights": False}, r"scale_attn_weights=False is not supported"),
        ({**GPT2, "activation_function": "relu"}, r"Activation 'relu' is not supported"),
        ({**PHI3, "rope_scaling": {"type": "linear", "factor": 2.0}},
         r"'linear' is not supported \(supported for phi3: default, longrope\)"),
        ({**PHI3, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, r"'dynamic' is not supported"),
        ({**PHI3, "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 4}}, r"longrope RoPE without long_factor"),
        ({**PHI3, "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 3}},
         r"longrope factors have 3 entries; the rotary dimension 8 needs 4"),
        ({**PHI3, "partial_rotary_factor": 0.375}, r"partial_rotary_factor=0.375 gives rotary dimension 3 of head_dim 8"),
    ],
)
def test_unsupported_gpt2_and_phi3_settings_are_refused_by_name(hf, message):
    with pytest.raises(UnsupportedConfigError, match=message):
        from_hf_dict(hf)


def test_configs_a_family_cannot_write_are_refused_by_name():
    gpt2 = from_hf_dict(GPT2)
    with pytest.raises(UnsupportedConfigError, match=r"gpt2 config.json cannot express: num_kv_heads=1"):
        to_hf_dict(dataclasses.replace(gpt2, num_kv_heads=1))
    with pytest.raises(UnsupportedConfigError, match=r"gated_mlp=True \(must be False\)"):
        to_hf_dict(dataclasses.replace(gpt2, gated_mlp=True))
    phi3 = from_hf_dict(PHI3)
    with pytest.raises(UnsupportedConfigError, match=r"phi3 config.json cannot express: qkv_bias=True"):
        to_hf_dict(dataclasses.replace(phi3, qkv_bias=True))
    with pytest.raises(UnsupportedConfigError, match=r"norm_kind='layer' \(must be 'rms'\)"):
        to_hf_dict(dataclasses.replace(phi3, architecture="llama", norm_kind="layer"))
    longrope = from_hf_dict({**PHI3, "rope_scaling": {
        "type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}}).rope
    with pytest.raises(UnsupportedConfigError, match=r"'longrope' is not supported for llama"):
        dataclasses.replace(phi3, architecture="llama", rope=longrope)
