"""The model side: one forward pass (expansion, padded-vocabulary mask, LoRA), output
embeddings, and the text rules every evaluation path shares."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.logits import MASKED_LOGIT
from tokenkit.models import LoraConfig, init_lora, init_params, load_pretrained, make_transformer
from tokenkit.models import expand
from tokenkit.models.config import ModelConfig
from tokenkit.models.side import ModelSide, output_embeddings, stop_token_ids

REPO = Path(__file__).resolve().parents[2]
LLAMA3 = f"{REPO}/data/tokenizers/llama3_bpe:source=Llama3"
QWEN2 = f"{REPO}/data/tokenizers/qwen2_bpe:source=Qwen2"
GEMMA2 = f"{REPO}/data/tokenizers/gemma2_sp:source=Gemma2"


def _config(vocab: int, tie: bool = True) -> ModelConfig:
    return ModelConfig(architecture="llama", vocab_size=vocab, hidden_size=16, intermediate_size=32,
                       num_layers=2, num_heads=4, num_kv_heads=2, head_dim=4,
                       max_position_embeddings=256, tie_word_embeddings=tie)


@pytest.fixture(scope="module")
def llama():
    return load_byteify_tokenizer(LLAMA3)


def test_forward_masks_exactly_the_padded_rows(llama):
    config = _config(4160)  # 64 rows beyond the tokenizer's 4096
    side = ModelSide.create(config, llama)
    params = init_params(side.module, 0)
    ids = jnp.asarray([[llama.bos_token_id, 5, 6, 7]])
    mask = jnp.ones_like(ids)
    raw = side.module.apply({"params": params}, ids, mask).logits
    out = side.forward(params, ids, mask).logits
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out[..., :4096], raw[..., :4096])
    assert (out[..., 4096:] == MASKED_LOGIT).all()
    assert float(jax.nn.softmax(out, -1)[..., 4096:].max()) == 0.0
    # No padding: nothing is masked.
    unpadded = ModelSide.create(_config(4096), llama)
    p2 = init_params(unpadded.module, 0)
    np.testing.assert_array_equal(unpadded.forward(p2, ids, mask).logits,
                                  unpadded.module.apply({"params": p2}, ids, mask).logits)


def test_forward_is_a_hashable_value_shared_by_equal_sides(llama):
    a = ModelSide.create(_config(4160), llama, name="a")
    b = ModelSide.create(_config(4160), llama, name="b")
    assert a.forward == b.forward and hash(a.forward) == hash(b.forward)
    assert a.forward != ModelSide.create(_config(4224), llama).forward


def test_forward_applies_the_expansion_and_lora(llama):
    byte = load_byteify_tokenizer(LLAMA3 + ":conversion=byte")
    expansion = expand.build_expansion(byte, llama)
    config = _config(320)
    side = ModelSide.create(config, byte, expansion=expansion, lora_alpha=2.0)
    params = init_params(side.module, 1)
    old = np.random.default_rng(0).normal(size=(len(llama), 16)).astype(np.float32)
    params["expand_embedder"] = {"embedding": jnp.asarray(expansion.embedding_table(old))}
    ids = jnp.asarray([byte.encode("Hello world", add_special_tokens=True)])
    mask = jnp.ones_like(ids)
    got = side.forward(params, ids, mask, expansion=side.expansion).logits
    explicit = side.module.apply({"params": params}, ids, mask,
                                 expanded_input_ids=expansion.apply(ids, mask)).logits
    np.testing.assert_allclose(got[..., : len(byte)], explicit[..., : len(byte)], rtol=1e-6)
    plain = side.forward(params, ids, mask).logits
    assert float(jnp.abs(plain - got).max()) > 1e-3  # the expansion is used
    lora = init_lora(jax.random.key(0), config, LoraConfig(rank=2, targets=("query",)))
    lora = jax.tree.map(lambda x: x + 0.5, lora)
    with_lora = side.forward(params, ids, mask, lora=lora, expansion=side.expansion).logits
    assert float(jnp.abs(with_lora - got).max()) > 1e-4


def test_output_embeddings_follow_the_tying(llama):
    tied = ModelSide.create(_config(4096), llama)
    params = init_params(tied.module, 0)
    assert tied.output_embeddings(params) is params["embedder"]["embedding"]
    untied_config = _config(4096, tie=False)
    untied = init_params(make_transformer(untied_config), 0)
    np.testing.assert_array_equal(output_embeddings(untied_config, untied), untied["lm_head"]["kernel"].T)


def test_text_rules(llama):
    qwen = load_byteify_tokenizer(QWEN2)
    side = ModelSide.create(_config(4096), llama)
    assert side.encode("hi")[0] == llama.bos_token_id == side.prefix_id == side.bos_id
    assert side.encode("<|<bos>|>hi", bos=False)[0] != llama.bos_token_id
    assert side.stop_ids == (llama.convert_tokens_to_ids("<|eot_id|>"),)
    qwen_side = ModelSide.create(_config(3008), qwen, add_bos=True)
    assert qwen_side.bos_id is None and qwen_side.prefix_id == qwen.eos_token_id
    assert stop_token_ids(qwen) == tuple(sorted(qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])))
    gemma = load_byteify_tokenizer(GEMMA2)
    assert set(stop_token_ids(gemma)) == set(gemma.convert_tokens_to_ids(["<eos>", "<end_of_turn>"]))
    with pytest.raises(ValueError, match="has 4096 ids but the model .* only 1000 embedding rows"):
        ModelSide.create(_config(1000), llama)


def test_a_shipped_model_scores_the_same_through_its_side(llama):
    config, params = load_pretrained(REPO / "data" / "models" / "tiny_teacher")
    side = ModelSide.create(config, llama)
    ids = jnp.asarray([side.encode("The river runs past the old mill.")])
    logits = side.forward(params, ids, jnp.ones_like(ids)).logits
    assert bool(jnp.isfinite(logits).all()) and logits.shape == (1, ids.shape[1], 4096)
