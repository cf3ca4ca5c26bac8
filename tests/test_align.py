"""Exact alignment: hand-written cases, properties over the tiny world, and the
compiled `Aligner` against the per-token reference loop."""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

from tokenkit import align
from tokenkit.byteify import load_byteify_tokenizer

TINY = ("llama3_bpe", "qwen2_bpe", "gemma2_sp")
VARIANTS = tuple(f"{name}{suffix}" for name in TINY for suffix in ("", "+byte"))
PROPERTY_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="session")
def tokenizers(tiny_tokenizer_specs):
    """Every tiny-world tokenizer, as is (`llama3_bpe`) and byte-converted (`llama3_bpe+byte`)."""
    loaded = {}
    for name in TINY:
        loaded[name] = load_byteify_tokenizer(tiny_tokenizer_specs[name])
        loaded[f"{name}+byte"] = load_byteify_tokenizer(tiny_tokenizer_specs[name] + ":conversion=byte")
    return loaded


@pytest.fixture(scope="session")
def aligner(tokenizers):
    """`aligner(name_a, name_b, with_bias=False)`: a cached `Aligner` of two tokenizers
    (with random bias matrices, threshold 0.4, when asked)."""
    cache = {}

    def get(name_a: str, name_b: str, with_bias: bool = False) -> align.Aligner:
        if (name_a, name_b, with_bias) not in cache:
            a, b = tokenizers[name_a], tokenizers[name_b]
            bias = _random_bias(len(a), len(b)) if with_bias else None
            cache[name_a, name_b, with_bias] = align.Aligner(a, b, bias_matrices=bias, bias_threshold=0.4)
        return cache[name_a, name_b, with_bias]

    return get


def _random_bias(rows: int, cols: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        sparse.random(rows, cols, density=0.03, random_state=rng, format="csr"),
        sparse.random(rows, cols, density=0.03, random_state=rng, format="csr"),
    )


def slot_ids(tokenizer, slot: str) -> list[int]:
    tokens = tokenizer.family.slot(slot)
    return [] if tokens is None else tokenizer.convert_tokens_to_ids(list(tokens))


def chat_ids(tokenizer, messages: list[tuple[str, str]]) -> list[int]:
    """A chat in the tokenizer's family template, built from the family's slots."""
    ids = slot_ids(tokenizer, "bos")
    for role, content in messages:
        ids += slot_ids(tokenizer, "start_header") + slot_ids(tokenizer, f"{role}_name")
        ids += slot_ids(tokenizer, "end_header") + tokenizer.encode(content, add_special_tokens=False)
        ids += slot_ids(tokenizer, "eot")
    return ids


def pad_batch(rows: list[list[int]], length: int, left: list[int] | None = None, pad_id: int = 0):
    """Right-padded `[B, length]` ids and mask; `left[r]` masked tokens go first."""
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), bool)
    for r, row in enumerate(rows):
        offset = 0 if left is None else left[r]
        ids[r, offset : offset + len(row)] = row
        mask[r, offset : offset + len(row)] = True
    return ids, mask


def spans_of(chunks: np.ndarray) -> list[list[int]]:
    """Token positions of each chunk id, for readable assertions."""
    return [np.flatnonzero(chunks == c).tolist() for c in range(chunks.max(initial=-1) + 1)]


# ------------------------------------------------------------------ hand-written


class FakeTokenizer:
    """Only what `get_alignment_indices` reads: a family and the special tokens."""

    def __init__(self, family_name: str):
        from tokenkit import families

        self.family = families.get_family(family_name)
        self.all_special_tokens = list(self.family.special_tokens)


def test_identical_tokenizers_every_token_is_a_chunk(tokenizers, aligner):
    tok = tokenizers["llama3_bpe"]
    ids = tok.encode("The harbour was quiet, and the boats slept.")
    out = aligner("llama3_bpe", "llama3_bpe").chunk_ids(ids, ids, kinds=align.KINDS[:2])
    chunks = out["unconstrained"]
    np.testing.assert_array_equal(chunks.chunks_a, np.arange(len(ids)))
    np.testing.assert_array_equal(chunks.chunks_b, np.arange(len(ids)))
    assert chunks.num_chunks == len(ids)
    # Space chunks: one per word (cut before each token that starts with a space).
    tokens = tok.convert_ids_to_tokens(ids)
    space = out["space"].chunks_a
    for p in range(2, len(ids)):  # bos is its own chunk; the first word follows
        assert (space[p] != space[p - 1]) == tokens[p].startswith("Ġ"), (p, tokens)


def test_different_splits_of_a_word():
    idx, norm_a, norm_b, special_a, special_b = align.get_alignment_indices(
        ["Hel", "lo", "Ġwor", "ld"], ["Hello", "Ġw", "orld"], FakeTokenizer("Llama3"), FakeTokenizer("Llama3")
    )
    assert idx == [(0, 2, 0, 1), (2, 4, 1, 3)]
    assert norm_a == ["Hel", "lo", "Ġwor", "ld"] and norm_b == ["Hello", "Ġw", "orld"]
    assert not any(special_a) and not any(special_b)


