"""Tokenizer specs and ByteifyTokenizer on the tiny-world tokenizers."""

import dataclasses
import functools
import logging
import pickle
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import normalizers
from transformers import AutoTokenizer

from tokenkit import byteify, constants, families, hub
from tokenkit.byteify import ByteifyTokenizer, TokenizerSpec, load_byteify_tokenizer
from tokenkit.families import Spelling

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = ("llama3_bpe", "qwen2_bpe", "gemma2_sp")


@functools.cache
def _load(spec: str) -> ByteifyTokenizer:
    """Cached for read-only use; tests that mutate a tokenizer load their own."""
    return load_byteify_tokenizer(spec)


@functools.cache
def _hf(path: str):
    return AutoTokenizer.from_pretrained(path)


def _path(spec: str) -> str:
    return spec.split(":")[0]


@pytest.fixture(scope="module")
def specs(tiny_tokenizer_specs):
    return tiny_tokenizer_specs


# ------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "text",
    [
        "data/tokenizers/llama3_bpe:source=Llama3",
        "google/gemma-2-2b-it:source=Gemma2:target=Qwen2",
        "/abs/dir:source=Gemma2:target=Llama3:conversion=byte",
        "x:source=Qwen2:conversion=manual_add_prefix_space",
    ],
)
def test_spec_round_trips(text):
    spec = TokenizerSpec.parse(text)
    assert str(spec) == text
    assert TokenizerSpec.parse(str(spec)) == spec


def test_spec_fields_and_families():
    spec = TokenizerSpec.parse("dir:conversion=byte:target=Qwen2:source=Gemma2")
    assert (spec.name, spec.source, spec.target, spec.conversion) == ("dir", "Gemma2", "Qwen2", "byte")
    assert str(spec) == "dir:source=Gemma2:target=Qwen2:conversion=byte"  # canonical order
    assert spec.source_family is families.GEMMA2
    assert spec.target_family is families.QWEN2
    assert TokenizerSpec.parse("dir:source=Llama3").target_family is families.LLAMA3
    with pytest.raises(AttributeError):
        spec.source = "Llama3"  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, message",
    [
        ("data/tokenizers/llama3_bpe", "lacks the required key 'source'"),
        ("dir:target=Qwen2", "lacks the required key 'source'.*known families: .*Llama3"),
        ("dir:source=Llama3:flavour=x", "unknown key 'flavour'; valid keys: source, target, conversion"),
        ("dir:source=Llama4", "Unknown model family 'Llama4'.*known families: Qwen2, Qwen3, Llama3"),
        ("dir:source=Llama3:target=Nope", "Unknown model family 'Nope'"),
        ("dir:source=Llama3:conversion=bytes", "Unknown conversion 'bytes'; valid conversions: byte, pure_byte, prebyteified, manual_add_prefix_space"),
        ("dir:source", "'source' is not of the form key=value"),
        ("dir:Llama3", "'Llama3' is not of the form key=value"),
        ("dir:source=Llama3:source=Qwen2", "key 'source' is given twice"),
        ("dir:source=", "key 'source' has an empty value"),
        (":source=Llama3", "empty NAME"),
    ],
)
def test_bad_specs_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message) as info:
        TokenizerSpec.parse(text)
    assert repr(text) in str(info.value)
    with pytest.raises(ValueError, match=message):
        load_byteify_tokenizer(text)


