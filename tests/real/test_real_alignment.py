"""Alignment of the real tokenizers (tools/real_assets.py), every ordered pair of them
plain and byte-converted, SmolLM2's family read from its template among them: the
compiled `Aligner` against the per-token reference, on fixed texts, chats (slot-built
and through `tokenkit.prompts`) and hypothesis texts, as `tests/test_align.py` does
on the tiny world (whose helpers these tests use)."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

from tests.test_align import FIXED_TEXTS, _assert_equals_reference, _texts, chat_ids, pad_batch
from tokenkit import align, prompts
from tokenkit.byteify import ByteifyTokenizer, load_byteify_tokenizer
from tools import real_assets as tool

pytestmark = pytest.mark.real

PLAIN = (*tool.TOKENIZERS, "smollm2")  # llama3 qwen2 phi3 gpt2 llama2 smollm2
NAMES = tuple(f"{name}{suffix}" for name in PLAIN for suffix in ("", "+byte"))
MESSAGES = (
    [("system", "Be brief."), ("user", "Wie geht's?\n\nGut."), ("assistant", "user\n\n\nassistant — 東京")],
    [("user", "  two spaces, a\ttab"), ("assistant", "ok")],
)


def _spec(assets: tool.RealAssets, name: str) -> str:
    plain, _, conversion = name.partition("+")
    spec = assets.smollm2_tokenizer_spec if plain == "smollm2" else assets.tokenizer_spec(plain)
    return f"{spec}:conversion={conversion}" if conversion else spec


@pytest.fixture(scope="module")
def tokenizers(real_assets) -> dict[str, ByteifyTokenizer]:
    """Each real tokenizer plain (`qwen2`) and byte-converted (`qwen2+byte`), loaded once."""
    return {name: load_byteify_tokenizer(_spec(real_assets, name)) for name in NAMES}


def _bias(a: ByteifyTokenizer, b: ByteifyTokenizer, ids_a: np.ndarray, ids_b: np.ndarray, seed: int = 0):
    """Random bias matrices `[len(a), len(b)]` with entries on pairs of ids the rows use
    (random entries of 150k x 150k matrices would never be looked up)."""
    rng = np.random.default_rng(seed)
    used_a, used_b = np.unique(ids_a), np.unique(ids_b)
    n = 4 * (len(used_a) + len(used_b))

    def one():
        rows, cols = rng.choice(used_a, n), rng.choice(used_b, n)
        return sparse.csr_matrix((rng.random(n), (rows, cols)), shape=(len(a), len(b)))

    return one(), one()


def _prompt_ids(tokenizer: ByteifyTokenizer, messages, generation_prompt: bool) -> list[int]:
    conversation = [{"role": role, "content": content} for role, content in messages]
    text = prompts.preprocess_messages(conversation, add_generation_prompt=generation_prompt)
    return prompts.encode_prompt(text, tokenizer).ids


def _text_ids(tokenizer: ByteifyTokenizer, text: str) -> list[int]:
    """A plain text with the family's bos and eos (`direct_encode`). Not `encode(text)`:
    Phi-3's tokenizer adds `<s>`, which the Phi3 family does not know, so the other
    side would see three bytes of text it lacks."""
    return prompts.encode_prompt(prompts.preprocess_prompt(text, "direct_encode"), tokenizer).ids


def _rows(tokenizer: ByteifyTokenizer) -> list[list[int]]:
    """Plain texts (first), chats from the family's slots, chats through `prompts`."""
    rows = [_text_ids(tokenizer, t) for t in FIXED_TEXTS]
    rows += [tokenizer.encode(t, add_special_tokens=False) for t in FIXED_TEXTS]
    rows += [chat_ids(tokenizer, list(m)) for m in MESSAGES]
    rows += [_prompt_ids(tokenizer, m, g) for m in MESSAGES for g in (False, True)]
    rows.append(prompts.encode_prompt(prompts.preprocess_prompt(FIXED_TEXTS[1], "surround_instruct"), tokenizer).ids)
    return rows


