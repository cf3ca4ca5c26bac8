"""Byteification of the real tokenizers (tools/real_assets.py): plain, `conversion=byte`
(the upstream's byte tokenizer, held to ids the upstream produced), `conversion=pure_byte`,
reloading saved conversions, and SmolLM2's family read from its own chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# `_load` / `_hf` load each spec / directory once per process (150k vocabularies take a second).
from tests.test_byteify import _hf, _load, _longest_from_the_right
from tokenkit import byteify, constants, families, prompts
from tokenkit.byteify import ByteifyTokenizer, TokenizerSpec, load_byteify_tokenizer
from tokenkit.families import Spelling
from tools import real_assets as tool

pytestmark = pytest.mark.real

NAMES = tuple(tool.TOKENIZERS)  # llama3 qwen2 phi3 gpt2 llama2
FACTS = json.loads((Path(__file__).parent / "upstream_byte_ids.json").read_text(encoding="utf-8"))
# Tokenizers that put a SentencePiece space in front of a text (Metaspace / Prepend).
PREPENDS_A_SPACE = {"phi3", "llama2"}

SETTINGS = settings(
    max_examples=40, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _texts(exclude: str = ""):
    """Unicode, mixed with every family's template words and special tokens as text."""
    words = {t for n in families.family_names()[:9] for t in families.get_family(n).template_tokens}
    raw = sorted(constants.chars_to_bytes(w).decode() for w in words)
    alphabet = st.characters(exclude_categories=("Cs",), exclude_characters=exclude)
    part = st.text(alphabet, max_size=10) | st.sampled_from(raw + ["\n", "\n\n\n", " ", "  ", "\t"])
    return st.lists(part, max_size=6).map("".join)


def _spelled(tokenizer: ByteifyTokenizer, text: str) -> bytes:
    return constants.chars_to_bytes("".join(tokenizer.tokenize(text)))


def _only_spaces_added(spelled: bytes, text: bytes) -> bool:
    """Whether deleting some spaces from `spelled` gives `text`."""
    i = 0
    for byte in spelled:
        if i < len(text) and byte == text[i]:
            i += 1
        elif byte != ord(" "):
            return False
    return i == len(text)


# ----------------------------------------------------------------------- plain


@pytest.mark.parametrize("name", NAMES)
def test_plain_ids_are_the_original_and_spell_the_text(real_assets, name):
    tokenizer = _load(real_assets.tokenizer_spec(name))
    hf = _hf(str(real_assets.tokenizer_dir(name)))
    normalizer = hf.backend_tokenizer.normalizer  # Qwen2's NFC is dropped by byteification
    sentencepiece = tokenizer.spelling is Spelling.SENTENCEPIECE
    assert sentencepiece == (name in PREPENDS_A_SPACE)

    @SETTINGS
    @given(_texts(exclude=families.SENTENCEPIECE_SPACE if sentencepiece else ""))
    def check(text):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if normalizer is None or normalizer.normalize_str(text) == text:
            assert ids == hf.encode(text, add_special_tokens=False)
            assert tokenizer.encode(text) == hf.encode(text)
        spelled = _spelled(tokenizer, text)
        if name in PREPENDS_A_SPACE:
            # The tokenizer's own dummy prefix: a space before text pieces (Phi-3's:
            # before each piece between special tokens).
            assert _only_spaces_added(spelled, text.encode()), (text, spelled)
            if not text.startswith(" ") and not any(t in text for t in tokenizer.added_tokens_encoder):
                assert tokenizer.decode(ids) == text
        else:
            assert spelled == text.encode()
            assert tokenizer.decode(ids) == text

    check()


# The families' bos / eos / pad as ids of the real vocabularies.
SPECIAL_IDS = {
    "llama3": (128000, 128009, 128001),  # <|begin_of_text|>, <|eot_id|>, <|end_of_text|>
    "qwen2": (None, 151643, 151643),  # no bos; <|endoftext|>
    "phi3": (None, 32000, 32000),  # no bos; <|endoftext|>
    "gpt2": (None, 50256, 50256),  # <|endoftext|>
    "llama2": (1, 2, 2),  # TinyLlama: <s>, </s>, </s>
}


@pytest.mark.parametrize("name", NAMES)
def test_special_tokens_and_family_ids(real_assets, name):
    tokenizer = _load(real_assets.tokenizer_spec(name))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == SPECIAL_IDS[name]
    family = tokenizer.family
    assert tokenizer.all_special_tokens == list(family.special_tokens)
    for token in family.special_tokens:
        assert token in tokenizer.tokenize(f"a{token}b")
        assert tokenizer.special_tokens_encoder[token] == tokenizer.convert_tokens_to_ids(token)
    for token in family.template_tokens:
        assert tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(token)) == token