@pytest.mark.parametrize(
    "name",
    [
        "data/tokenizers/missing",  # a relative path under an existing folder
        "/nonexistent/tokenizer",
        "./missing_tokenizer_dir",
        "~/surely_missing_tokenizer_dir",
        "tokenizers/a/b",
    ],
)
def test_missing_local_path_says_it_does_not_exist(name, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(FileNotFoundError, match=f"Tokenizer path '{re.escape(name)}' does not exist"):
        load_byteify_tokenizer(f"{name}:source=Llama3")


@pytest.mark.parametrize(
    "name, local",
    [
        ("google/gemma-2-2b-it", False),
        ("gpt2", False),
        ("Qwen/Qwen2.5-1.5B", False),
        ("data/missing", True),  # data/ exists here, so this names a local folder
        ("a/b/c", True),
        ("./gpt2", True),
        ("/gpt2", True),
        ("~/gpt2", True),
        ("has space/x", True),
    ],
)
def test_local_path_detection(name, local, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert hub.looks_like_local_path(name) is local


def test_existing_relative_path_loads(specs, monkeypatch):
    path = Path(_path(specs["llama3_bpe"]))
    monkeypatch.chdir(path.parent)
    tokenizer = load_byteify_tokenizer(f"./{path.name}:source=Llama3")
    assert tokenizer.encode("hello", add_special_tokens=False) == _hf(str(path)).encode(
        "hello", add_special_tokens=False
    )


# -------------------------------------------------------------- byteification


@pytest.mark.parametrize("name", TINY)
def test_vocabulary_is_byte_level_and_ids_are_unchanged(specs, name):
    tokenizer = _load(specs[name])
    hf = _hf(_path(specs[name]))
    assert len(tokenizer) == len(hf)
    spellings = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    assert all(constants.is_byte_level(t) for t in spellings)
    # Every id spells the bytes its piece stands for.
    pieces = hf.get_vocab()
    sentencepiece = name == "gemma2_sp"
    added = {i for i in hf.added_tokens_decoder}
    for piece, i in pieces.items():
        if families.byte_fallback_value(piece) is not None and sentencepiece:
            expected = bytes([families.byte_fallback_value(piece)])
        elif i in added or sentencepiece:
            expected = piece.replace("▁", " ").encode()
        else:
            expected = constants.chars_to_bytes(piece)
        assert constants.chars_to_bytes(spellings[i]) == expected, (i, piece, spellings[i])
    # A spelling converts back to an id with the same spelling.
    vocab = tokenizer.get_vocab()
    assert all(spellings[i] == t for t, i in vocab.items())


def test_sentencepiece_byte_fallback_loses_to_real_pieces(specs):
    tokenizer = _load(specs["gemma2_sp"])
    hf = _hf(_path(specs["gemma2_sp"]))
    real = {}
    for piece, i in hf.get_vocab().items():
        if families.byte_fallback_value(piece) is None:
            real.setdefault(tokenizer.convert_ids_to_tokens(i), []).append(i)
    collisions = 0
    for byte in range(256):
        fallback_id = hf.convert_tokens_to_ids(f"<0x{byte:02X}>")
        spelled = constants.BYTE_CHARS[byte]
        assert tokenizer.convert_ids_to_tokens(fallback_id) == spelled
        if spelled in real:
            collisions += 1
            assert tokenizer.convert_tokens_to_ids(spelled) == min(real[spelled])
        else:
            assert tokenizer.convert_tokens_to_ids(spelled) == fallback_id
    assert collisions > 50  # ASCII letters, digits, "\n", ... all have real pieces
    # The rule matches tokenization: a newline is encoded as the real piece.
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert newline == [tokenizer.convert_tokens_to_ids("Ċ")]
    assert hf.convert_ids_to_tokens(newline[0]) != "<0x0A>"


def _is_cjk(text: str) -> bool:
    return any(unicodedata.name(c, "").startswith(("CJK", "HIRAGANA", "KATAKANA")) for c in text)


def _common_words(a: ByteifyTokenizer, b: ByteifyTokenizer) -> list[str]:
    """Space-led words built from tokens both vocabularies share, which both tokenizers
    split into the same byte-level tokens (" über" -> ["ĠÃ¼ber"], " 城市" -> ["Ġ", "åŁİå¸Ĥ"])."""
    words = []
    for token in sorted(set(a.get_vocab()) & set(b.get_vocab())):
        try:
            text = constants.chars_to_bytes(token).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if _is_cjk(text) and text.isalpha():
            text = " " + text
        if len(text) < 2 or text[0] != " " or not text[1:].isalpha():
            continue
        if a.tokenize(text) == b.tokenize(text) and token in a.tokenize(text):
            words.append(text)
    return words


def test_same_text_same_tokens_across_bpe_and_sentencepiece(specs):
    llama, gemma = _load(specs["llama3_bpe"]), _load(specs["gemma2_sp"])
    words = _common_words(llama, gemma)
    assert len(words) >= 100, len(words)
    cjk = [w for w in words if _is_cjk(w)]
    accented = [w for w in words if not w.isascii() and not _is_cjk(w)]
    assert len(cjk) >= 10 and len(accented) >= 10, (cjk, accented)
    text = "".join(accented[:10] + cjk[:10] + words[:10])
    tokens = llama.tokenize(text)
    assert tokens == gemma.tokenize(text)
    assert constants.chars_to_bytes("".join(tokens)) == text.encode()
    # The raw Hugging Face token strings of the same pieces disagree.
    raw_llama = _hf(_path(specs["llama3_bpe"])).tokenize(text)
    raw_gemma = _hf(_path(specs["gemma2_sp"])).tokenize(text)
    assert len(raw_llama) == len(raw_gemma) == len(tokens)
    assert sum(x != y for x, y in zip(raw_llama, raw_gemma)) >= 30  # every word's space


def test_byteified_vocabularies_overlap_much_more_than_raw_ones(specs):
    llama, gemma = _load(specs["llama3_bpe"]), _load(specs["gemma2_sp"])
    raw = set(_hf(_path(specs["llama3_bpe"])).get_vocab()) & set(
        _hf(_path(specs["gemma2_sp"])).get_vocab()
    )
    byteified = set(llama.get_vocab()) & set(gemma.get_vocab())
    assert len(byteified) >= 2 * len(raw), (len(byteified), len(raw))


# ---------------------------------------------------------------- target swaps


def test_gemma_with_qwen2_target(specs, tiny_swap_spec, tmp_path):
    tokenizer = load_byteify_tokenizer(tiny_swap_spec("gemma2_sp", "Qwen2"))
    plain = _load(specs["gemma2_sp"])
    tokens = tokenizer.tokenize("<|im_start|>Hello")
    assert tokens == ["<|im_start|>"] + plain.tokenize("Hello")
    assert tokenizer.family is families.QWEN2 and tokenizer.model_kind_cls is tokenizer.family
    assert tokenizer.bos_token_id is None  # Qwen2 has no bos ...
    assert tokenizer.encode("Hello") == plain.encode("Hello", add_special_tokens=False)  # ... so none is added
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.all_special_tokens == ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    # Regular text still tokenizes exactly as the source tokenizer does.
    text = "Grüße aus Köln! 東京\n\n  x"
    assert tokenizer.encode(text, add_special_tokens=False) == plain.encode(text, add_special_tokens=False)
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).encode(text) == tokenizer.encode(text)


def test_qwen2_with_gemma2_target(specs, tiny_swap_spec, tmp_path):
    tokenizer = load_byteify_tokenizer(tiny_swap_spec("qwen2_bpe", "Gemma2"))
    plain = _load(specs["qwen2_bpe"])
    assert tokenizer.tokenize("<start_of_turn>Hello") == ["<start_of_turn>"] + plain.tokenize("Hello")
    bos = tokenizer.convert_tokens_to_ids("<bos>")
    assert tokenizer.bos_token_id == bos
    assert tokenizer.encode("Hello") == [bos] + plain.encode("Hello", add_special_tokens=False)
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<eos>")
    assert tokenizer.tokenizer.chat_template is None  # Qwen2's Jinja template would be wrong
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).encode("Hello") == tokenizer.encode("Hello")


