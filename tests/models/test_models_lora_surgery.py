"""LoRA adapters, merging, trainable masks; vocabulary replacement, untying, padding."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokenkit.logits import mask_padded_vocab, vocab_mask
from tokenkit.models import (
    LoraConfig,
    Transformer,
    embedding_matrices,
    init_lora,
    load_pretrained,
    merge_lora,
    padded_size,
    replace_vocabulary,
    save_pretrained,
    trainable_mask,
    trim_vocabulary,
)

import torch  # noqa: E402  (a test dependency)
import transformers  # noqa: E402


def _logits(model, variables, ids, mask):
    return np.asarray(jax.jit(lambda v: model.apply(v, ids, mask).logits)(variables))


def _batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, 7)).astype(np.int32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32)
    return ids * mask, mask


@pytest.fixture(scope="module")
def gemma3(hf_checkpoints):
    path, _ = hf_checkpoints("gemma3")
    return load_pretrained(path)


def _random_b(lora_params, seed=1):
    keys = iter(jax.random.split(jax.random.key(seed), 32))
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jax.random.normal(next(keys), x.shape) * 0.3
        if getattr(path[-1], "key", None) == "b" else x,
        lora_params,
    )


def test_lora_starts_as_identity_and_merges_exactly(gemma3):
    config, params = gemma3
    lcfg = LoraConfig(rank=4, alpha=8.0)
    lora = init_lora(jax.random.key(0), config, lcfg)
    assert lora["layers"]["attention"]["query"]["a"].shape == (3, 32, 4)
    assert lora["layers"]["mlp"]["down"]["b"].shape == (3, 4, 32)
    ids, mask = _batch(config.vocab_size)
    model = Transformer(config, lora_alpha=lcfg.alpha)
    base = _logits(model, {"params": params}, ids, mask)
    np.testing.assert_allclose(_logits(model, {"params": params, "lora": lora}, ids, mask), base, atol=1e-5)

    trained = _random_b(lora)
    adapted = _logits(model, {"params": params, "lora": trained}, ids, mask)
    real = mask.astype(bool)
    assert np.abs(adapted - base)[real].max() > 1e-2
    merged = merge_lora(params, trained, alpha=lcfg.alpha)
    np.testing.assert_allclose(
        _logits(Transformer(config), {"params": merged}, ids, mask)[real], adapted[real], atol=1e-4
    )
    # Merged params export like any other.
    assert merged["layers"]["attention"]["query"]["kernel"].shape == (3, 32, 4, 8)


def test_lora_targets_and_errors(gemma3):
    config, params = gemma3
    lora = init_lora(jax.random.key(0), config, LoraConfig(rank=2, targets=("value", "up")))
    assert set(lora["layers"]["attention"]) == {"value"} and set(lora["layers"]["mlp"]) == {"up"}
    with pytest.raises(ValueError, match=r"Unknown LoRA target\(s\) \['q_proj'\] \(valid: query, key"):
        LoraConfig(targets=("q_proj",))
    ids, mask = _batch(config.vocab_size)
    with pytest.raises(ValueError, match="lora_alpha"):
        Transformer(config).apply({"params": params, "lora": lora}, ids, mask)


def test_trainable_masks_select_the_right_leaves(gemma3):
    config, params = gemma3
    lora = init_lora(jax.random.key(0), config, LoraConfig(rank=2, targets=("query",)))
    with_expand = {**params, "expand_embedder": {"embedding": jnp.zeros((5, 32))}}
    variables = {"params": with_expand, "lora": lora}

    def trained(mask):
        flat = jax.tree_util.tree_flatten_with_path(mask)[0]
        return {jax.tree_util.keystr(p) for p, v in flat if v}

    full = trained(trainable_mask(variables, "full"))
    assert "['params']['layers']['mlp']['up']['kernel']" in full
    assert not any("expand_embedder" in k for k in full)
    assert trained(trainable_mask(variables, "lora")) == {
        "['lora']['layers']['attention']['query']['a']", "['lora']['layers']['attention']['query']['b']"
    }
    assert trained(trainable_mask(variables, "lora", train_embeddings=True)) - trained(
        trainable_mask(variables, "lora")
    ) == {"['params']['embedder']['embedding']"}  # tied model: no lm_head
    assert trained(trainable_mask({"params": params}, "embeddings")) == {
        "['params']['embedder']['embedding']"
    }
    with pytest.raises(ValueError, match="valid: full, lora, embeddings"):
        trainable_mask(variables, "everything")
    with pytest.raises(ValueError, match="needs a 'lora' collection"):
        trainable_mask({"params": params}, "lora")

    # The mask drives optax.masked: only selected leaves move.
    mask = trainable_mask(variables, "lora")
    opt = optax.masked(optax.sgd(1.0), mask)
    grads = jax.tree.map(jnp.ones_like, variables)
    updates, _ = opt.update(grads, opt.init(variables), variables)
    new = optax.apply_updates(variables, updates)
    assert not np.array_equal(new["lora"]["layers"]["attention"]["query"]["b"], lora["layers"]["attention"]["query"]["b"])


def test_replace_vocabulary_pads_and_keeps_tied_models_tied(gemma3):
    config, params = gemma3
    new_rows = np.random.default_rng(0).normal(size=(100, 32)).astype(np.float32)
    cfg2, p2 = replace_vocabulary(config, params, new_rows, tokenizer_size=100)
    assert cfg2.vocab_size == 128 == padded_size(100, 64) and cfg2.tie_word_embeddings
    emb = np.asarray(p2["embedder"]["embedding"])
    np.testing.assert_array_equal(emb[:100], new_rows)
    assert not emb[100:].any() and "lm_head" not in p2
    assert p2["layers"] is params["layers"]  # the rest is shared, not copied
    ids, mask = _batch(100)
    logits = _logits(Transformer(cfg2), {"params": p2}, ids, mask)
    assert logits.shape == (2, 7, 128)
    masked = mask_padded_vocab(logits, vocab_mask(100, 128))
    assert np.all(jnp.argmax(masked, -1) < 100)


def test_untie_builds_an_lm_head_and_exports(gemma3, tmp_path):
    config, params = gemma3
    inputs, outputs = embedding_matrices(config, params)
    assert outputs is None
    cfg2, p2 = replace_vocabulary(config, params, inputs[:90], output_embeddings_mode="untie",
                                  pad_to_multiple_of=32)
    assert not cfg2.tie_word_embeddings and cfg2.vocab_size == 96
    np.testing.assert_array_equal(np.asarray(p2["lm_head"]["kernel"]).T[:90], np.asarray(inputs[:90]))
    ids, mask = _batch(90)
    # Untied with identical rows: same logits on the real vocabulary as the tied original.
    ref = _logits(Transformer(config), {"params": params}, ids, mask)[..., :90]
    got = _logits(Transformer(cfg2), {"params": p2}, ids, mask)[..., :90]
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], ref[real], atol=1e-4)

    cfg3, p3 = trim_vocabulary(cfg2, p2, 90)
    save_pretrained(tmp_path, cfg3, p3)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.vocab_size == 90 and not hf.config.tie_word_embeddings
    with torch.no_grad():
        hf_logits = hf(input_ids=torch.from_numpy(ids.astype(np.int64)),
                       attention_mask=torch.from_numpy(mask.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(hf_logits[real], ref[real], atol=1e-4)


def test_vocabulary_errors(gemma3):
    config, params = gemma3
    rows = np.zeros((50, 32), np.float32)
    with pytest.raises(ValueError, match="tokenizer has 60 tokens but the embedding matrix only 50 rows"):
        replace_vocabulary(config, params, rows, tokenizer_size=60)
    with pytest.raises(ValueError, match="ties its embeddings"):
        replace_vocabulary(config, params, rows, rows)
    with pytest.raises(ValueError, match="valid: preserve, untie"):
        replace_vocabulary(config, params, rows, output_embeddings_mode="copy")
    untied = dataclasses.replace(config, tie_word_embeddings=False)
    with pytest.raises(ValueError, match="separate lm_head"):
        replace_vocabulary(untied, {**params, "lm_head": {"kernel": np.zeros((32, 97))}}, rows)
    with pytest.raises(ValueError, match="width 16"):
        replace_vocabulary(config, params, np.zeros((50, 16)))
    with pytest.raises(ValueError, match="Cannot trim"):
        trim_vocabulary(config, params, 1000)