def test_multi_space_runs():
    idx, *_ = align.get_alignment_indices(
        ["a", "ĠĠ", "Ġb", "ĠĠĠ"], ["a", "Ġ", "Ġ", "Ġ", "b", "Ġ", "ĠĠ"], FakeTokenizer("Qwen2"), FakeTokenizer("Qwen2")
    )
    assert idx == [(0, 1, 0, 1), (1, 2, 1, 3), (2, 3, 3, 5), (3, 4, 5, 7)]


def test_leading_space_difference_is_normalized_and_input_untouched():
    tokens_a = ["<|begin_of_text|>", "hello", "Ġworld"]
    tokens_b = ["<bos>", "Ġhello", "Ġworld"]  # a SentencePiece dummy prefix
    idx, norm_a, *_ = align.get_alignment_indices(tokens_a, tokens_b, FakeTokenizer("Llama3"), FakeTokenizer("Gemma2"))
    assert idx == [(0, 1, 0, 1), (1, 2, 1, 2), (2, 3, 2, 3)]
    assert norm_a[1] == "Ġhello"
    assert tokens_a == ["<|begin_of_text|>", "hello", "Ġworld"]  # not mutated


def test_leading_space_after_one_sided_bos():
    # Llama 3's bos is one-sided against Qwen2 (no bos). Upstream would prepend the space
    # of Qwen2's first token to `<|begin_of_text|>` and lose the first word.
    idx, norm_a, _, special_a, _ = align.get_alignment_indices(
        ["<|begin_of_text|>", "Ġhi", "Ġthere"], ["Ġhi", "Ġthere"], FakeTokenizer("Llama3"), FakeTokenizer("Qwen2")
    )
    assert idx == [(0, 2, 0, 1), (2, 3, 1, 2)]
    assert norm_a[0] == "" and special_a[0]


def test_one_sided_special_token_after_text_is_transparent():
    idx, *_ = align.get_alignment_indices(
        ["Ġa", "<|begin_of_text|>", "Ġbc", "Ġd"], ["Ġa", "Ġb", "c", "Ġd"], FakeTokenizer("Llama3"), FakeTokenizer("Qwen2")
    )
    assert idx == [(0, 1, 0, 1), (1, 3, 1, 3), (3, 4, 3, 4)]


def test_chat_template_qwen2_against_llama3():
    # The upstream's own test, with our families.
    tokens_a = ["<|im_start|>", "Hel", "lo", "?", "Ċ", "Ċ"]
    tokens_b = ["<|begin_of_text|>", "<|start_header_id|>", "Hello", "?", "<|end_header_id|>", "ĊĊ", "Ċ"]
    idx, norm_a, norm_b, special_a, special_b = align.get_alignment_indices(
        tokens_a, tokens_b, FakeTokenizer("Qwen2"), FakeTokenizer("Llama3")
    )
    pairs = [(tokens_a[s:e], tokens_b[t:u]) for s, e, t, u in idx]
    assert pairs == [
        (["<|im_start|>"], ["<|begin_of_text|>", "<|start_header_id|>"]),
        (["Hel", "lo"], ["Hello"]),
        (["?"], ["?"]),
        (["Ċ"], ["<|end_header_id|>", "ĊĊ"]),
        (["Ċ"], ["Ċ"]),
    ]
    assert norm_b[0] == "" and special_b[0]  # Qwen2 has no bos: one-sided
    assert norm_a[4] == "SS" and norm_b[4:6] == ["S", "S"]


def test_chat_template_gemma2_against_llama3_tokens(tokenizers, aligner):
    a, b = tokenizers["llama3_bpe"], tokenizers["gemma2_sp"]
    messages = [("user", "Where is the harbour?"), ("assistant", "By the old mill.")]
    ids_a, ids_b = chat_ids(a, messages), chat_ids(b, messages)
    out = aligner("llama3_bpe", "gemma2_sp").chunk_ids(ids_a, ids_b, kinds=("unconstrained",))
    chunks = out["unconstrained"]
    toks_a, toks_b = a.convert_ids_to_tokens(ids_a), b.convert_ids_to_tokens(ids_b)
    pairs = [
        ("".join(toks_a[p] for p in pa), "".join(toks_b[p] for p in pb))
        for pa, pb in zip(spans_of(chunks.chunks_a), spans_of(chunks.chunks_b))
    ]
    assert pairs[:3] == [("<|begin_of_text|>", "<bos>"), ("<|start_header_id|>", "<start_of_turn>"), ("user", "user")]
    assert ("<|end_header_id|>ĊĊ", "Ċ") in pairs
    assert ("<|eot_id|>", "<end_of_turn>Ċ") in pairs
    assert ("assistant", "model") in pairs
    assert pairs[-1] == ("<|eot_id|>", "<end_of_turn>Ċ")
    # Same as the reference loop.
    ref = align.reference_chunk_ids(np.array([ids_a]), np.array([ids_b]), a, b, kinds=("unconstrained",))
    np.testing.assert_array_equal(chunks.chunks_a, ref["unconstrained"][0][0])
    np.testing.assert_array_equal(chunks.chunks_b, ref["unconstrained"][1][0])