@pytest.mark.parametrize("name_a, name_b", list(itertools.product(NAMES, NAMES)))
def test_every_pair_equals_reference(tokenizers, name_a, name_b):
    a, b = tokenizers[name_a], tokenizers[name_b]
    rows_a, rows_b = _rows(a), _rows(b)
    ids_a, mask_a = pad_batch(rows_a, max(map(len, rows_a)) + 1, pad_id=a.pad_token_id)
    ids_b, mask_b = pad_batch(rows_b, max(map(len, rows_b)) + 2, pad_id=b.pad_token_id)
    aligner = align.Aligner(a, b, bias_matrices=_bias(a, b, ids_a, ids_b), bias_threshold=0.4)
    _assert_equals_reference(a, b, aligner, ids_a, ids_b, mask_a, mask_b)
    # One text on both sides: every text token of a plain-text row is in a chunk, unless
    # a token of the text is a template word (see the test below).
    out = aligner.chunk_ids(ids_a, ids_b, mask_a, mask_b, kinds=("unconstrained",))["unconstrained"]
    words = set(a.family.template_tokens) | set(b.family.template_tokens)
    checked = 0
    for r in range(2 * len(FIXED_TEXTS)):
        sides = ((out.chunks_a[r], ids_a[r], mask_a[r], a), (out.chunks_b[r], ids_b[r], mask_b[r], b))
        tokens = [set(tok.convert_ids_to_tokens(ids[mask])) - set(tok.all_special_tokens) for _, ids, mask, tok in sides]
        if any(t & words for t in tokens):
            continue
        checked += 1
        for chunks, ids, mask, tok in sides:
            special = set(tok.all_special_tokens)
            text = np.array([m and t not in special for t, m in zip(tok.convert_ids_to_tokens(ids), mask)])
            assert (chunks[text] >= 0).all(), (name_a, name_b, r)
    assert checked >= 2  # "Boats rest in the harbour." at least, with and without bos/eos


@functools.cache
def _aligner(a: ByteifyTokenizer, b: ByteifyTokenizer) -> align.Aligner:
    return align.Aligner(a, b)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_aligner_equals_reference_on_hypothesis_texts(tokenizers, data):
    name_a, name_b = data.draw(st.sampled_from(NAMES)), data.draw(st.sampled_from(NAMES))
    a, b = tokenizers[name_a], tokenizers[name_b]
    texts = data.draw(st.lists(_texts, min_size=1, max_size=3))
    roles = st.sampled_from(["system", "user", "assistant"])
    chat = data.draw(st.lists(st.tuples(roles, _texts), min_size=1, max_size=3))
    rows_a = [_text_ids(a, t) for t in texts] + [_prompt_ids(a, chat, True), chat_ids(a, chat)]
    rows_b = [_text_ids(b, t) for t in texts] + [_prompt_ids(b, chat, True), chat_ids(b, chat)]
    ids_a, mask_a = pad_batch(rows_a, max(map(len, rows_a)) + 1, pad_id=a.pad_token_id)
    ids_b, mask_b = pad_batch(rows_b, max(map(len, rows_b)) + 1, pad_id=b.pad_token_id)
    aligner = _aligner(a, b)
    ref = align.reference_chunk_ids(ids_a, ids_b, a, b, mask_a, mask_b, kinds=("unconstrained", "space"))
    fast = aligner.chunk_ids(ids_a, ids_b, mask_a, mask_b, kinds=("unconstrained", "space"))
    for kind in ("unconstrained", "space"):
        np.testing.assert_array_equal(fast[kind].chunks_a, ref[kind][0], err_msg=kind)
        np.testing.assert_array_equal(fast[kind].chunks_b, ref[kind][1], err_msg=kind)