def test_target_swap_does_not_touch_the_families(specs, tiny_swap_spec):
    before = (families.GEMMA2, dataclasses.astuple(families.GEMMA2), families.QWEN2.spelling)
    sp = load_byteify_tokenizer(tiny_swap_spec("gemma2_sp", "Qwen2"))
    byte = load_byteify_tokenizer(specs["gemma2_sp"] + ":conversion=byte")
    plain = _load(specs["gemma2_sp"])
    assert (families.GEMMA2, dataclasses.astuple(families.GEMMA2), families.QWEN2.spelling) == before
    assert sp.spelling is Spelling.SENTENCEPIECE and plain.spelling is Spelling.SENTENCEPIECE
    assert byte.spelling is Spelling.BYTE_LEVEL
    assert sp.tokenize(" Hello") == plain.tokenize(" Hello")
    assert sp.tokenize(" Hello")[0].startswith("Ġ")


# -------------------------------------------------------------- byte conversion


def _leading_special(family: families.Family) -> str:
    """The family's bos, or for a family without one, its header token."""
    return (family.slot("bos") or family.slot("start_header"))[0]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("target", [None, "Gemma2", "Qwen2"])
def test_pure_byte_conversion(specs, name, target, tmp_path):
    spec = specs[name] + (f":target={target}" if target else "") + ":conversion=pure_byte"
    tokenizer = load_byteify_tokenizer(spec)
    family = tokenizer.family
    special = _leading_special(family)

    assert tokenizer.tokenize(f"{special}Hello") == [special, "H", "e", "l", "l", "o"]
    assert tokenizer.convert_tokens_to_ids(list(constants.BYTE_CHARS)) == list(range(256))
    text = "Grüße, 東京! 😀\n"
    assert tokenizer.encode(text, add_special_tokens=False) == list(text.encode())
    extra = set(family.template_tokens) | set(family.special_tokens)
    assert len(tokenizer) == 256 + len(extra - set(constants.BYTE_CHARS))
    bos = family.first_token("bos")
    assert tokenizer.bos_token_id == (tokenizer.convert_tokens_to_ids(bos) if bos else None)
    with_bos = [tokenizer.bos_token_id] if bos else []
    assert tokenizer.encode("Hi") == with_bos + [ord("H"), ord("i")]
    # Template words exist as whole ids but text never produces them.
    user = tokenizer.convert_tokens_to_ids("user")
    assert user >= 256 and tokenizer.encode("user\n\n", add_special_tokens=False) == list(b"user\n\n")

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(f"{special}{text}") == tokenizer.encode(f"{special}{text}")
    again = load_byteify_tokenizer(f"{tmp_path}:source={family.name}:conversion=prebyteified")
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.tokenize(f"{special}{text}") == tokenizer.tokenize(f"{special}{text}")
    assert again.bos_token_id == tokenizer.bos_token_id


def test_byte_conversion_finds_template_tokens_in_text(specs):
    """Hand-checked: conversion=byte matches template words inside ordinary text."""
    llama = _load(specs["llama3_bpe"] + ":conversion=byte")
    assert llama.tokenize("\n\n") == ["ĊĊ"]
    # Equal scores: the longest piece ending at each cut, read from the right.
    assert llama.tokenize("\n\n\n") == ["Ċ", "ĊĊ"]
    assert llama.tokenize("\n\n\n\n\n") == ["Ċ", "ĊĊ", "ĊĊ"]
    assert llama.tokenize("username") == ["user", "n", "a", "m", "e"]
    assert llama.tokenize("<|eot_id|>x") == ["<|eot_id|>", "x"]
    assert llama.tokenize("Grüße") == list(constants.bytes_to_chars("Grüße".encode()))
    assert llama.added_tokens_encoder == {}  # special tokens are plain pieces ...
    assert llama.special_tokens_encoder["<|eot_id|>"] == llama.convert_tokens_to_ids("<|eot_id|>")  # ... still special

    qwen = _load(specs["qwen2_bpe"] + ":conversion=byte")
    for word in ("user", "system", "assistant"):
        assert qwen.tokenize(word) == [word]
    assert qwen.tokenize("\n\n") == ["Ċ", "Ċ"]  # Qwen2's template has no ĊĊ
    assert qwen.tokenize("<|im_start|>assistant\n") == ["<|im_start|>", "assistant", "Ċ"]

    gemma = _load(specs["gemma2_sp"] + ":conversion=byte")
    assert gemma.tokenize(" model") == ["Ġ", "model"]
    assert gemma.tokenize("assistant") == list("assistant")  # not a Gemma2 template word