def test_padding_and_attention_masks_left_and_right(tokenizers, aligner):
    a, b = tokenizers["llama3_bpe"], tokenizers["qwen2_bpe"]
    text = "Boats rest in the harbour."
    ids_a, ids_b = a.encode(text), b.encode(text)
    al = aligner("llama3_bpe", "qwen2_bpe")
    alone = al.chunk_ids(ids_a, ids_b, kinds=("space",))["space"]
    batch_a, mask_a = pad_batch([ids_a, ids_a], len(ids_a) + 5, left=[0, 3], pad_id=7)
    batch_b, mask_b = pad_batch([ids_b, ids_b], len(ids_b) + 2, left=[2, 0], pad_id=9)
    out = al.chunk_ids(batch_a, batch_b, mask_a, mask_b, kinds=("space",))["space"]
    for r in range(2):
        np.testing.assert_array_equal(out.chunks_a[r][mask_a[r]], alone.chunks_a)
        np.testing.assert_array_equal(out.chunks_b[r][mask_b[r]], alone.chunks_b)
        assert (out.chunks_a[r][~mask_a[r]] == -1).all() and (out.chunks_b[r][~mask_b[r]] == -1).all()
    np.testing.assert_array_equal(out.num_chunks, [alone.num_chunks] * 2)
    assert alone.chunks_a[0] == -1  # Llama 3's bos: Qwen2 has none


def test_space_cut_needs_the_next_token_unmasked(tokenizers, aligner):
    # As in the reference: a masked token right after a span (here `Ġin`, masked on both
    # sides) does not start with a space, so no cut before the `Ġthe` that follows it.
    a = tokenizers["llama3_bpe"]
    ids = np.array([a.encode("Boats rest in the harbour.", add_special_tokens=False)])
    assert a.convert_ids_to_tokens(ids[0]) == ["B", "o", "ats", "Ġ", "rest", "Ġin", "Ġthe", "Ġharbour", "."]
    mask = np.ones_like(ids, bool)
    mask[0, 5] = False
    al = aligner("llama3_bpe", "llama3_bpe")
    out = al.chunk_ids(ids, ids, mask, mask, kinds=("space",))["space"]
    np.testing.assert_array_equal(out.chunks_a[0], [0, 0, 0, 1, 1, -1, 1, 2, 2])
    np.testing.assert_array_equal(out.chunks_b[0], [0, 0, 0, 1, 1, -1, 1, 2, 2])
    ref = align.reference_chunk_ids(ids, ids, a, a, mask, mask, kinds=("space",))
    np.testing.assert_array_equal(ref["space"][0], out.chunks_a)


class _WithFamily:
    """A tokenizer seen through another family (what alignment reads of it)."""

    def __init__(self, tokenizer, family):
        self._tokenizer, self.family = tokenizer, family

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __len__(self):
        return len(self._tokenizer)


def test_padded_first_token_can_start_a_slot_key(tokenizers):
    # No real family has a slot token that starts with a space, so make one: a bos `Ġthe`
    # (one-sided against Qwen2, which has no bos). The first text token `the` gets the
    # other side's leading space, then spells that key and is skipped, in the reference
    # and the kernel alike.
    from tokenkit import families

    a = _WithFamily(tokenizers["llama3_bpe"], dataclasses.replace(families.LLAMA3, name="SpacedBos", bos=("Ġthe",)))
    b = tokenizers["qwen2_bpe"]
    ids_a = np.array([a.encode("the harbour", add_special_tokens=False)])
    ids_b = np.array([b.encode(" the harbour")])
    assert b.convert_ids_to_tokens(ids_b[0]) == ["Ġthe", "Ġharbour"]
    out = align.Aligner(a, b, check=False).chunk_ids(ids_a, ids_b, kinds=("unconstrained",))["unconstrained"]
    ref = align.reference_chunk_ids(ids_a, ids_b, a, b, kinds=("unconstrained",), check=False)["unconstrained"]
    assert out.chunks_a[0, 0] == -1  # skipped as a one-sided key
    np.testing.assert_array_equal(out.chunks_a, ref[0])
    np.testing.assert_array_equal(out.chunks_b, ref[1])
    # Unpadded (no leading space on the other side either), the same token is text.
    plain_b = np.array([b.encode("the harbour")])
    plain = align.Aligner(a, b).chunk_ids(ids_a, plain_b, kinds=("unconstrained",))["unconstrained"]
    np.testing.assert_array_equal(plain.chunks_a[0], [0, 1])


def test_byte_level_target(tokenizers, aligner):
    a, b = tokenizers["gemma2_sp"], tokenizers["gemma2_sp+byte"]
    text = "Grüße aus dem Hafen"
    ids_a, ids_b = a.encode(text), b.encode(text)
    chunks = aligner("gemma2_sp", "gemma2_sp+byte").chunk_ids(ids_a, ids_b, kinds=("unconstrained",))
    chunks = chunks["unconstrained"]
    toks_a, toks_b = a.convert_ids_to_tokens(ids_a), b.convert_ids_to_tokens(ids_b)
    assert len(toks_b) == 1 + len(text.encode())  # bos + one token per byte
    for pa, pb in zip(spans_of(chunks.chunks_a), spans_of(chunks.chunks_b)):
        assert len(pa) == 1  # every subword is a whole chunk of bytes
        assert toks_a[pa[0]] == "".join(toks_b[p] for p in pb)
    assert chunks.num_chunks == len(ids_a)