def test_template_words_in_byte_text_align_by_their_bytes(tokenizers):
    """conversion=byte finds `ĊĊ` and `user` inside text; chunks still spell equal bytes."""
    llama, byte = tokenizers["llama3"], tokenizers["llama3+byte"]
    text = "user\n\n\nusername"
    ids_a, ids_b = llama.encode(text), byte.encode(text)
    toks_a, toks_b = llama.convert_ids_to_tokens(ids_a), byte.convert_ids_to_tokens(ids_b)
    assert toks_b == ["user", "Ċ", "ĊĊ", "user", "n", "a", "m", "e"]  # the GGUF Llama 3 adds no bos
    out = _aligner(llama, byte).chunk_ids(np.array([ids_a]), np.array([ids_b]), kinds=("unconstrained",))
    chunks_a, chunks_b = out["unconstrained"].chunks_a[0], out["unconstrained"].chunks_b[0]
    assert (chunks_a >= 0).all() and (chunks_b >= 0).all()
    for k in range(int(out["unconstrained"].num_chunks[0])):
        spelled_a = "".join(t for t, c in zip(toks_a, chunks_a) if c == k)
        spelled_b = "".join(t for t, c in zip(toks_b, chunks_b) if c == k)
        assert spelled_a == spelled_b, k


def test_template_words_in_text_against_a_family_without_the_slot(tokenizers):
    """A known limit of the alignment (the upstream's algorithm): a token spelling a slot
    word is read as that slot; where the other family lacks the slot, it is skipped as a
    one-sided special token, so the rest of the text no longer aligns (the spans are
    dropped). conversion=byte makes such tokens from text (`user` below; Llama 3's `ĊĊ`),
    so texts holding template words meet this more often than with subword tokenizers."""
    a, b = tokenizers["llama3+byte"], tokenizers["gpt2"]
    text = "hello\tuser model"
    ids_a, ids_b = _text_ids(a, text), _text_ids(b, text)
    assert "user" in a.convert_ids_to_tokens(ids_a) and b.family.user_name is None
    aligner = align.Aligner(a, b)
    out = aligner.chunk_ids(np.array([ids_a]), np.array([ids_b]), kinds=("unconstrained",))["unconstrained"]
    assert aligner.dropped_spans > 0
    user = a.convert_ids_to_tokens(ids_a).index("user")
    assert (out.chunks_a[0][1:user] >= 0).all() and (out.chunks_a[0][user:] == -1).all()


# The families whose templates fill the same slots (header start, role name, header end,
# end of turn): Phi-3 (no header start, system as user), GPT-2 and Llama 2 render other
# texts, whose differing bytes are dropped by design.
SAME_SLOTS = ("llama3", "qwen2", "smollm2")


@pytest.mark.parametrize("name_a, name_b", list(itertools.product(SAME_SLOTS, SAME_SLOTS)))
def test_one_conversation_on_both_sides_drops_no_span(tokenizers, name_a, name_b):
    """A conversation rendered by each side's family is one text: no span of it may be
    dropped as two different byte strings. (SmolLM2's eos `<|im_end|>` starts its end of
    turn `<|im_end|>Ċ`; matched first, it cut every turn against Qwen2's ChatML.)"""
    a, b = tokenizers[name_a], tokenizers[name_b]
    messages = [[("system", "Be brief."), ("user", "Which city is the capital of Italy?"),
                 ("assistant", "Rome is the capital of Italy.")], [("user", "Hi"), ("assistant", "Hello!")]]
    rows_a = [_prompt_ids(a, m, False) for m in messages]
    rows_b = [_prompt_ids(b, m, False) for m in messages]
    ids_a, mask_a = pad_batch(rows_a, max(map(len, rows_a)), pad_id=a.pad_token_id)
    ids_b, mask_b = pad_batch(rows_b, max(map(len, rows_b)), pad_id=b.pad_token_id)
    aligner = align.Aligner(a, b)
    out = aligner.chunk_ids(ids_a, ids_b, mask_a, mask_b, kinds=("unconstrained",))["unconstrained"]
    assert aligner.dropped_spans == 0
    # system, user and assistant turns (or user and assistant): words and slot runs
    assert (out.num_chunks >= [20, 8]).all()