def test_byte_conversion_vocabulary_order():
    """Bytes in byte order, then the template tokens that are not single bytes, sorted;
    special tokens outside the template (TinyLlama's <unk>) are left out."""
    assert byteify.byte_level_pieces(families.LLAMA3)[256:] == (
        "<|begin_of_text|>", "<|end_header_id|>", "<|end_of_text|>", "<|eot_id|>",
        "<|start_header_id|>", "assistant", "system", "user", "ĊĊ",
    )  # fmt: skip
    assert byteify.byte_level_pieces(families.QWEN2)[256:] == (
        "<|endoftext|>", "<|im_end|>", "<|im_start|>", "assistant", "system", "user",
    )  # fmt: skip
    assert byteify.byte_level_pieces(families.TINYLLAMA)[256:] == ("</s>", "<s>")
    assert byteify.byte_level_pieces(families.GPT2) == constants.BYTE_CHARS + ("<|endoftext|>",)


def _longest_from_the_right(spelled: str, pieces: set[str]) -> list[str]:
    """The documented tie-break: the longest piece ending at each cut, from the right."""
    longest = max(map(len, pieces))
    tokens, end = [], len(spelled)
    while end > 0:
        start = next(s for s in range(max(0, end - longest), end) if spelled[s:end] in pieces)
        tokens.append(spelled[start:end])
        end = start
    return tokens[::-1]


def test_byte_conversion_breaks_ties_by_the_longest_piece_from_the_right(monkeypatch, specs):
    overlapping = families.Family(
        name="Overlapping",
        special_tokens=("<o>",),
        bos=None,
        pad=("<o>",),
        start_header=("ab",),
        end_header=("bc",),
        eos=("<o>",),
        eot=("abc",),
        system_name=("cab",),
        user_name=("ĊĊ",),
        assistant_name=("ĊĊĊ",),
    )
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    families.register_family(overlapping)
    tokenizer = load_byteify_tokenizer(specs["gemma2_sp"] + ":target=Overlapping:conversion=byte")
    pieces = set(byteify.byte_level_pieces(overlapping))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(st.sampled_from("abc\n<o>é"), max_size=30))
    def check(text):
        expected = _longest_from_the_right(constants.bytes_to_chars(text.encode()), pieces)
        assert tokenizer.tokenize(text) == expected

    check()


def test_byte_conversion_keeps_the_source_bos_rule(specs, tiny_swap_spec):
    """The original post-processor, its ids moved: a bos exactly where the source added
    one; where it names a token the byte vocabulary lacks, the target's bos rule."""
    llama = _load(specs["llama3_bpe"] + ":conversion=byte")
    assert llama.encode("Hi") == [llama.convert_tokens_to_ids("<|begin_of_text|>"), 72, 105]
    qwen = _load(specs["qwen2_bpe"] + ":conversion=byte")
    assert qwen.encode("Hi") == [72, 105] and qwen.bos_token_id is None
    # Qwen2's tokenizer adds no bos, so neither does its byte tokenizer for Llama3 ...
    qwen_as_llama = load_byteify_tokenizer(specs["qwen2_bpe"] + ":target=Llama3:conversion=byte")
    assert qwen_as_llama.encode("Hi") == [72, 105]
    assert qwen_as_llama.bos_token_id == qwen_as_llama.convert_tokens_to_ids("<|begin_of_text|>")
    # ... while Llama 3's adds <|begin_of_text|>, which Gemma2's vocabulary lacks: Gemma2's bos.
    llama_as_gemma = load_byteify_tokenizer(specs["llama3_bpe"] + ":target=Gemma2:conversion=byte")
    assert llama_as_gemma.encode("Hi") == [llama_as_gemma.convert_tokens_to_ids("<bos>"), 72, 105]
    gemma_as_qwen = load_byteify_tokenizer(specs["gemma2_sp"] + ":target=Qwen2:conversion=byte")
    assert gemma_as_qwen.encode("Hi") == [72, 105]


@pytest.mark.parametrize("name", TINY)
def test_byte_conversion_keeps_the_chat_template_of_its_own_family(specs, name):
    hf = _hf(_path(specs[name]))
    byte = _load(specs[name] + ":conversion=byte")
    assert byte.tokenizer.chat_template == hf.chat_template
    swapped = load_byteify_tokenizer(specs[name] + ":target=GPT2:conversion=byte")
    assert swapped.tokenizer.chat_template is None


def _text_with_template_words(family: families.Family):
    words = [constants.chars_to_bytes(t).decode() for t in family.template_tokens]
    alphabet = st.characters(exclude_categories=("Cs",))
    part = st.text(alphabet, max_size=8) | st.sampled_from(words + ["\n", " ", "<", "|>"])
    return st.lists(part, max_size=8).map("".join)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("conversion", ["byte", "pure_byte"])