def test_check_drops_spans_of_texts_that_differ(tokenizers):
    a, b = tokenizers["llama3_bpe"], tokenizers["qwen2_bpe"]
    ids_a = a.encode("one two three", add_special_tokens=False)
    ids_b = b.encode("one twx three", add_special_tokens=False)
    al = align.Aligner(a, b)
    out = al.chunk_ids(ids_a, ids_b, kinds=("unconstrained",))["unconstrained"]
    toks_a, toks_b = a.convert_ids_to_tokens(ids_a), b.convert_ids_to_tokens(ids_b)
    kept = [("".join(toks_a[p] for p in pa), "".join(toks_b[p] for p in pb)) for pa, pb in zip(spans_of(out.chunks_a), spans_of(out.chunks_b))]
    assert kept == [("one", "one"), ("Ġthree", "Ġthree")]
    assert al.dropped_spans == 1
    unchecked = align.Aligner(a, b, check=False).chunk_ids(ids_a, ids_b, kinds=("unconstrained",))["unconstrained"]
    assert unchecked.num_chunks == 3


def test_aligner_pickles(tokenizers, aligner):
    al = aligner("llama3_bpe", "gemma2_sp", with_bias=True)
    copy = pickle.loads(pickle.dumps(al))
    a, b = tokenizers["llama3_bpe"], tokenizers["gemma2_sp"]
    text = "A boat, a mill, a harbour."
    ids_a, ids_b = np.array([a.encode(text)]), np.array([b.encode(text)])
    first, second = al.chunk_ids(ids_a, ids_b, kinds=align.KINDS), copy.chunk_ids(ids_a, ids_b, kinds=align.KINDS)
    for kind in align.KINDS:
        for x, y in zip(first[kind], second[kind]):
            np.testing.assert_array_equal(x, y)


def test_aligner_in_a_fresh_process(tokenizers, aligner):
    """As a Grain worker gets it: pickled, then used in a process that never saw the
    tokenizers (the kernel compiles, or loads its disk cache, there)."""
    al = aligner("llama3_bpe", "gemma2_sp", with_bias=True)
    a, b = tokenizers["llama3_bpe"], tokenizers["gemma2_sp"]
    text = "Two boats, one mill."
    ids_a, ids_b = np.array([a.encode(text)]), np.array([b.encode(text)])
    script = (
        "import pickle, sys\n"
        "aligner, ids_a, ids_b = pickle.load(sys.stdin.buffer)\n"
        "out = aligner.chunk_ids(ids_a, ids_b, kinds=('unconstrained', 'space', 'unbiased'))\n"
        "pickle.dump({k: tuple(v) for k, v in out.items()}, sys.stdout.buffer)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=pickle.dumps((al, ids_a, ids_b)), capture_output=True, check=True
    )
    theirs = pickle.loads(done.stdout)
    ours = al.chunk_ids(ids_a, ids_b, kinds=align.KINDS)
    assert set(theirs) == set(align.KINDS)
    for kind in align.KINDS:
        for x, y in zip(ours[kind], theirs[kind]):
            np.testing.assert_array_equal(x, y)


def test_without_numba_import_fails_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # what `import numba` sees when missing
    spec = importlib.util.spec_from_file_location("align_without_numba", align.__file__)
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match="tokenkit.align needs numba.*pip install numba"):
        spec.loader.exec_module(module)


def test_vocab_tables_hold_what_they_name(tokenizers):
    a, b = tokenizers["llama3_bpe"], tokenizers["qwen2_bpe"]
    keys = align.slot_keys(a.family, b.family)
    tables = align.VocabTables.build(a, keys)
    assert tables.vocab_size == len(a)
    the, spaces, bos = (a.convert_tokens_to_ids(t) for t in ("Ġthe", "ĠĠ", "<|begin_of_text|>"))
    assert (tables.byte_lengths[the], tables.leading_spaces[the], tables.only_spaces[the]) == (4, 1, False)
    assert (tables.byte_lengths[spaces], tables.leading_spaces[spaces], tables.only_spaces[spaces]) == (2, 2, True)
    assert tables.special[bos] and not tables.special[the]
    start, end = tables.char_offsets[the], tables.char_offsets[the + 1]
    assert "".join(map(chr, tables.chars[start:end])) == "Ġthe"
    # Slot keys, in `slot_keys` order, as slot-token numbers; each slot token's string.
    assert len(tables.key_offsets) == len(keys) + 1 and tables.key_one_sided.tolist() == [k.one_sided for k in keys]
    for k, key in enumerate(keys):
        numbers = tables.key_tokens[tables.key_offsets[k] : tables.key_offsets[k + 1]]
        strings = [
            "".join(map(chr, tables.slot_token_chars[tables.slot_token_offsets[n] : tables.slot_token_offsets[n + 1]]))
            for n in numbers
        ]
        assert tuple(strings) == key.tokens
        assert tables.key_normalized_length[k] == (len(key.normalized[0]) if key.normalized else 0)
        for token, number in zip(key.tokens, numbers):
            assert tables.slot_token[a.convert_tokens_to_ids(token)] == number
    assert tables.slot_token[the] == -1
    bos = [key.tokens for key in keys].index(("<|begin_of_text|>",))
    assert tables.key_one_sided[bos]  # Qwen2 has no bos
    assert [len(key.tokens) for key in keys] == sorted((len(key.tokens) for key in keys), reverse=True)


