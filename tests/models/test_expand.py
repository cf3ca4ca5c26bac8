"""Input-id expansion against an independent dict-based reference (the upstream's
algorithm, with our documented semantics), on tiny-world text and hypothesis text."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenkit import byteify, constants, families, prompts
from tokenkit.models import expand
from tokenkit.models.config import ModelConfig
from tokenkit.models.transformer import init_params, make_transformer

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

OLD = ("llama3_bpe", "gemma2_sp", "qwen2_bpe")
WIDTH = 64  # hypothesis rows are padded / cut to this, so one compilation serves all


@functools.cache
def _tok(spec: str) -> byteify.ByteifyTokenizer:
    return byteify.load_byteify_tokenizer(spec)


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer_specs):
    """old name -> (byte tokenizer, old tokenizer, Expansion)."""
    out = {}
    for name in OLD:
        spec = tiny_tokenizer_specs[name]
        new, old = _tok(spec + ":conversion=byte"), _tok(spec)
        out[name] = (new, old, expand.build_expansion(new, old))
    return out


_apply = expand.expand_input_ids


class Reference:
    """Expansion written plainly: a dict from old tokens' bytes (last byte first) to old
    ids, and a Python walk over each row keeping the bytes of the text tokens seen since
    the last special token or padding."""

    def __init__(self, new, old, max_length=constants.EXPAND_INPUT_IDS_MAX_LENGTH):
        self.new, self.old, self.max_length = new, old, max_length
        self.none = len(old)
        old_special = set(old.all_special_ids)
        self.new_special = set(new.all_special_ids)
        self.table: dict[bytes, int] = {}
        for spelling, old_id in old.get_vocab().items():
            data = constants.chars_to_bytes(spelling)
            if old_id in old_special or len(data) > max_length:
                continue
            self.table[data[::-1]] = old_id
        old_vocab = old.get_vocab()
        by_slot = {}
        for slot in families.SLOTS[::-1]:
            a, b = new.family.first_token(slot), old.family.first_token(slot)
            if a and b:
                by_slot[a] = b
        self.direct = {}
        for i in self.new_special:
            s = new.convert_ids_to_tokens(i)
            if s in old_vocab:
                self.direct[i] = old_vocab[s]
            else:
                self.direct[i] = old_vocab[by_slot[s]] if s in by_slot else self.none

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.full(ids.shape, self.none, np.int64)
        for b in range(ids.shape[0]):
            history = b""  # most recent byte first
            for i in range(ids.shape[1]):
                t = int(ids[b, i])
                if not mask[b, i]:
                    history = b""
                    continue
                if t in self.new_special:
                    history = b""
                    out[b, i] = self.direct[t]
                    continue
                data = constants.chars_to_bytes(self.new.convert_ids_to_tokens(t))
                history = (data[::-1] + history)[: self.max_length]
                for n in range(len(history), 0, -1):
                    if history[:n] in self.table:
                        out[b, i] = self.table[history[:n]]
                        break
        return out


@functools.cache
def _reference(name: str, spec: str) -> Reference:
    return Reference(_tok(spec + ":conversion=byte"), _tok(spec))


def _batch(tokenizer, texts, width=None):
    enc = tokenizer(list(texts), padding="max_length" if width else True, truncation=bool(width),
                    max_length=width, return_tensors="np", add_special_tokens=False)
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def _validation_texts(n_prose: int, n_chat: int) -> list[str]:
    prose, chat = [], []
    with open(DATA_DIR / "corpus" / "validation.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if "text" in record and len(prose) < n_prose:
                prose.append(record["text"][:600])
            elif "messages" in record and len(chat) < n_chat:
                chat += [m["content"] for m in record["messages"]]
    return prose + chat


@pytest.mark.parametrize("name", OLD)
def test_equals_reference_on_tiny_world_texts(pairs, tiny_tokenizer_specs, name):
    new, old, expansion = pairs[name]
    reference = _reference(name, tiny_tokenizer_specs[name])
    texts = _validation_texts(n_prose=30, n_chat=10)
    ids, mask = _batch(new, texts)
    got = np.asarray(_apply(expansion, ids, mask))
    want = reference(ids, mask)
    np.testing.assert_array_equal(got, want)
    # Subword ids, not just bytes: many positions find an old token longer than a byte.
    lengths = [len(old.convert_ids_to_tokens(int(i))) for i in got[mask.astype(bool)]]
    assert np.mean(np.asarray(lengths) > 1) > 0.3


# Pieces of common words (so long old tokens match) mixed with arbitrary code points.
_TEXT = st.lists(
    st.one_of(
        st.sampled_from(list(" \n\tabcdeéüß0123456789,.-Ġ") + ["the", " the", "ing", " Straße"]),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=20,
).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_TEXT, min_size=3, max_size=3))
def test_equals_reference_on_generated_unicode(pairs, tiny_tokenizer_specs, texts):
    for name in ("llama3_bpe", "gemma2_sp"):
        new, _, expansion = pairs[name]
        ids, mask = _batch(new, texts, width=WIDTH)
        np.testing.assert_array_equal(
            np.asarray(_apply(expansion, ids, mask)),
            _reference(name, tiny_tokenizer_specs[name])(ids, mask),
        )


def test_padding_and_masks(pairs):
    new, _, expansion = pairs["llama3_bpe"]
    text = "Die Straße ist lang, the end."
    ids, mask = _batch(new, [text])
    n = ids.shape[1]
    padded = np.concatenate([ids, np.full((1, 9), new.pad_token_id, np.int32)], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((1, 9), np.int32)], axis=1)
    short = np.asarray(expansion.apply(ids, mask))
    long = np.asarray(expansion.apply(padded, padded_mask))
    np.testing.assert_array_equal(long[:, :n], short)
    assert (long[:, n:] == expansion.none_id).all()
    # A masked position in the middle cuts the lookback: the byte after it starts afresh.
    holed = mask.copy()
    holed[0, 5] = 0
    got = np.asarray(expansion.apply(ids, holed))
    assert got[0, 5] == expansion.none_id
    assert len(_tok_spelling(pairs, got[0, 6])) == 1
    # No mask means every position is real.
    np.testing.assert_array_equal(np.asarray(expansion.apply(ids)), short)


def _tok_spelling(pairs, old_id):
    return pairs["llama3_bpe"][1].convert_ids_to_tokens(int(old_id))


def test_longest_old_token_ending_at_each_byte(pairs):
    new, old, expansion = pairs["llama3_bpe"]
    ids, mask = _batch(new, [" the"])
    got = [old.convert_ids_to_tokens(int(i)) for i in np.asarray(expansion.apply(ids, mask))[0]]
    assert got[-1] == "Ġthe" and got[0] == "Ġ"
    old_vocab = old.get_vocab()
    for position, token in enumerate(got):
        spelled = "Ġthe"[: position + 1]
        assert spelled.endswith(token) and token in old_vocab
        longer = [spelled[k:] for k in range(0, len(spelled) - len(token))]
        assert not any(s in old_vocab for s in longer)


def test_special_and_template_tokens(pairs):
    new, old, expansion = pairs["llama3_bpe"]
    prompt = prompts.preprocess_messages([{"role": "user", "content": "Hi"}])
    ids = np.asarray([prompts.encode_prompt(prompt, new).ids], np.int32)
    got = np.asarray(expansion.apply(ids))[0]
    spelled_new = new.convert_ids_to_tokens(ids[0].tolist())
    spelled_old = old.convert_ids_to_tokens(got.tolist())
    for s_new, s_old, i in zip(spelled_new, spelled_old, ids[0]):
        if int(i) in new.all_special_ids or len(s_new) > 1:
            assert s_old == s_new  # <|begin_of_text|>, user, ĊĊ, <|eot_id|>: the same token
    assert "user" in spelled_new and "ĊĊ" in spelled_new


def test_other_family_specials_map_through_slots(tiny_tokenizer_specs):
    # A Gemma2-family byte tokenizer over Llama3 embeddings: <bos> -> <|begin_of_text|>,
    # and the template word `model` (not a Llama3 token) -> its longest Llama3 suffix.
    new = _tok(tiny_tokenizer_specs["gemma2_sp"] + ":conversion=byte")
    old = _tok(tiny_tokenizer_specs["llama3_bpe"])
    expansion = expand.build_expansion(new, old)
    ids = np.asarray([[new.convert_tokens_to_ids(t) for t in ("<bos>", "<start_of_turn>", "model")]])
    got = old.convert_ids_to_tokens(np.asarray(expansion.apply(ids))[0].tolist())
    assert got[:2] == ["<|begin_of_text|>", "<|start_header_id|>"]
    assert "model".endswith(got[2])
    reference = Reference(new, old)
    np.testing.assert_array_equal(np.asarray(expansion.apply(ids)), reference(ids, np.ones_like(ids)))


def test_hash_collisions_never_give_a_wrong_id(pairs, tiny_tokenizer_specs):
    new, old, expansion = pairs["gemma2_sp"]
    weak = expand.build_expansion(new, old, hash_bits=6)  # 64 buckets for ~4000 keys
    assert weak.max_group > 50 and expansion.max_group < 4
    texts = _validation_texts(n_prose=3, n_chat=4)
    ids, mask = _batch(new, texts)
    np.testing.assert_array_equal(
        np.asarray(_apply(weak, ids, mask)), np.asarray(_apply(expansion, ids, mask))
    )


def test_short_max_length_and_long_tokens_left_out(tiny_tokenizer_specs):
    spec = tiny_tokenizer_specs["llama3_bpe"]
    new, old = _tok(spec + ":conversion=byte"), _tok(spec)
    expansion = expand.build_expansion(new, old, max_length=3)
    ids, mask = _batch(new, _validation_texts(n_prose=4, n_chat=4))
    got = np.asarray(expansion.apply(ids, mask))
    assert max(len(old.convert_ids_to_tokens(int(i))) for i in got[mask.astype(bool)]) == 3
    np.testing.assert_array_equal(got, Reference(new, old, max_length=3)(ids, mask))


def test_works_under_jit_as_closure_and_vmap(pairs):
    new, _, expansion = pairs["qwen2_bpe"]
    ids, mask = _batch(new, ["alpha beta", "γάμμα δέλτα"])
    eager = np.asarray(expand.expand_input_ids(expansion, ids, mask))
    closed = jax.jit(lambda i, m: expansion.apply(i, m))
    np.testing.assert_array_equal(np.asarray(closed(ids, mask)), eager)
    per_row = jax.vmap(lambda i, m: expansion.apply(i[None], m[None])[0])(ids, mask)
    np.testing.assert_array_equal(np.asarray(per_row), eager)


def test_embedding_table_and_forward(pairs):
    new, old, expansion = pairs["llama3_bpe"]
    old_embeddings = np.random.default_rng(0).normal(size=(len(old) + 32, 8)).astype(np.float32)
    table = expansion.embedding_table(old_embeddings, pad_to_multiple_of=64)
    assert table.shape == (4160, 8) and expansion.none_id == len(old) == 4096
    np.testing.assert_array_equal(table[: len(old)], old_embeddings[: len(old)])
    assert not table[len(old):].any()
    with pytest.raises(ValueError, match=r"4096 tokens .* shape \(100, 8\)"):
        expansion.embedding_table(old_embeddings[:100])

    config = ModelConfig(architecture="llama", vocab_size=320, hidden_size=8, intermediate_size=16,
                         num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4)
    model = make_transformer(config)
    params = init_params(model, 0)
    params["expand_embedder"] = {"embedding": jnp.asarray(table)}
    ids, mask = _batch(new, ["the cat", "a"])
    expanded = expansion.apply(ids, mask)
    out = model.apply({"params": params}, ids, mask, expanded_input_ids=expanded)
    assert np.isfinite(np.asarray(out.logits)).all()  # padding hits the zero row, not NaN
    plain = model.apply({"params": params}, ids, mask)
    assert not np.allclose(np.asarray(out.logits), np.asarray(plain.logits))


def test_tokenizer_without_all_bytes_is_refused(tiny_tokenizer_specs):
    from tests.models.test_fvt import _ascii_only_tokenizer

    old = _tok(tiny_tokenizer_specs["llama3_bpe"])
    with pytest.raises(ValueError, match=r"conversion=byte.*lacks 161 of the 256"):
        expand.build_expansion(_ascii_only_tokenizer(), old)


def test_old_tokens_spelled_across_kept_multi_byte_tokens(pairs):
    """`conversion=byte` keeps template words such as `ĊĊ` as tokens inside text (as the
    upstream does); the expansion reads their bytes, so in `x):\\n\\n\\n` the kept `ĊĊ`
    finds the old `ĊĊĊ`, whose bytes span it and the single `Ċ` before it."""
    new, old, expansion = pairs["llama3_bpe"]
    ids = new.encode("x):\n\n\n", add_special_tokens=False)
    assert new.convert_ids_to_tokens(ids) == ["x", ")", ":", "Ċ", "ĊĊ"]
    got = old.convert_ids_to_tokens(np.asarray(_apply(expansion, np.asarray([ids]))[0]).tolist())
    assert got[-3:] == ["):", "):Ċ", "ĊĊĊ"]
    # ... and a kept token right after a special token starts a new run.
    bos = new.bos_token_id
    row = [bos] + new.encode("\n\n", add_special_tokens=False)
    out = np.asarray(_apply(expansion, np.asarray([row]))[0]).tolist()
    assert old.convert_ids_to_tokens(out[1:]) == ["ĊĊ"]