def test_byte_conversions_reload_prebyteified_with_identical_ids(specs, name, conversion, tmp_path):
    tokenizer = _load(f"{specs[name]}:conversion={conversion}")
    tokenizer.save_pretrained(tmp_path)
    again = load_byteify_tokenizer(
        f"{tmp_path}:source={tokenizer.family.name}:conversion=prebyteified"
    )
    assert again.get_vocab() == tokenizer.get_vocab() and len(again) == len(tokenizer)
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
    )  # fmt: skip
    assert dict(again.special_tokens_encoder) == dict(tokenizer.special_tokens_encoder)

    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_text_with_template_words(tokenizer.family))
    def check(text):
        assert again.encode(text) == tokenizer.encode(text)
        assert again.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)

    check()


def test_byte_conversion_builds_a_new_tokenizer(specs):
    hf = AutoTokenizer.from_pretrained(_path(specs["gemma2_sp"]))
    before = (len(hf), hf.encode("Hello world"), hf.backend_tokenizer.to_str())
    for convert in (byteify.to_byte_level_tokenizer, byteify.to_pure_byte_tokenizer):
        converted = convert(hf, families.GEMMA2)
        assert converted is not hf
        assert (len(hf), hf.encode("Hello world"), hf.backend_tokenizer.to_str()) == before
        assert converted.encode("Hello", add_special_tokens=False) == list(b"Hello")


# ------------------------------------------------------------------ source=auto


def test_auto_family_is_read_from_the_chat_template(specs):
    spec = _path(specs["llama3_bpe"]) + ":source=auto"
    parsed = TokenizerSpec.parse(spec)
    assert str(parsed) == spec and parsed.is_auto and parsed.target is None
    tokenizer = load_byteify_tokenizer(spec)
    family = tokenizer.family
    assert family.name == f"auto({_path(specs['llama3_bpe'])})"
    assert family.name not in families.family_names()
    same = ("bos", "start_header", "end_header", "eot", "system_name", "user_name", "assistant_name")
    assert {s: family.slot(s) for s in same} == {s: families.LLAMA3.slot(s) for s in same}
    hf = _hf(_path(specs["llama3_bpe"]))
    assert family.eos == (hf.eos_token,) and family.pad == (hf.pad_token or hf.eos_token,)

    from tokenkit import prompts  # prompts imports byteify

    messages = [
        {"role": "system", "content": "Kurz."},
        {"role": "user", "content": "Wie geht's?\n\nGut."},
        {"role": "assistant", "content": "user, system"},
        {"role": "user", "content": "東京"},  # Llama 3's template trims contents (logged)
    ]
    for generation_prompt in (True, False):
        prompt = prompts.preprocess_messages(messages, add_generation_prompt=generation_prompt)
        ours = prompts.encode_prompt(prompt, tokenizer).ids
        assert ours == hf.apply_chat_template(messages, add_generation_prompt=generation_prompt, return_dict=False)


def test_auto_with_conversions(specs, tmp_path):
    spec = _path(specs["qwen2_bpe"]) + ":source=auto"
    byte = load_byteify_tokenizer(spec + ":conversion=byte")
    assert byte.family == load_byteify_tokenizer(spec).family
    assert byte.tokenize("<|im_start|>assistant\n") == ["<|im_start|>", "assistant", "Ċ"]
    byte.save_pretrained(tmp_path)
    again = load_byteify_tokenizer(f"{tmp_path}:source=auto:conversion=prebyteified")
    assert dataclasses.replace(again.family, name=byte.family.name) == byte.family
    pure = load_byteify_tokenizer(spec + ":conversion=pure_byte")
    assert pure.tokenize("assistant") == list("assistant")


def test_auto_refusals_name_the_problem(specs):
    with pytest.raises(ValueError, match="Gemma2 has no system role"):  # the template's own error
        load_byteify_tokenizer(_path(specs["gemma2_sp"]) + ":source=auto")
    with pytest.raises(ValueError, match="target=auto is not supported"):
        TokenizerSpec.parse("dir:source=Qwen2:target=auto")
    with pytest.raises(ValueError, match="read from the tokenizer when it is loaded"):
        TokenizerSpec.parse("dir:source=auto").target_family
    hf = AutoTokenizer.from_pretrained(_path(specs["qwen2_bpe"]))
    hf.chat_template = None
    with pytest.raises(ValueError, match="it has no chat template"):
        byteify.read_family(hf, TokenizerSpec.parse("qwen2_bpe:source=auto"), Spelling.BYTE_LEVEL)


# -------------------------------------------------------------- the wrapper API


def test_conversion_lookups(specs):
    tokenizer = _load(specs["llama3_bpe"])
    ids = tokenizer.encode(" Grüße\n", add_special_tokens=False)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokenizer.convert_ids_to_tokens(np.array(ids)) == tokens
    assert tokenizer.convert_ids_to_tokens(np.int64(ids[0])) == tokens[0]
    assert tokenizer.convert_tokens_to_ids(tokens) == ids
    assert "".join(tokens) == "ĠGrÃ¼ÃŁeĊ"
    with pytest.raises(KeyError, match="'▁Grüße' is not in the byte-level vocabulary"):
        tokenizer.convert_tokens_to_ids("▁Grüße")
    with pytest.raises(IndexError, match=f"Token id {len(tokenizer)} is not in the vocabulary"):
        tokenizer.convert_ids_to_tokens(len(tokenizer))
    vocab = tokenizer.get_vocab()
    vocab["zzz"] = 0
    assert "zzz" not in tokenizer.get_vocab()