def test_bad_inputs_are_named(tokenizers, aligner):
    al = aligner("llama3_bpe", "qwen2_bpe")
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match="'spaces'.*valid chunkings: unconstrained, space, unbiased"):
        al.chunk_ids(ids, ids, kinds=("spaces",))
    with pytest.raises(ValueError, match="unbiased.*bias_matrices"):
        al.chunk_ids(ids, ids, kinds=("unbiased",))
    with pytest.raises(ValueError, match=r"input_ids_a\[0, 1\] = 99999 .*vocabulary size"):
        al.chunk_ids(np.array([[1, 99999]]), ids)
    with pytest.raises(ValueError, match=r"input_ids_b\[0, 2\] = -5 "):
        al.chunk_ids(ids, np.array([[1, 2, -5]]))
    with pytest.raises(ValueError, match="Batch sizes differ"):
        al.chunk_ids(np.ones((2, 3), int), ids)
    with pytest.raises(ValueError, match="attention_mask_b has shape"):
        al.chunk_ids(ids, ids, attention_mask_b=np.ones((1, 4), bool))
    # Out-of-range ids under the mask are fine (padding may hold anything).
    out = al.chunk_ids(np.array([[1, -100]]), ids, attention_mask_a=np.array([[True, False]]))
    assert out["unconstrained"].chunks_a[0, 1] == -1


def test_chunk_ids_to_matrix():
    chunks = np.array([[0, 0, 1, -1], [-1, 0, 1, 2]])
    dense = align.chunk_ids_to_matrix(chunks, 3)
    assert dense.shape == (2, 4, 3) and dense.dtype == bool
    assert dense[0, 1, 0] and dense[0, 2, 1] and not dense[0, 3].any() and dense[1, 3, 2]
    np.testing.assert_array_equal(dense.sum(-1), chunks >= 0)
    with pytest.raises(ValueError, match="Chunk id 2 does not fit in 2 chunks"):
        align.chunk_ids_to_matrix(chunks, 2)


def test_bias_lookup_thresholds_and_out_of_range():
    bias1 = sparse.coo_matrix(([0.5, 0.1], ([0, 1], [1, 1])), shape=(2, 3))
    bias2 = sparse.coo_matrix(([0.2], ([1], [1])), shape=(2, 3))
    lookup = align.BiasLookup(bias1, bias2, threshold=0.3)
    ids_a, ids_b = np.array([0, 1, 0, 5, 1]), np.array([1, 1, 0, 0, 7])
    np.testing.assert_array_equal(lookup(ids_a, ids_b), [False, True, True, True, True])
    strict = align.BiasLookup(bias1, bias2, threshold=-1.0)  # nothing in range is unbiased
    np.testing.assert_array_equal(strict(ids_a, ids_b), [False, False, False, True, True])
    with pytest.raises(ValueError, match="differ in shape"):
        align.BiasLookup(bias1, sparse.coo_matrix((3, 3)), 0.0)


def test_unbiased_cuts_only_at_unbiased_pairs(tokenizers):
    a, b = tokenizers["llama3_bpe"], tokenizers["gemma2_sp"]
    text = "Boats rest in the quiet harbour tonight."
    ids_a, ids_b = np.array([a.encode(text)]), np.array([b.encode(text)])
    unconstrained = align.Aligner(a, b).chunk_ids(ids_a, ids_b, kinds=("unconstrained",))["unconstrained"]
    n = int(unconstrained.num_chunks[0])
    # Mark the last-token pair of every other unconstrained chunk as biased.
    last_a = [np.flatnonzero(unconstrained.chunks_a[0] == c).max() for c in range(n)]
    last_b = [np.flatnonzero(unconstrained.chunks_b[0] == c).max() for c in range(n)]
    biased = [c for c in range(1, n - 1, 2)]
    values = np.ones(len(biased))
    rows, cols = ids_a[0, [last_a[c] for c in biased]], ids_b[0, [last_b[c] for c in biased]]
    matrix = sparse.coo_matrix((values, (rows, cols)), shape=(len(a), len(b)))
    al = align.Aligner(a, b, bias_matrices=(matrix, matrix), bias_threshold=0.5)
    merged = al.chunk_ids(ids_a, ids_b, kinds=("unbiased",))["unbiased"]
    biased_pairs = set(zip(rows.tolist(), cols.tolist()))
    expected, chunk = [], 0
    for c in range(n):
        expected.append(chunk)
        if c == 0 or (int(ids_a[0, last_a[c]]), int(ids_b[0, last_b[c]])) not in biased_pairs:
            chunk += 1  # chunk 0 is the bos pair (slot keys always cut)
    remap = np.array(expected + [-1])
    np.testing.assert_array_equal(merged.chunks_a[0], remap[unconstrained.chunks_a[0]])
    np.testing.assert_array_equal(merged.chunks_b[0], remap[unconstrained.chunks_b[0]])


