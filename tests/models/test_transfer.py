"""The one transfer function (zett and the trainer's setup): FVT, vocabulary surgery,
special-token ids, input-id expansion."""

from pathlib import Path

import numpy as np
import pytest

from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.models import fvt, load_pretrained
from tokenkit.models.surgery import replace_vocabulary
from tokenkit.models.transfer import check_options, transfer, with_special_tokens

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "data" / "models" / "tiny_teacher"
SPECS = {
    "llama3": f"{TEACHER}:source=Llama3",
    "gemma2": f"{REPO}/data/tokenizers/gemma2_sp:source=Gemma2",
    "qwen2": f"{REPO}/data/tokenizers/qwen2_bpe:source=Qwen2",
}


@pytest.fixture(scope="module")
def model():
    return load_pretrained(TEACHER)


@pytest.fixture(scope="module")
def toks():
    return {k: load_byteify_tokenizer(v) for k, v in SPECS.items()}


def test_transfer_equals_fvt_then_surgery_and_sets_the_target_ids(model, toks):
    config, params = model
    result = transfer(config, params, toks["llama3"], toks["gemma2"], seed=3)
    expected = fvt.fvt(toks["llama3"], toks["gemma2"], np.asarray(params["embedder"]["embedding"]), seed=3)
    _, want = replace_vocabulary(config, params, expected.input_embeddings,
                                 tokenizer_size=len(toks["gemma2"]))
    np.testing.assert_array_equal(result.params["embedder"]["embedding"], want["embedder"]["embedding"])
    assert result.stats == expected.stats and result.tokenizer is toks["gemma2"]
    gemma = toks["gemma2"]
    assert result.config.bos_token_id == gemma.bos_token_id
    assert set(result.config.eos_token_id) == set(gemma.convert_tokens_to_ids(["<eos>", "<end_of_turn>"]))
    assert result.config.pad_token_id == gemma.pad_token_id
    assert result.config.vocab_size == 4032 and result.expansion is None


def test_the_same_tokenizer_changes_only_the_ids_unless_asked(model, toks):
    config, params = model
    same = transfer(config, params, toks["llama3"], toks["llama3"])
    assert same.stats is None and same.config.vocab_size == config.vocab_size
    assert same.params["embedder"] is params["embedder"]
    assert same.config.eos_token_id == toks["llama3"].convert_tokens_to_ids("<|eot_id|>")
    untied = transfer(config, params, toks["llama3"], toks["llama3"], output_embeddings_mode="untie")
    assert not untied.config.tie_word_embeddings and "lm_head" in untied.params
    np.testing.assert_array_equal(untied.params["lm_head"]["kernel"][:, :4096],
                                  np.asarray(params["embedder"]["embedding"]).T)


def test_byte_targets_get_the_expansion(model, toks):
    config, params = model
    byte = load_byteify_tokenizer(SPECS["llama3"] + ":conversion=byte")
    result = transfer(config, params, toks["llama3"], byte, expand_input_ids=True)
    table = result.params["expand_embedder"]["embedding"]
    np.testing.assert_array_equal(table[:4096], np.asarray(params["embedder"]["embedding"]))
    assert result.expansion is not None and result.config.vocab_size % 64 == 0
    with pytest.raises(ValueError, match="expand_input_ids needs a target tokenizer different"):
        transfer(config, params, toks["llama3"], toks["llama3"], expand_input_ids=True)


def test_with_special_tokens_per_family(toks):
    config = load_pretrained(TEACHER)[0]
    qwen = with_special_tokens(config, toks["qwen2"])
    assert qwen.bos_token_id is None and qwen.pad_token_id == toks["qwen2"].pad_token_id
    assert set(qwen.eos_token_id) == set(toks["qwen2"].convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(init="random"), "Unknown init 'random'; valid: fvt"),
    (dict(output_embeddings_mode="split"), "valid: preserve, untie"),
    (dict(slot_tokens="none"), "Unknown slot_tokens"),
])
def test_bad_options(kwargs, message):
    options = dict(init="fvt", output_embeddings_mode="preserve", slot_tokens="special") | kwargs
    with pytest.raises(ValueError, match=message):
        check_options(**options)