@pytest.mark.parametrize("name", TINY)
def test_special_tokens(specs, name):
    tokenizer = _load(specs[name])
    family = tokenizer.family
    assert tokenizer.all_special_tokens == list(family.special_tokens)
    assert tokenizer.all_special_ids == tokenizer.convert_tokens_to_ids(list(family.special_tokens))
    for attribute, slot in (("pad_token_id", "pad"), ("bos_token_id", "bos"), ("eos_token_id", "eos")):
        token = family.first_token(slot)
        expected = tokenizer.convert_tokens_to_ids(token) if token else None
        assert getattr(tokenizer, attribute) == expected, attribute
    for token in family.special_tokens:
        assert tokenizer.tokenize(f"a{token}b")[1:-1] == [token]
        assert tokenizer.added_tokens_encoder[token] == tokenizer.convert_tokens_to_ids(token)


def test_batch_call_pads_right_and_truncates(specs):
    tokenizer = _load(specs["gemma2_sp"])
    texts = ["Hello world, this is longer", "Hi"]
    batch = tokenizer(texts, padding=True)
    lengths = [len(tokenizer.encode(t)) for t in texts]
    assert [len(row) for row in batch["input_ids"]] == [max(lengths)] * 2
    assert batch["input_ids"][1][: lengths[1]] == tokenizer.encode("Hi")
    assert batch["input_ids"][1][lengths[1] :] == [tokenizer.pad_token_id] * (max(lengths) - lengths[1])
    assert batch["attention_mask"][1] == [1] * lengths[1] + [0] * (max(lengths) - lengths[1])
    short = tokenizer(texts, max_length=3, truncation=True, padding="max_length")
    assert [len(row) for row in short["input_ids"]] == [3, 3]
    assert tokenizer.decode(tokenizer.encode("Grüße", add_special_tokens=False)) == "Grüße"


def test_manual_add_prefix_space(specs):
    tokenizer = load_byteify_tokenizer(specs["llama3_bpe"] + ":conversion=manual_add_prefix_space")
    plain = _load(specs["llama3_bpe"])
    assert tokenizer.tokenize("Hello") == plain.tokenize(" Hello")
    assert tokenizer.tokenize(" Hello") == plain.tokenize(" Hello")
    assert tokenizer.encode("Hello") == plain.encode(" Hello")
    assert tokenizer(["Hello", " there"])["input_ids"] == plain([" Hello", " there"])["input_ids"]
    assert tokenizer(text="x")["input_ids"] == plain(" x")["input_ids"]


def test_add_tokens_uses_byte_level_spelling(specs):
    tokenizer = load_byteify_tokenizer(specs["llama3_bpe"])
    n = len(tokenizer)
    assert tokenizer.add_tokens(["héllo wörld", "<custom>"]) == 2
    assert len(tokenizer) == n + 2
    vocab = tokenizer.get_vocab()
    assert vocab["hÃ©lloĠwÃ¶rld"] == n and vocab["<custom>"] == n + 1
    assert tokenizer.tokenize("ahéllo wörld<custom>")[-2:] == ["hÃ©lloĠwÃ¶rld", "<custom>"]


@pytest.mark.parametrize("conversion", ["", ":conversion=byte"])
def test_pickles_for_worker_processes(specs, conversion):
    tokenizer = load_byteify_tokenizer(specs["gemma2_sp"] + conversion)
    tokenizer.add_tokens(["<extra>"], special_tokens=True)
    copied = pickle.loads(pickle.dumps(tokenizer))
    text = "Grüße <extra>\n東京"
    assert copied.tokenize(text) == tokenizer.tokenize(text)
    assert copied.get_vocab() == tokenizer.get_vocab()
    assert dict(copied.special_tokens_encoder) == dict(tokenizer.special_tokens_encoder)
    assert copied.family == tokenizer.family and copied.spec == tokenizer.spec


def test_repr_names_the_spec(specs):
    assert specs["qwen2_bpe"] in repr(_load(specs["qwen2_bpe"]))


# ------------------------------------------------------------- backend_tokenize


@pytest.mark.parametrize("name", TINY)
def test_backend_tokenize_keeps_bytes_and_leading_spaces(specs, name):
    tokenizer = _load(specs[name])
    for word in ["hello", "Grüße", "東京", "x1"]:
        for spaces in range(3):
            pretoken = constants.bytes_to_chars((" " * spaces + word).encode())
            tokens = tokenizer.backend_tokenize(pretoken)
            assert "".join(tokens) == pretoken, (spaces, word, tokens)
        # One space plus a word is one pretoken: the model gives what tokenize gives.
        assert tokenizer.backend_tokenize(constants.bytes_to_chars(f" {word}".encode())) == tokenizer.tokenize(
            f" {word}"
        )
    assert tokenizer.backend_tokenize("") == []