# ------------------------------------------------------------------ properties

_texts = st.lists(
    st.one_of(
        # Not `▁`: a SentencePiece tokenizer reads it as a space, so the two sides would
        # not be of one text.
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\u2581"), max_size=4),
        st.sampled_from([" ", "\n", "\t", ".", ",", "a", "é", "ü", "日本", "  ", "\n\n"]),
        # Words that are slot tokens of some family (template names).
        st.sampled_from(["user", "model", "assistant", "system"]),
    ),
    max_size=15,
).map("".join)


@st.composite
def _examples(draw):
    """A tokenizer pair, and rows that are plain texts or chats, with padding."""
    name_a, name_b = draw(st.sampled_from(VARIANTS)), draw(st.sampled_from(VARIANTS))
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            rows.append(("text", draw(_texts)))
        else:
            roles = st.sampled_from(["system", "user", "assistant"])
            rows.append(("chat", draw(st.lists(st.tuples(roles, _texts), min_size=1, max_size=3))))
    pads = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), min_size=len(rows), max_size=len(rows)))
    return name_a, name_b, rows, pads


def _encode(tokenizers, name_a, name_b, rows, pads):
    a, b = tokenizers[name_a], tokenizers[name_b]
    out_a, out_b = [], []
    for kind, content in rows:
        if kind == "text":
            out_a.append(a.encode(content))
            out_b.append(b.encode(content))
        else:
            out_a.append(chat_ids(a, content))
            out_b.append(chat_ids(b, content))
    length_a = max(len(r) + p[0] + p[1] for r, p in zip(out_a, pads)) or 1
    length_b = max(len(r) + p[2] + p[3] for r, p in zip(out_b, pads)) or 1
    ids_a, mask_a = pad_batch(out_a, length_a, left=[p[0] for p in pads], pad_id=a.pad_token_id)
    ids_b, mask_b = pad_batch(out_b, length_b, left=[p[2] for p in pads], pad_id=b.pad_token_id)
    return a, b, ids_a, mask_a, ids_b, mask_b


@PROPERTY_SETTINGS
@given(example=_examples())
def test_alignment_properties(tokenizers, aligner, example):
    name_a, name_b, rows, pads = example
    a, b, ids_a, mask_a, ids_b, mask_b = _encode(tokenizers, name_a, name_b, rows, pads)
    special_a, special_b = set(a.all_special_tokens), set(b.all_special_tokens)
    for r in range(len(rows)):
        toks_a, toks_b = a.convert_ids_to_tokens(ids_a[r]), b.convert_ids_to_tokens(ids_b[r])
        spans, norm_a, norm_b, _, _ = align.get_alignment_indices(toks_a, toks_b, a, b, mask_a[r], mask_b[r], check=False)
        checked = align.get_alignment_indices(toks_a, toks_b, a, b, mask_a[r], mask_b[r]).spans
        assert checked == spans  # one text on both sides: nothing to drop
        prev_a = prev_b = 0
        for start_a, end_a, start_b, end_b in spans:
            assert (start_a, start_b) == (prev_a, prev_b)  # contiguous, ordered, disjoint
            assert end_a > start_a and end_b > start_b
            assert "".join(norm_a[start_a:end_a]) == "".join(norm_b[start_b:end_b])
            prev_a, prev_b = end_a, end_b
        for norm, toks, mask, special in ((norm_a, toks_a, mask_a[r], special_a), (norm_b, toks_b, mask_b[r], special_b)):
            for p, (n, t, m) in enumerate(zip(norm, toks, mask)):
                if m and t not in special:
                    assert n, (p, t)  # every unmasked text token contributes its bytes

    al = aligner(name_a, name_b)
    out = al.chunk_ids(ids_a, ids_b, mask_a, mask_b, kinds=("unconstrained", "space"))
    for r in range(len(rows)):
        for chunks, toks, mask, special, tok in (
            (out["unconstrained"].chunks_a[r], ids_a[r], mask_a[r], special_a, a),
            (out["unconstrained"].chunks_b[r], ids_b[r], mask_b[r], special_b, b),
        ):
            strings = tok.convert_ids_to_tokens(toks)
            text = np.array([m and s not in special for s, m in zip(strings, mask)], bool)
            assert (chunks[text] >= 0).all()  # every text token is in exactly one chunk
            assert (chunks[~mask] == -1).all()
    # Space chunks are unions of consecutive unconstrained chunks.
    for side in ("chunks_a", "chunks_b"):
        fine, coarse = getattr(out["unconstrained"], side), getattr(out["space"], side)
        assert ((fine >= 0) == (coarse >= 0)).all()
        for r in range(len(rows)):
            pairs = sorted(set(zip(fine[r][fine[r] >= 0].tolist(), coarse[r][coarse[r] >= 0].tolist())))
            assert [f for f, _ in pairs] == list(range(len(pairs)))  # each fine chunk in one coarse
            assert all(0 <= c2 - c1 <= 1 for (_, c1), (_, c2) in zip(pairs, pairs[1:]))
    _assert_equals_reference(a, b, aligner(name_a, name_b, with_bias=True), ids_a, ids_b, mask_a, mask_b)


