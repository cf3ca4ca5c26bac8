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

from tokenkit import byteify, constants, families
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
        ("dir:source=Llama3:conversion=bytes", "Unknown conversion 'bytes'; valid conversions: byte, prebyteified, manual_add_prefix_space"),
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
    assert byteify._looks_like_local_path(name) is local


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
def test_byte_conversion(specs, name, target, tmp_path):
    spec = specs[name] + (f":target={target}" if target else "") + ":conversion=byte"
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
    assert user >= 256 and tokenizer.encode("user", add_special_tokens=False) == list(b"user")

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(f"{special}{text}") == tokenizer.encode(f"{special}{text}")
    again = load_byteify_tokenizer(f"{tmp_path}:source={family.name}:conversion=prebyteified")
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.tokenize(f"{special}{text}") == tokenizer.tokenize(f"{special}{text}")
    assert again.bos_token_id == tokenizer.bos_token_id


def test_byte_conversion_builds_a_new_tokenizer(specs):
    hf = AutoTokenizer.from_pretrained(_path(specs["gemma2_sp"]))
    before = (len(hf), hf.encode("Hello world"), hf.backend_tokenizer.to_str())
    converted = byteify.to_byte_level_tokenizer(hf, families.GEMMA2)
    assert converted is not hf
    assert (len(hf), hf.encode("Hello world"), hf.backend_tokenizer.to_str()) == before
    assert converted.encode("Hello", add_special_tokens=False) == list(b"Hello")


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


def test_wrong_spelling_family_is_caught(specs):
    with pytest.raises(ValueError, match="not byte-level strings under the byte_level spelling.*Gemma2, Gemma3, TinyLlama"):
        load_byteify_tokenizer(_path(specs["gemma2_sp"]) + ":source=Llama3")
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
@pytest.mark.parametrize("conversion", ["", ":conversion=byte"])
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
            assert ids == list(text.encode("utf-8"))
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