def test_phi3_pieces_are_read_as_sentencepiece(real_assets):
    """Phi-3's tokenizer is SentencePiece under a byte-level family (Phi-4-mini's is not)."""
    phi3 = _load(real_assets.tokenizer_spec("phi3"))
    assert phi3.spelling is Spelling.SENTENCEPIECE and families.PHI3.spelling is Spelling.BYTE_LEVEL
    llama2 = _load(real_assets.tokenizer_spec("llama2"))
    assert phi3.tokenize("Grüße aus Köln") == llama2.tokenize("Grüße aus Köln")


# --------------------------------------------------------------- conversions


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("conversion", ["byte", "pure_byte"])
def test_byte_conversions_round_trip(real_assets, name, conversion):
    tokenizer = _load(f"{real_assets.tokenizer_spec(name)}:conversion={conversion}")
    assert tokenizer.convert_ids_to_tokens(list(range(256))) == list(constants.BYTE_CHARS)
    pieces = set(tokenizer.get_vocab())

    @SETTINGS
    @given(_texts())
    def check(text):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        assert _spelled(tokenizer, text) == text.encode()
        if conversion == "pure_byte":
            if not any(t in text for t in tokenizer.family.special_tokens):  # matched whole
                assert ids == list(text.encode())
        else:
            assert tokenizer.tokenize(text) == _longest_from_the_right(
                constants.bytes_to_chars(text.encode()), pieces
            )

    check()


@pytest.mark.parametrize("key", list(FACTS["tokenizers"]))
def test_byte_conversion_equals_the_upstream(real_assets, key):
    """Ids, vocabulary order and special ids the upstream's own code produced (see the
    JSON's `_how`); bos differs only where the family has none: the upstream then
    reports the source tokenizer's leftover bos, ours None."""
    name, suffix = key.split(":", 1)
    facts = FACTS["tokenizers"][key]
    tokenizer = _load(f"{real_assets.tokenizer_spec(name)}:{suffix}")
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert vocab == list(constants.BYTE_CHARS) + facts["vocab"]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (facts["eos_token_id"], facts["pad_token_id"])
    has_bos = tokenizer.family.bos is not None
    assert tokenizer.bos_token_id == (facts["bos_token_id"] if has_bos else None)
    for text, ids in zip(FACTS["texts"], facts["ids"], strict=True):
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text
        assert tokenizer.encode(text) == facts["prefix"] + ids + facts["suffix"], text


def test_byte_conversion_hand_checked(real_assets):
    llama3 = _load(real_assets.tokenizer_spec("llama3") + ":conversion=byte")
    assert llama3.tokenize("\n\n") == ["ĊĊ"]
    assert llama3.tokenize("\n\n\n") == ["Ċ", "ĊĊ"]  # ties: the longest piece ending last
    assert llama3.tokenize(" username") == ["Ġ", "user", "n", "a", "m", "e"]
    qwen2 = _load(real_assets.tokenizer_spec("qwen2") + ":conversion=byte")
    assert [qwen2.tokenize(w) for w in ("user", "system", "assistant")] == [["user"], ["system"], ["assistant"]]
    assert qwen2.tokenize("\n\n") == ["Ċ", "Ċ"]
    llama2 = _load(real_assets.tokenizer_spec("llama2") + ":conversion=byte")
    assert llama2.encode("<s>a</s>") == [257, 257, ord("a"), 256]  # </s> 256, <s> 257; bos added
    assert len(llama2) == 258  # no <unk>: not a template token
    gpt2 = _load(real_assets.tokenizer_spec("gpt2") + ":conversion=byte")
    assert len(gpt2) == 257 and gpt2.tokenize("user") == list("user")
    # Phi-3's tokenizer adds <s>, which the Phi3 byte vocabulary lacks (the upstream
    # fails here): the Phi3 rule, no bos.
    phi3 = _load(real_assets.tokenizer_spec("phi3") + ":conversion=byte")
    assert phi3.encode("Hi") == [ord("H"), ord("i")] and phi3.bos_token_id is None


@pytest.mark.parametrize("name", ["qwen2", "llama2"])
@pytest.mark.parametrize("conversion", ["byte", "pure_byte"])
def test_saved_conversions_reload_with_identical_ids(real_assets, name, conversion, tmp_path):
    tokenizer = _load(f"{real_assets.tokenizer_spec(name)}:conversion={conversion}")
    tokenizer.save_pretrained(tmp_path)
    again = load_byteify_tokenizer(f"{tmp_path}:source={tokenizer.family.name}:conversion=prebyteified")
    assert again.get_vocab() == tokenizer.get_vocab()
    assert (again.bos_token_id, again.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)

    @SETTINGS
    @given(_texts())
    def check(text):
        assert again.encode(text) == tokenizer.encode(text)
        assert again.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)

    check()