def _assert_equals_reference(a, b, aligner, ids_a, ids_b, mask_a, mask_b):
    """The aligner's chunk ids of all three chunkings equal the reference loop's."""
    ref = align.reference_chunk_ids(ids_a, ids_b, a, b, mask_a, mask_b, kinds=align.KINDS, bias_lookup=aligner.bias_lookup)
    fast = aligner.chunk_ids(ids_a, ids_b, mask_a, mask_b, kinds=align.KINDS)
    for kind in align.KINDS:
        np.testing.assert_array_equal(fast[kind].chunks_a, ref[kind][0], err_msg=kind)
        np.testing.assert_array_equal(fast[kind].chunks_b, ref[kind][1], err_msg=kind)
        counts = np.maximum(ref[kind][0].max(axis=1, initial=-1), ref[kind][1].max(axis=1, initial=-1)) + 1
        np.testing.assert_array_equal(fast[kind].num_chunks, counts, err_msg=kind)


@st.composite
def _token_soups(draw):
    """Independent random id sequences (mostly slot and special tokens) with random
    masks: texts that differ, slot keys meeting mid-chunk, holes in the mask."""
    name_a, name_b = draw(st.sampled_from(VARIANTS)), draw(st.sampled_from(VARIANTS))
    return name_a, name_b, draw(st.integers(0, 2**32 - 1))


def _soup(tokenizer, rng, length):
    family = tokenizer.family
    pool = [t for t in family.template_tokens] + list(family.special_tokens)
    pool += ["Ġ", "ĠĠ", "a", "Ġa", "Ċ", "ĊĊ", "ab", "b"]
    pool = [t for t in pool if t in tokenizer.get_vocab()]
    ids = []
    for _ in range(length):
        if rng.random() < 0.5:
            ids.append(tokenizer.convert_tokens_to_ids(pool[rng.integers(len(pool))]))
        else:
            ids.append(int(rng.integers(len(tokenizer))))
    return ids


@settings(max_examples=400, deadline=None)
@given(example=_token_soups())
def test_aligner_equals_reference_on_token_soups(tokenizers, aligner, example):
    name_a, name_b, seed = example
    rng = np.random.default_rng(seed)
    a, b = tokenizers[name_a], tokenizers[name_b]
    rows = int(rng.integers(1, 4))
    length_a, length_b = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    ids_a = np.array([_soup(a, rng, length_a) for _ in range(rows)])
    ids_b = np.array([_soup(b, rng, length_b) for _ in range(rows)])
    if rng.random() < 0.5:  # same soup on both sides where the vocabularies allow it
        ids_b[:, : min(length_a, length_b)] = [
            [b.get_vocab().get(t, 0) for t in a.convert_ids_to_tokens(row[:length_b])] for row in ids_a
        ]
    mask_a, mask_b = rng.random(ids_a.shape) < 0.9, rng.random(ids_b.shape) < 0.9
    _assert_equals_reference(a, b, aligner(name_a, name_b, with_bias=True), ids_a, ids_b, mask_a, mask_b)


def test_chunk_contract_of_the_loss_tests(tokenizers, aligner):
    """The contract `tests/losses/chunkings.py` relies on, from real alignments: ids in
    -1..C-1, consecutive in text order, the same C on both sides."""
    a, b = tokenizers["llama3_bpe"], tokenizers["gemma2_sp+byte"]
    texts = ["A quiet harbour.", "Zwei Boote  im Hafen,\nund ein drittes.", "日本の港"]
    rows_a = [chat_ids(a, [("user", t), ("assistant", t[::-1])]) for t in texts]
    rows_b = [chat_ids(b, [("user", t), ("assistant", t[::-1])])[:96] for t in texts]
    ids_a, mask_a = pad_batch(rows_a, 96, pad_id=a.pad_token_id)
    ids_b, mask_b = pad_batch(rows_b, 96, pad_id=b.pad_token_id)  # bytes: truncated
    out = aligner("llama3_bpe", "gemma2_sp+byte", with_bias=True).chunk_ids(
        ids_a, ids_b, mask_a, mask_b, kinds=align.KINDS
    )
    for kind, chunking in out.items():
        assert chunking.chunks_a.dtype == np.int32 and chunking.chunks_b.dtype == np.int32
        for r in range(len(texts)):
            count = int(chunking.num_chunks[r])
            assert 0 < count <= min(ids_a.shape[1], ids_b.shape[1])
            for chunks in (chunking.chunks_a[r], chunking.chunks_b[r]):
                used = chunks[chunks >= 0]
                assert chunks.min() >= -1 and sorted(set(used.tolist())) == list(range(count)), kind
                assert (np.diff(used) >= 0).all()  # consecutive, in text order


