"""Tokenizers sampled from a batch's text: counting, sampling, packing, the Grain transform."""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tokenkit import constants
from tokenkit.byteify import load_byteify_tokenizer
from tokenkit.data import tokenizer_sampler as TS

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "Der schnelle braune Fuchs springt über den faulen Hund — zweimal!",
    "中文里有很多成语，比如守株待兔。",
    "def f(x):\n    return x * 2  # doubled\n\n\n",
    "नमस्ते दुनिया, यह एक परीक्षा है।",
]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


@pytest.fixture(scope="module")
def base():
    return load_byteify_tokenizer(f"{REPO}/data/models/tiny_teacher:source=Llama3")


@pytest.fixture(scope="module")
def prose():
    lines = (REPO / "data" / "corpus" / "train.jsonl").read_text().splitlines()
    return [r["text"] for r in map(json.loads, lines) if r.get("text")]


def _pretokens(texts):
    splitter = TS._splitter()
    return [p.encode() for t in texts for p, _ in splitter.pre_tokenize_str(t)]


def _reference_counts(pretokens, max_piece_length, stride):
    counts = collections.Counter()
    for p in pretokens:
        char_starts = [i for i, b in enumerate(p) if b & 0xC0 != 0x80]
        for start in char_starts[::stride]:
            for k in range(1, max_piece_length):
                if start + k <= len(p):
                    counts[p[start : start + k]] += k
    return counts


@pytest.mark.parametrize("max_piece_length, stride", [(6, 1), (16, 4), (4, 3)])
def test_substring_counts_match_a_reference(max_piece_length, stride):
    pretokens = _pretokens(TEXTS) + [b"a\x00b", b"\x00"]  # zero bytes are not padding
    counts = TS.count_substrings(pretokens, max_piece_length, stride)
    got = {counts.piece(i): int(counts.scores[i]) for i in range(len(counts))}
    assert got == dict(_reference_counts(pretokens, max_piece_length, stride))
    assert len(TS.count_substrings([], 6, 1)) == 0


def _config(**kwargs):
    values = dict(tokenizer_sample_min=300, tokenizer_sample_mean=400, tokenizer_sample_max=500,
                  tokenizer_sample_std=50, block_size=32, hn_surface_maxlen=15)
    values.update(kwargs)
    return TS.TokenizerSamplerConfig(**values)


def test_sampled_vocabulary_layout_and_lossless_encoding(prose):
    texts = prose[:40]
    config = _config()
    sampled = TS.sample_vocabulary(texts, config, SPECIALS, np.random.default_rng(0))
    pieces = sampled.pieces
    assert pieces[:2] == SPECIALS and pieces[2:258] == list(constants.BYTE_CHARS)
    assert len(set(pieces)) == len(pieces)
    assert config.tokenizer_sample_min <= len(pieces) - 2 <= config.tokenizer_sample_max
    assert all(len(constants.chars_to_bytes(p)) > 1 for p in pieces[258:])
    for text in texts[:10]:
        ids = sampled.tokenizer.encode(text, add_special_tokens=False).ids
        assert "".join(pieces[i] for i in ids) == constants.bytes_to_chars(text.encode())
        assert sampled.tokenizer.decode(ids) == text
        assert min(ids) >= 2  # specials are never produced from text
    again = TS.sample_vocabulary(texts, config, SPECIALS, np.random.default_rng(0))
    assert again.pieces == pieces and again.noise == sampled.noise
    other = TS.sample_vocabulary(texts, config, SPECIALS, np.random.default_rng(1))
    assert other.pieces != pieces


def test_without_noise_the_vocabulary_is_the_top_substrings(prose):
    texts = prose[:20]
    config = _config(tokenizer_noise_mean=0.0, tokenizer_sample_std=0)
    sampled = TS.sample_vocabulary(texts, config, [], np.random.default_rng(0))
    assert sampled.noise == 0.0 and len(sampled.pieces) == 400
    counts = _reference_counts(_pretokens(texts), config.max_piece_length, config.stride)
    multi = sorted((c for s, c in counts.items() if len(s) > 1), reverse=True)
    chosen = [counts[constants.chars_to_bytes(p)] for p in sampled.pieces[256:]]
    assert sorted(chosen, reverse=True) == multi[: len(chosen)]