# ------------------------------------------------------- SmolLM2: source=auto


SMOLLM2_SLOTS = dict(
    bos=None,
    pad=("<|im_end|>",),
    start_header=("<|im_start|>",),
    end_header=("Ċ",),
    eos=("<|im_end|>",),
    eot=("<|im_end|>", "Ċ"),
    system_name=("system",),
    user_name=("user",),
    assistant_name=("ass", "istant"),  # two tokens: why no named family fits
)

CONVERSATIONS = (
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?\n\nThanks"},
    ],
    [{"role": "system", "content": "Grüße 東京 😀"}, {"role": "user", "content": " lead and trail \n"}],
    [{"role": "system", "content": "x"}, {"role": "user", "content": "assistant user system"}],
)


def test_smollm2_family_is_read_from_its_template(real_assets):
    spec = real_assets.smollm2_tokenizer_spec
    assert spec.endswith(":source=auto") and str(TokenizerSpec.parse(spec)) == spec
    tokenizer = _load(spec)
    family = tokenizer.family
    assert {slot: family.slot(slot) for slot in families.SLOTS} == SMOLLM2_SLOTS
    assert family.name == f"auto({real_assets.smollm2_dir})" and family.spelling is Spelling.BYTE_LEVEL
    assert set(family.special_tokens) == {"<|im_start|>", "<|im_end|>"}
    assert family.name not in families.family_names()  # read, not registered
    for name in families.family_names()[:9]:  # it is none of the named families
        assert {s: families.get_family(name).slot(s) for s in families.SLOTS} != SMOLLM2_SLOTS


@pytest.mark.parametrize("conversion", ["", ":conversion=byte"])
def test_smollm2_prompts_equal_its_chat_template(real_assets, conversion):
    tokenizer = _load(real_assets.smollm2_tokenizer_spec + conversion)
    hf = _hf(str(real_assets.smollm2_dir)) if not conversion else tokenizer.tokenizer
    for messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            prompt = prompts.preprocess_messages(messages, add_generation_prompt=generation_prompt)
            ours = prompts.encode_prompt(prompt, tokenizer).ids
            theirs = hf.apply_chat_template(messages, add_generation_prompt=generation_prompt, return_dict=False)
            assert ours == theirs, (messages, tokenizer.convert_ids_to_tokens(ours))


def test_smollm2_byte_conversion_reloads_as_the_same_family(real_assets, tmp_path):
    byte = _load(real_assets.smollm2_tokenizer_spec + ":conversion=byte")
    assert byte.convert_ids_to_tokens(list(range(256, len(byte)))) == [
        "<|im_end|>", "<|im_start|>", "ass", "istant", "system", "user",
    ]
    byte.save_pretrained(tmp_path)
    again = load_byteify_tokenizer(f"{tmp_path}:source=auto:conversion=prebyteified")
    assert {s: again.family.slot(s) for s in families.SLOTS} == SMOLLM2_SLOTS
    text = "<|im_start|>assistant\nGrüße, user!<|im_end|>\n"
    assert again.encode(text) == byte.encode(text)


def test_auto_refuses_templates_it_cannot_read(real_assets):
    with pytest.raises(ValueError, match="it has no chat template"):
        load_byteify_tokenizer(f"{real_assets.tokenizer_dir('gpt2')}:source=auto")
    # Phi-3's template ignores system messages.
    with pytest.raises(ValueError, match="drops the content of a system message"):
        load_byteify_tokenizer(f"{real_assets.tokenizer_dir('phi3')}:source=auto")
    with pytest.raises(ValueError, match="target=auto is not supported"):
        TokenizerSpec.parse(f"{real_assets.smollm2_dir}:source=Qwen2:target=auto")
    with pytest.raises(ValueError, match="read from the tokenizer when it is loaded"):
        TokenizerSpec.parse(real_assets.smollm2_tokenizer_spec).source_family


def test_smollm2_with_a_named_target(real_assets):
    """source=auto with target=: Qwen2's template needs `assistant` as one token, which
    SmolLM2 lacks; its byte conversion has every template token."""
    with pytest.raises(ValueError, match="not in its byte-level vocabulary: 'assistant'"):
        load_byteify_tokenizer(real_assets.smollm2_tokenizer_spec + ":target=Qwen2")
    tokenizer = _load(real_assets.smollm2_tokenizer_spec + ":target=Qwen2:conversion=byte")
    assert tokenizer.family is families.QWEN2 and tokenizer.tokenize("assistant") == ["assistant"]
    assert tokenizer.tokenizer.chat_template is None  # SmolLM2's would render other tokens
    assert byteify.detect_spelling(_load(real_assets.smollm2_tokenizer_spec).tokenizer) is Spelling.BYTE_LEVEL