def test_worked_example_of_the_docs(tokenizers):
    """docs/alignment.md shows these tokens, spans and ids; keep them true."""
    from tokenkit import tokenizer_info
    from tokenkit.entry import REPO_ROOT

    a, b = tokenizers["llama3_bpe"], tokenizers["gemma2_sp"]
    text = "Tomorrow the ferry leaves early."
    ids_a, ids_b = a.encode(text), b.encode(text)
    assert a.convert_ids_to_tokens(ids_a)[1:6] == ["T", "om", "orrow", "Ġthe", "Ġfer"]
    assert b.convert_ids_to_tokens(ids_b)[1:8] == ["T", "o", "m", "or", "row", "Ġthe", "Ġferry"]
    spans = align.get_alignment_indices(a.convert_ids_to_tokens(ids_a), b.convert_ids_to_tokens(ids_b), a, b).spans
    assert spans == [
        (0, 1, 0, 1), (1, 2, 1, 2), (2, 3, 2, 4), (3, 4, 4, 6), (4, 5, 6, 7),
        (5, 7, 7, 8), (7, 10, 8, 10), (10, 12, 10, 12), (12, 13, 12, 13), (13, 14, 13, 14),
    ]
    pair = tokenizer_info.load_pair_data(REPO_ROOT / "data/tokenizer_pairs/llama3_bpe__gemma2_sp", a, b)
    aligner = align.Aligner(a, b, bias_matrices=pair.bias_matrices, bias_threshold=1e-3)
    out = aligner.chunk_ids(ids_a, ids_b, kinds=align.KINDS)
    expected = {
        "unconstrained": ("0 1 2 3 4 5 5 6 6 6 7 7 8 9", "0 1 2 2 3 3 4 5 6 6 7 7 8 9"),
        "space": ("0 1 1 1 2 3 3 4 4 4 5 5 5 5", "0 1 1 1 1 1 2 3 4 4 5 5 5 5"),
        "unbiased": ("0 1 2 2 2 2 2 3 3 3 3 3 3 4", "0 1 2 2 2 2 2 2 3 3 3 3 3 4"),
    }
    for kind, (ids_teacher, ids_student) in expected.items():
        assert " ".join(map(str, out[kind].chunks_a)) == ids_teacher, kind
        assert " ".join(map(str, out[kind].chunks_b)) == ids_student, kind


FIXED_TEXTS = (
    "Boats rest in the harbour.",
    "  Zwei Boote im Hafen,\n\nund ein drittes…",
    "日本の港 — ¿qué?\tuser model",
)


@pytest.fixture(scope="session")
def swapped(tiny_swap_spec):
    """Tiny tokenizers with another family's specials and template (one-sided slots
    galore: Phi3 has no header start, Qwen3 a bos that is also its pad and eos)."""
    return {
        "qwen2_bpe>Qwen3": load_byteify_tokenizer(tiny_swap_spec("qwen2_bpe", "Qwen3")),
        "gemma2_sp>Phi3": load_byteify_tokenizer(tiny_swap_spec("gemma2_sp", "Phi3")),
    }


@pytest.mark.parametrize("name_b", VARIANTS + ("qwen2_bpe>Qwen3", "gemma2_sp>Phi3"))
@pytest.mark.parametrize("name_a", VARIANTS + ("qwen2_bpe>Qwen3",))
def test_every_pair_equals_reference_on_fixed_texts(tokenizers, swapped, name_a, name_b):
    everything = {**tokenizers, **swapped}
    a, b = everything[name_a], everything[name_b]
    rows_a = [a.encode(t) for t in FIXED_TEXTS] + [chat_ids(a, [("system", t), ("user", t), ("assistant", t)]) for t in FIXED_TEXTS]
    rows_b = [b.encode(t) for t in FIXED_TEXTS] + [chat_ids(b, [("system", t), ("user", t), ("assistant", t)]) for t in FIXED_TEXTS]
    ids_a, mask_a = pad_batch(rows_a, max(map(len, rows_a)) + 2, pad_id=a.pad_token_id)
    ids_b, mask_b = pad_batch(rows_b, max(map(len, rows_b)) + 1, pad_id=b.pad_token_id)
    biased = align.Aligner(a, b, bias_matrices=_random_bias(len(a), len(b)), bias_threshold=0.4)
    _assert_equals_reference(a, b, biased, ids_a, ids_b, mask_a, mask_b)
    # Same text on both sides: every text token of a plain-text row is in a chunk.
    # Except for Qwen3 against a family without bos: its bos `<|endoftext|>` is also its
    # pad and eos, the key takes its last slot's value (eos, which the other family has),
    # so the bos is aligned as 13 bytes of text (upstream behaves the same; see
    # docs/alignment.md).
    out = biased.chunk_ids(ids_a, ids_b, mask_a, mask_b, kinds=("unconstrained",))["unconstrained"]
    qwen3_bos_quirk = {a.family.name, b.family.name} & {"Qwen3"} and None in (a.family.bos, b.family.bos)
    assert (biased.dropped_spans > 0) == bool(qwen3_bos_quirk)
    if qwen3_bos_quirk:
        return
    for r in range(len(FIXED_TEXTS)):
        for chunks, ids, mask, tok in ((out.chunks_a[r], ids_a[r], mask_a[r], a), (out.chunks_b[r], ids_b[r], mask_b[r], b)):
            special = set(tok.all_special_tokens)
            text = np.array([m and t not in special for t, m in zip(tok.convert_ids_to_tokens(ids), mask)])
            assert (chunks[text] >= 0).all()
