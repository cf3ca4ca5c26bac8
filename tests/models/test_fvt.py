"""FVT on the tiny-world tokenizers: statistics, slot copies, exact and averaged rows,
fallback draws, untied output embeddings, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tokenizers
from tokenizers import models as tk_models
from tokenizers import pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tokenkit import byteify, constants, families
from tokenkit.models import fvt

D = 6


@pytest.fixture(scope="module")
def toks(tiny_tokenizer_specs):
    specs = dict(tiny_tokenizer_specs)
    specs["llama3_byte"] = specs["llama3_bpe"] + ":conversion=byte"
    specs["qwen3_bpe"] = specs["qwen2_bpe"].replace("source=Qwen2", "source=Qwen3")
    return {name: byteify.load_byteify_tokenizer(spec) for name, spec in specs.items()}


def _embeddings(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, D)).astype(np.float32)


@pytest.fixture(scope="module")
def llama_to_gemma(toks):
    source = _embeddings(len(toks["llama3_bpe"]))
    mapping = fvt.fvt_mapping(toks["llama3_bpe"], toks["gemma2_sp"], len(source), show_progress=False)
    result = fvt.fvt(toks["llama3_bpe"], toks["gemma2_sp"], source, seed=0, show_progress=False)
    return source, mapping, result


def _row(tok, token: str) -> int:
    return tok.convert_tokens_to_ids(token)


def test_statistics_llama3_to_gemma2(llama_to_gemma, toks):
    _, mapping, result = llama_to_gemma
    stats = result.stats
    assert stats == mapping.stats
    assert stats.total == len(toks["gemma2_sp"]) == 4000
    # Gemma2's five special tokens all have a Llama3 slot counterpart; every other
    # token is either spelled identically or decomposable (Llama3's BPE has all bytes).
    assert stats.special == 5 and stats.fallback == 0
    # The committed tiny world (fixed by data/tokenizers/SHA256SUMS):
    assert (stats.exact, stats.averaged) == (1949, 2046)
    assert int((mapping.copy_from >= 0).sum()) == stats.special + stats.exact
    assert mapping.average.getnnz(axis=1).astype(bool).sum() == stats.averaged
    assert str(stats).startswith("special=5 exact=1949 averaged=2046 fallback=0")


def test_statistics_llama3_to_bytes(toks):
    stats = fvt.fvt_mapping(toks["llama3_bpe"], toks["llama3_byte"], 4096, show_progress=False).stats
    # 256 bytes and the template words (ĊĊ, system, user, assistant) exist in Llama3's
    # vocabulary; its five special tokens are copied slot to slot.
    assert stats.as_dict() == dict(special=5, exact=260, averaged=0, fallback=0, total=265)


def test_special_slots_copy_rows(llama_to_gemma, toks):
    source, _, result = llama_to_gemma
    llama, gemma = toks["llama3_bpe"], toks["gemma2_sp"]
    for gemma_token, llama_token in [
        ("<bos>", "<|begin_of_text|>"),
        ("<pad>", "<|end_of_text|>"),
        ("<start_of_turn>", "<|start_header_id|>"),
        ("<end_of_turn>", "<|eot_id|>"),
        ("<eos>", "<|eot_id|>"),
    ]:
        np.testing.assert_array_equal(
            result.input_embeddings[_row(gemma, gemma_token)], source[_row(llama, llama_token)],
            err_msg=gemma_token,
        )


def test_template_words_are_text_tokens_unless_all_slots_requested(toks):
    llama, gemma = toks["llama3_bpe"], toks["gemma2_sp"]
    source = _embeddings(len(llama))
    newline, user = _row(gemma, "Ċ"), _row(gemma, "user")
    default = fvt.fvt(llama, gemma, source, show_progress=False).input_embeddings
    np.testing.assert_array_equal(default[newline], source[_row(llama, "Ċ")])
    np.testing.assert_array_equal(default[user], source[_row(llama, "user")])
    upstream = fvt.fvt(llama, gemma, source, slot_tokens="all", show_progress=False).input_embeddings
    # Upstream behaviour: Gemma's newline fills the end_header slot, its `user` the
    # system_name slot (more important than user_name), so they copy those rows.
    np.testing.assert_array_equal(upstream[newline], source[_row(llama, "<|end_header_id|>")])
    np.testing.assert_array_equal(upstream[user], source[_row(llama, "system")])


def test_most_important_slot_wins_on_collisions(toks):
    # Qwen3's <|endoftext|> is bos, pad and eos; from Gemma it must take <bos>'s row.
    gemma, qwen3 = toks["gemma2_sp"], toks["qwen3_bpe"]
    copies = fvt.slot_copies(gemma.family, qwen3.family)
    assert copies["<|endoftext|>"] == "<bos>"
    source = _embeddings(len(gemma))
    out = fvt.fvt(gemma, qwen3, source, show_progress=False).input_embeddings
    np.testing.assert_array_equal(out[_row(qwen3, "<|endoftext|>")], source[_row(gemma, "<bos>")])
    np.testing.assert_array_equal(out[_row(qwen3, "<|im_end|>")], source[_row(gemma, "<end_of_turn>")])


def test_exact_matches_copy_the_row(llama_to_gemma, toks):
    source, mapping, result = llama_to_gemma
    llama, gemma, llama_vocab = toks["llama3_bpe"], toks["gemma2_sp"], toks["llama3_bpe"].get_vocab()
    checked = 0
    # Every id, not get_vocab(): Gemma's byte-fallback pieces (<0x41>) share spellings
    # with real pieces (A) and are exact matches too.
    for gemma_id in range(len(gemma)):
        token = gemma.convert_ids_to_tokens(gemma_id)
        if gemma_id in gemma.all_special_ids or token not in llama_vocab:
            continue
        np.testing.assert_array_equal(result.input_embeddings[gemma_id], source[llama_vocab[token]])
        checked += 1
    assert checked == mapping.stats.exact
    assert checked > 1000
    np.testing.assert_array_equal(
        result.input_embeddings[_row(gemma, "Ġthe")], source[_row(llama, "Ġthe")]
    )


def test_averaged_tokens_are_the_mean_of_their_decomposition(llama_to_gemma, toks):
    source, mapping, result = llama_to_gemma
    llama, gemma = toks["llama3_bpe"], toks["gemma2_sp"]
    llama_vocab = llama.get_vocab()
    averaged = [
        i for i in range(len(gemma))
        if mapping.copy_from[i] < 0 and not mapping.fallback[i]
    ]
    assert len(averaged) == mapping.stats.averaged
    multi_part = 0
    for i in averaged[::7]:
        token = gemma.convert_ids_to_tokens(i)
        assert token not in llama_vocab
        parts = llama.convert_tokens_to_ids(llama.backend_tokenize(token))
        assert "".join(llama.convert_ids_to_tokens(parts)) == token
        multi_part += len(parts) > 1
        np.testing.assert_allclose(
            result.input_embeddings[i], source[parts].mean(axis=0), rtol=1e-5, atol=1e-6,
            err_msg=token,
        )
    assert multi_part > 100


def _ascii_only_tokenizer() -> byteify.ByteifyTokenizer:
    """A byte-level BPE over printable ASCII only (no merges): it cannot spell most
    non-ASCII text, so FVT from it needs its fallback."""
    vocab = {constants.BYTE_CHARS[b]: i for i, b in enumerate(range(32, 127))}
    backend = tokenizers.Tokenizer(tk_models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf = PreTrainedTokenizerFast(tokenizer_object=backend)
    hf.add_tokens(["<|endoftext|>"], special_tokens=True)
    return byteify.ByteifyTokenizer(hf, families.GPT2)


def test_fallback_rows_are_seeded_draws_from_the_source_statistics(toks):
    source_tok = _ascii_only_tokenizer()
    gemma = toks["gemma2_sp"]
    source = (np.random.default_rng(3).normal(size=(len(source_tok), D)) * 2.0 + 5.0).astype(np.float32)
    first = fvt.fvt(source_tok, gemma, source, seed=11, show_progress=False)
    again = fvt.fvt(source_tok, gemma, source, seed=11, show_progress=False)
    other = fvt.fvt(source_tok, gemma, source, seed=12, show_progress=False)
    np.testing.assert_array_equal(first.input_embeddings, again.input_embeddings)
    mapping = fvt.fvt_mapping(source_tok, gemma, len(source), show_progress=False)
    assert first.stats == mapping.stats and first.stats.fallback > 100
    fallback = mapping.fallback
    assert not np.allclose(first.input_embeddings[fallback], other.input_embeddings[fallback])
    np.testing.assert_array_equal(first.input_embeddings[~fallback], other.input_embeddings[~fallback])
    drawn = first.input_embeddings[fallback]
    n = len(drawn)
    np.testing.assert_allclose(drawn.mean(0), source.mean(0), atol=6 * source.std(0).max() / np.sqrt(n))
    np.testing.assert_allclose(drawn.std(0), source.std(0), rtol=0.25)
    # "ö" is not ASCII: no decomposition at all.
    assert fallback[gemma.convert_tokens_to_ids(constants.bytes_to_chars("ö".encode()))]


def test_untied_output_embeddings_get_the_same_mapping(toks):
    llama, gemma = toks["llama3_bpe"], toks["gemma2_sp"]
    inputs, outputs = _embeddings(len(llama), 1), _embeddings(len(llama), 2)
    result = fvt.fvt(llama, gemma, inputs, output_embeddings=outputs, show_progress=False)
    alone = fvt.fvt(llama, gemma, outputs, show_progress=False)
    assert result.output_embeddings.shape == (len(gemma), D)
    np.testing.assert_array_equal(result.output_embeddings, alone.input_embeddings)
    np.testing.assert_array_equal(
        result.output_embeddings[_row(gemma, "<bos>")], outputs[_row(llama, "<|begin_of_text|>")]
    )
    assert not np.allclose(result.output_embeddings, result.input_embeddings)


def test_dtype_and_padded_source_rows(toks):
    llama, gemma = toks["llama3_bpe"], toks["gemma2_sp"]
    import ml_dtypes

    source = _embeddings(len(llama) + 64).astype(ml_dtypes.bfloat16)  # vocabulary padding rows
    result = fvt.fvt(llama, gemma, source, show_progress=False)
    assert result.input_embeddings.dtype == source.dtype
    assert result.input_embeddings.shape == (len(gemma), D)
    exact = fvt.fvt(llama, gemma, source[:, :].astype(np.float32), show_progress=False)
    np.testing.assert_allclose(
        result.input_embeddings.astype(np.float32), exact.input_embeddings, atol=2e-2
    )


def test_tokenizer_larger_than_matrix_is_refused_with_both_sizes(toks):
    with pytest.raises(ValueError, match=r"4096 tokens but the embedding matrix only 100 rows"):
        fvt.fvt(toks["llama3_bpe"], toks["gemma2_sp"], _embeddings(100), show_progress=False)
    with pytest.raises(ValueError, match="Output embeddings have shape"):
        fvt.fvt(toks["llama3_bpe"], toks["gemma2_sp"], _embeddings(4096),
                output_embeddings=_embeddings(4095), show_progress=False)
    with pytest.raises(ValueError, match="valid: special, all"):
        fvt.slot_copies(families.LLAMA3, families.GEMMA2, slot_tokens="some")