def test_pack_rows():
    ids, attention, truncated, dropped = TS.pack_rows(
        [[5, 6], [7], [], [8, 9, 10, 11, 12, 13], [14, 15], [16]], rows=2, block_size=5, bos=0,
        separator=1,
    )
    assert ids.tolist() == [[0, 5, 6, 1, 7], [0, 8, 9, 10, 11]]
    assert attention.sum(1).tolist() == [5, 5] and truncated.tolist() == [False, True]
    assert dropped == 2
    ids, attention, _, dropped = TS.pack_rows([[5]], rows=2, block_size=4, bos=None, separator=1)
    assert ids[0].tolist() == [5, 0, 0, 0] and not attention[1].any() and dropped == 0


def test_subsample_keeps_specials_and_used_pieces():
    rng = np.random.default_rng(0)
    chosen = TS.subsample_vocabulary(np.array([3, 40, 40, 7, 99]), 100, 3, 20, rng)
    assert chosen[:3].tolist() == [0, 1, 2] and chosen[3:7].tolist() == [3, 7, 40, 99]
    assert len(chosen) == len(set(chosen.tolist())) == 20
    assert len(TS.subsample_vocabulary(np.array([5]), 10, 3, 64, rng)) == 10
    with pytest.raises(ValueError, match="raise it"):
        TS.subsample_vocabulary(np.arange(3, 50), 100, 3, 20, rng)


@pytest.mark.parametrize("subsample", [None, 512])
def test_a_sampled_batch_spells_its_texts_through_the_decompositions(base, prose, subsample):
    config = _config(n_token_subsample=subsample, block_size=256, texts_per_batch=12)
    transform = TS.SampleTokenizer(base, config, batch_rows=6)
    texts = prose[:12]
    batch = transform.random_map(texts, np.random.default_rng(3))
    rows, vocab = batch.rows.student, batch.vocab
    n_rows = TS.vocabulary_rows(config, len(base.all_special_tokens))
    assert rows.input_ids.shape == (6, 256) and vocab.parts.shape == (n_rows, 15)
    assert n_rows == 512  # 5 specials + at most 500 pieces, padded to a multiple of 64; or 512
    bos = base.all_special_tokens.index("<|begin_of_text|>")
    assert (rows.input_ids[:, 0] == bos).all() and rows.attention_mask[:, 0].all()
    k = len(base.all_special_tokens)
    assert vocab.copied[:k].all() and not vocab.copied[k:].any()
    assert vocab.parts[:k, 0].tolist() == base.convert_tokens_to_ids(base.all_special_tokens)
    assert batch.truncated == 0 and vocab.valid.sum() <= n_rows
    # Every whole row is bos + texts joined by newlines, spelled by the decompositions.
    joined = "\n".join(texts)
    whole = 0
    for ids, mask, cut in zip(rows.input_ids, rows.attention_mask, rows.truncated):
        parts = [p for i in ids[mask][1:] for p in vocab.parts[i][vocab.mask[i]]]
        if cut:
            continue
        text = constants.chars_to_bytes("".join(base.convert_ids_to_tokens(parts))).decode()
        assert text in joined and any(text.startswith(t[:20]) for t in texts)
        whole += 1
    assert whole >= 2


def test_the_dataset_is_seeded_and_skips_what_has_no_text(base, prose):
    records = [{"text": t} for t in prose[:40]] + [
        {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}
    ] * 40
    config = _config(texts_per_batch=8, include_chats=False, n_token_subsample=256)
    make = lambda seed: TS.make_dataset(base, config, batch_size=4, seed=seed, source=records)  # noqa: E731
    first = [next(iter(make(5))) for _ in range(2)]
    np.testing.assert_array_equal(first[0].rows.student.input_ids, first[1].rows.student.input_ids)
    it = iter(make(5))
    batches = [next(it) for _ in range(3)]
    assert all(b.vocab.parts.shape == (256, 15) for b in batches)
    for b in batches:  # chats are skipped: every row holds prose, longer than a chat
        assert (b.rows.student.attention_mask.sum(1) > 12).all()
    other = next(iter(make(6)))
    assert not np.array_equal(other.rows.student.input_ids, batches[0].rows.student.input_ids)
    assert TS.record_text(records[-1], True) == "2 + 2?\n4" and TS.record_text(records[-1], False) == ""


@pytest.mark.parametrize("kwargs, match", [
    (dict(tokenizer_sample_min=200), "must exceed the 256 bytes"),
    (dict(tokenizer_sample_mean=600), "outside"),
    (dict(max_piece_length=1), "max_piece_length"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _config(**kwargs)


def test_the_batch_drops_host_statistics_for_the_device(base, prose):
    batch = TS.SampleTokenizer(base, _config(), 2).random_map(prose[:2], np.random.default_rng(0))
    device = batch.for_device()
    assert device.vocab_size is None and device.rows.student.truncated is None
    assert dataclasses.replace(batch).vocab_size == batch.vocab_size