@pytest.mark.parametrize("name", TINY)
def test_backend_tokenize_decomposes_other_vocabularies(specs, name):
    """What FVT does: spell each token of another tokenizer with this one's pieces."""
    tokenizer = _load(specs[name])
    other = _load(specs["gemma2_sp" if name != "gemma2_sp" else "llama3_bpe"])
    checked = 0
    for token in list(other.get_vocab())[:1500]:
        if token in other.all_special_tokens:
            continue
        try:
            pieces = tokenizer.backend_tokenize(token)
        except UnicodeDecodeError:
            continue
        assert "".join(pieces) == token
        checked += 1
    assert checked > 500


def test_backend_tokenize_unsafe_modes(specs):
    byte = _load(specs["llama3_bpe"] + ":conversion=byte")
    assert byte.backend_tokenize("ĠhiÃ", unsafe="auto") == ["Ġ", "h", "i", "Ã"]
    assert byte.backend_tokenize("ĠhiÃ", unsafe=True) == ["Ġ", "h", "i", "Ã"]
    with pytest.raises(UnicodeDecodeError):
        byte.backend_tokenize("ĠhiÃ")  # safe mode decodes the bytes first
    with pytest.raises(ValueError, match="unsafe must be True, False or 'auto'"):
        byte.backend_tokenize("hi", unsafe="yes")


@pytest.mark.parametrize("name", TINY)
def test_backend_tokenize_with_byte_fallback(specs, name):
    tokenizer = _load(specs[name])
    cafe = constants.bytes_to_chars(" Café".encode())  # ĠCafÃ©
    # Cut inside é: the trailing byte cannot be decoded and becomes a byte token.
    ids = tokenizer.backend_tokenize_with_byte_fallback(cafe[:-1])
    assert "".join(tokenizer.convert_ids_to_tokens(ids)) == cafe[:-1]
    assert ids[-1] == tokenizer.convert_tokens_to_ids("Ã")
    assert ids[:-1] == tokenizer.convert_tokens_to_ids(tokenizer.backend_tokenize(cafe[:-2]))
    # Starting inside a character: the leading byte is cut first.
    ids = tokenizer.backend_tokenize_with_byte_fallback("©Ġok")
    assert ids[0] == tokenizer.convert_tokens_to_ids("©")
    assert "".join(tokenizer.convert_ids_to_tokens(ids)) == "©Ġok"
    assert tokenizer.backend_tokenize_with_byte_fallback("") == []


def test_byte_fallback_ids_are_byte_values_for_byte_tokenizers(specs):
    byte = _load(specs["gemma2_sp"] + ":conversion=byte")
    assert byte.backend_tokenize_with_byte_fallback("©Ġok", unsafe="auto") == list(b"\xa9 ok")


# ----------------------------------------------------------------- bad inputs


def test_template_token_missing_from_vocabulary_is_named(specs, monkeypatch):
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    families.register_family(
        families.Family(
            name="Odd",
            special_tokens=("<|odd|>",),
            bos=("<|odd|>",),
            pad=("<|odd|>",),
            start_header=("<|odd|>",),
            end_header=("Ċ",),
            eos=("<|odd|>",),
            eot=("<|odd|>",),
            system_name=("zqxjvwk",),
            user_name=("user",),
            assistant_name=("Ġqqqzzzxxx",),
        )
    )
    with pytest.raises(ValueError, match="not in its byte-level vocabulary: 'zqxjvwk', 'Ġqqqzzzxxx'"):
        load_byteify_tokenizer(specs["llama3_bpe"] + ":target=Odd")
    # With conversion=byte every template token gets an id of its own.
    byte = load_byteify_tokenizer(specs["llama3_bpe"] + ":target=Odd:conversion=byte")
    assert byte.convert_tokens_to_ids("zqxjvwk") >= 256


def test_spelling_is_read_from_the_decoder(specs):
    """The spelling belongs to the tokenizer (Phi-3's is SentencePiece, Phi-4-mini's
    byte-level, one family): a SentencePiece tokenizer under a byte-level family."""
    as_gpt2 = load_byteify_tokenizer(_path(specs["gemma2_sp"]) + ":source=GPT2")
    assert as_gpt2.spelling is Spelling.SENTENCEPIECE and families.GPT2.spelling is Spelling.BYTE_LEVEL
    assert as_gpt2.tokenize(" für alle") == ["ĠfÃ¼r", "Ġalle"]
    assert byteify.detect_spelling(_hf(_path(specs["llama3_bpe"]))) is Spelling.BYTE_LEVEL


def test_wrong_spelling_is_caught(specs):
    hf = AutoTokenizer.from_pretrained(_path(specs["gemma2_sp"]))
    with pytest.raises(ValueError, match="not byte-level strings under the byte_level spelling.*Gemma2, Gemma3, TinyLlama"):
        ByteifyTokenizer(hf, families.GEMMA2, spelling=Spelling.BYTE_LEVEL)
    with pytest.raises(ValueError, match="not byte-level strings"):
        load_byteify_tokenizer(_path(specs["gemma2_sp"]) + ":source=Gemma2:conversion=prebyteified")


def _with_normalizer(spec: str, normalizer, tmp_path: Path) -> str:
    hf = AutoTokenizer.from_pretrained(_path(spec))
    hf.backend_tokenizer.normalizer = normalizer
    hf.save_pretrained(tmp_path)
    return f"{tmp_path}:{spec.split(':', 1)[1]}"


