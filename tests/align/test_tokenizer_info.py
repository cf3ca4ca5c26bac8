"""Token counts, cover dicts and pair biases, edit distances and the MinED mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from tokenkit import families, tokenizer_info
from tokenkit.byteify import ByteifyTokenizer, load_byteify_tokenizer


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def tiny_bpe(merges: list[tuple[str, str]]) -> ByteifyTokenizer:
    """A byte-level BPE over the letters a-c with the given merges (GPT2 family)."""
    vocab = {c: i for i, c in enumerate("abc")}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    model = tokenizers.models.BPE(vocab=vocab, merges=merges)
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.add_special_tokens(["<|endoftext|>"])
    return ByteifyTokenizer(PreTrainedTokenizerFast(tokenizer_object=backend), families.get_family("GPT2"))


@settings(max_examples=200, deadline=None)
@given(source=st.text("abcĠ", max_size=8), targets=st.lists(st.text("abcĠ", min_size=3, max_size=3), min_size=1, max_size=6))
def test_edit_distances_match_the_textbook_program(source, targets):
    codes = np.array([[ord(c) for c in t] for t in targets], np.int32)
    np.testing.assert_array_equal(
        tokenizer_info.edit_distances(source, codes), [levenshtein(source, t) for t in targets]
    )


def test_cover_dicts_and_pair_bias_by_hand():
    rich = tiny_bpe([("a", "b"), ("ab", "c"), ("b", "c")])  # a b c ab abc bc
    poor = tiny_bpe([("a", "b")])  # a b c ab
    covers_rich, covers_poor = tokenizer_info.CoverSets(rich), tokenizer_info.CoverSets(poor)
    ids = rich.convert_tokens_to_ids
    assert covers_rich.cover_dict("a") == {"b": [ids("ab")], "bc": [ids("abc")]}
    assert covers_rich.cover_dict("b") == {"c": [ids("bc")]}
    assert covers_poor.cover_dict("a") == {"b": [poor.convert_tokens_to_ids("ab")]}
    assert covers_poor.cover_dict("b") == {}
    probs_rich = np.arange(len(rich), dtype=float) / 100
    probs_poor = np.arange(len(poor), dtype=float) / 1000
    # "bc" (via abc) only the rich tokenizer can continue "a" with.
    assert tokenizer_info.pair_bias("a", "a", covers_rich, covers_poor, probs_rich, probs_poor) == (
        pytest.approx(probs_rich[ids("abc")]),
        0.0,
    )
    assert tokenizer_info.pair_bias("a", "a", covers_poor, covers_poor, probs_poor, probs_poor) == (0.0, 0.0)


def test_candidate_pairs_are_the_suffix_pairs():
    rich, poor = tiny_bpe([("a", "b"), ("ab", "c"), ("b", "c")]), tiny_bpe([("a", "b")])
    pairs = tokenizer_info.candidate_pairs(rich, poor)
    brute = {
        (x, y) for x in rich.get_vocab() for y in poor.get_vocab() if x.endswith(y) or y.endswith(x)
    }
    assert set(pairs) == brute and len(pairs) == len(brute)
    assert ("abc", "c") in brute and ("bc", "c") in brute and ("ab", "b") in brute


def test_counts_probabilities_and_files(tmp_path, tiny_tokenizer_specs):
    tok = load_byteify_tokenizer(tiny_tokenizer_specs["qwen2_bpe"])
    texts = ["the harbour", "the mill and the harbour"]
    counts = tokenizer_info.count_tokens(texts, tok, batch_size=1)
    expected = np.bincount(sum((tok.encode(t, add_special_tokens=False) for t in texts), []), minlength=len(tok))
    np.testing.assert_array_equal(counts, expected)
    tokenizer_info.save_counts(tmp_path / "c.json", counts)
    np.testing.assert_array_equal(tokenizer_info.load_counts(tmp_path / "c.json", len(tok)), counts)
    (tmp_path / "bad.json").write_text(json.dumps({str(len(tok)): 1}))
    with pytest.raises(ValueError, match=f"token id {len(tok)} is outside the vocabulary"):
        tokenizer_info.load_counts(tmp_path / "bad.json", len(tok))

    probs = tokenizer_info.unigram_probabilities(counts, additive_smoothing=0.0)
    assert probs.sum() == pytest.approx(1.0) and probs[counts == 0].sum() == 0
    special = tok.all_special_ids
    with_special = tokenizer_info.unigram_probabilities(counts, additive_smoothing=0.0, special_ids=special)
    assert with_special[special[0]] == pytest.approx(counts.max() / (counts.sum() + counts.max() * len(special)))
    smoothed = tokenizer_info.unigram_probabilities(counts, additive_smoothing=1e-3)
    assert (smoothed > 0).all()
    with pytest.raises(ValueError, match="All token counts are zero"):
        tokenizer_info.unigram_probabilities(np.zeros(3))
    assert tokenizer_info.record_texts({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) == ["a", "b"]
    assert tokenizer_info.record_texts({"text": "x"}) == ["x"]


def test_whitespace_only():
    assert tokenizer_info.is_whitespace_only("ĠĠ") and tokenizer_info.is_whitespace_only("ĊĉĠ")
    assert not tokenizer_info.is_whitespace_only("Ġa")


def test_mined_mapping_on_the_tiny_world(tiny_tokenizer_specs):
    teacher = load_byteify_tokenizer(tiny_tokenizer_specs["llama3_bpe"])
    student = load_byteify_tokenizer(tiny_tokenizer_specs["gemma2_sp"])
    mapping, distances = tokenizer_info.mined_mapping(teacher, student)
    assert mapping.shape == (len(student),) and mapping.dtype == np.int32
    teacher_vocab = teacher.get_vocab()
    rng = np.random.default_rng(0)
    for student_id in rng.choice(len(student), 60, replace=False):
        token = student.convert_ids_to_tokens(int(student_id))
        mapped = teacher.convert_ids_to_tokens(int(mapping[student_id]))
        if token in teacher_vocab:
            assert mapped == token and distances[token] == 0
        else:
            best = min(levenshtein(token, t) for t in teacher_vocab)
            assert levenshtein(token, mapped) == best == distances[token], token


def test_limit_mined_mapping_marks_far_tokens_and_rejects_another_pair():
    class Vocab:
        tokens = ["a", "ab", "abcd", "xyz"]

        def __len__(self):
            return len(self.tokens)

        def convert_ids_to_tokens(self, i):
            return self.tokens[i]

    mapping = np.array([3, 4, 5, 6], np.int32)
    limited = tokenizer_info.limit_mined_mapping(
        mapping, {"a": 0, "ab": 1, "abcd": 2, "xyz": 3}, Vocab(), max_distance=1)
    np.testing.assert_array_equal(limited, [3, 4, -1, -1])
    np.testing.assert_array_equal(mapping, [3, 4, 5, 6])  # the input is left alone
    with pytest.raises(ValueError, match="1 student tokens have no MinED distance"):
        tokenizer_info.limit_mined_mapping(mapping, {"a": 0, "ab": 1, "abcd": 2}, Vocab(), 1)


def test_pair_data_loads_and_names_what_is_missing(tmp_path, tiny_tokenizer_specs):
    from tokenkit.entry import REPO_ROOT

    teacher = load_byteify_tokenizer(tiny_tokenizer_specs["llama3_bpe"])
    student = load_byteify_tokenizer(tiny_tokenizer_specs["gemma2_sp"])
    data = tokenizer_info.load_pair_data(REPO_ROOT / "data/tokenizer_pairs/llama3_bpe__gemma2_sp", teacher, student)
    bias1, bias2 = data.bias_matrices
    assert bias1.shape == bias2.shape == (len(teacher), len(student))
    assert 0 <= bias1.data.min() and bias1.data.max() <= 1 and 0 <= bias2.data.min() and bias2.data.max() <= 1
    assert data.teacher_counts.sum() > 0 and data.mined_mapping.shape == (len(student),)
    assert len(data.mined_distances) > 0
    empty = tokenizer_info.load_pair_data(tmp_path)
    with pytest.raises(FileNotFoundError, match="No bias matrices"):
        empty.bias_matrices
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenizer_info.load_pair_data(tmp_path / "nope")