def test_plain_unicode_normalizer_is_removed_with_a_warning(specs, tmp_path, caplog):
    spec = _with_normalizer(specs["llama3_bpe"], normalizers.NFKC(), tmp_path)
    with caplog.at_level(logging.WARNING):
        tokenizer = load_byteify_tokenizer(spec)
    assert any("NFKC normalizer; removing it" in r.getMessage() for r in caplog.records)
    assert tokenizer.tokenizer.backend_tokenizer.normalizer is None
    text = "ﬁne ①"  # NFKC would turn these into "fine 1"
    assert constants.chars_to_bytes("".join(tokenizer.tokenize(text))) == text.encode()


def test_unicode_normalizer_inside_a_sequence_is_refused(specs, tmp_path):
    normalizer = normalizers.Sequence([normalizers.Replace(" ", "▁"), normalizers.NFKC()])
    spec = _with_normalizer(specs["gemma2_sp"], normalizer, tmp_path)
    with pytest.raises(ValueError, match="Sequence normalizer containing NFKC"):
        load_byteify_tokenizer(spec)
    # A byte-level conversion does not use the normalizer, so it is fine.
    byte = load_byteify_tokenizer(spec + ":conversion=byte")
    assert byte.encode("ﬁ", add_special_tokens=False) == list("ﬁ".encode())


def test_constructor_needs_family_special_tokens(specs):
    hf = AutoTokenizer.from_pretrained(_path(specs["qwen2_bpe"]))
    with pytest.raises(ValueError, match="special tokens of Gemma2 are not in the vocabulary: '<bos>'"):
        ByteifyTokenizer(hf, families.GEMMA2, spelling=Spelling.BYTE_LEVEL)


# --------------------------------------------------------------------- property


def _texts(exclude: str = ""):
    alphabet = st.characters(exclude_categories=("Cs",), exclude_characters=exclude)
    return st.text(alphabet, max_size=40) | st.sampled_from(["", " ", "  x", "\n\n", "a\tb", "Grüße 東京 😀"])


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("conversion", ["", ":conversion=byte", ":conversion=pure_byte"])
def test_byteified_tokens_spell_the_text(specs, name, conversion):
    tokenizer = _load(specs[name] + conversion)
    hf = _hf(_path(specs[name]))
    # SentencePiece writes spaces as "▁", so a literal "▁" in the text cannot be told
    # apart from a space (the tokenizer's own decode turns it into a space too).
    exclude = families.SENTENCEPIECE_SPACE if name == "gemma2_sp" and not conversion else ""
    # Qwen2's NFC normalizer is dropped (see test_dropped_nfc_keeps_the_bytes); the
    # original agrees only on texts NFC leaves alone.
    normalizer = hf.backend_tokenizer.normalizer
    dropped = normalizer is not None and tokenizer.tokenizer.backend_tokenizer.normalizer is None

    def unchanged_by_dropped_normalizer(text: str) -> bool:
        return not dropped or normalizer.normalize_str(text) == text

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_texts(exclude))
    def check(text):
        tokens = tokenizer.tokenize(text)
        assert constants.chars_to_bytes("".join(tokens)) == text.encode("utf-8")
        ids = tokenizer.encode(text, add_special_tokens=False)
        if conversion:
            assert tokenizer.decode(ids) == text
        if conversion == ":conversion=pure_byte":
            if not any(t in text for t in tokenizer.family.special_tokens):  # matched whole
                assert ids == list(text.encode("utf-8"))
        elif conversion:
            assert tokens == _longest_from_the_right(
                constants.bytes_to_chars(text.encode()), set(tokenizer.get_vocab())
            )
        elif unchanged_by_dropped_normalizer(text):
            assert ids == hf.encode(text, add_special_tokens=False)
            assert tokenizer.encode(text) == hf.encode(text)

    check()


def test_dropped_nfc_keeps_the_bytes(specs):
    """Qwen2 (like the real one) has an NFC normalizer, which byteification drops."""
    hf = _hf(_path(specs["qwen2_bpe"]))
    assert type(hf.backend_tokenizer.normalizer).__name__ == "NFC"
    tokenizer = _load(specs["qwen2_bpe"])
    assert tokenizer.tokenizer.backend_tokenizer.normalizer is None
    fresh = AutoTokenizer.from_pretrained(_path(specs["qwen2_bpe"]))
    wrapped = ByteifyTokenizer(fresh, families.QWEN2)
    assert wrapped.tokenizer.backend_tokenizer.normalizer is None
    assert fresh.backend_tokenizer.normalizer is not None  # the caller's object is untouched
    decomposed = "Cafe\u0301 Stra\u00dfe"  # e + combining acute accent
    tokens = tokenizer.tokenize(decomposed)
    assert constants.chars_to_bytes("".join(tokens)) == decomposed.encode()
    composed = hf.encode(decomposed, add_special_tokens=False)
    assert hf.decode(composed) == "Café Straße"  # NFC changed the text ...
    assert tokenizer.decode(tokenizer.encode(decomposed)) == decomposed  # ... we keep it


# ------------------------------------------------------------------------ docs


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_byteification_guide_examples_run(monkeypatch, tiny_tokenizer_specs):
    guide = (REPO_ROOT / "docs" / "byteification.md").read_text()
    blocks = _python_blocks(guide)
    assert len(blocks) >= 5
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/byteification.md", "exec"), namespace)  # noqa: S102

