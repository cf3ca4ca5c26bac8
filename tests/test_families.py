"""Model families: registry, slots, spellings, immutability."""

import dataclasses

import pytest

from tokenkit import constants, families
from tokenkit.families import Family, Spelling

ALL_NAMES = ("Qwen2", "Qwen3", "Llama3", "Gemma2", "Gemma3", "Phi3", "GPT2", "TinyLlama", "Mistral")


def test_registry_knows_every_family():
    assert set(ALL_NAMES) <= set(families.family_names())
    for name in ALL_NAMES:
        assert families.get_family(name).name == name


def test_unknown_family_lists_known_ones():
    with pytest.raises(ValueError, match="Unknown model family 'Llama4'.*known families: .*Llama3.*Gemma2"):
        families.get_family("Llama4")
    with pytest.raises(ValueError, match="did you mean 'Qwen2'"):
        families.get_family("qwen2")


def test_slot_order_and_markers():
    assert families.SLOTS[0] == "bos"
    assert families.SLOTS == (
        "bos", "pad", "start_header", "end_header", "eos", "eot",
        "system_name", "user_name", "assistant_name",
    )  # fmt: skip
    assert families.SLOT_MARKERS[0] == "<|<bos>|>"
    assert families.slot_marker("assistant_name") == "<|<assistant_name>|>"
    with pytest.raises(ValueError, match="valid slots: bos, pad"):
        families.slot_marker("header")


@pytest.mark.parametrize("name", ALL_NAMES)
def test_replacements_are_complete_read_only_and_byte_level(name):
    family = families.get_family(name)
    replacements = family.replacements
    assert tuple(replacements) == families.SLOT_MARKERS
    for marker, value in replacements.items():
        assert value is None or (isinstance(value, tuple) and value), (marker, value)
        for token in value or ():
            assert constants.is_byte_level(token), token
    with pytest.raises(TypeError):
        replacements["<|<bos>|>"] = ("x",)  # type: ignore[index]
    assert set(family.template_tokens) == {t for v in replacements.values() for t in v or ()}


@pytest.mark.parametrize(
    "name, slot, value",
    [
        ("Qwen2", "bos", None),
        ("Qwen3", "bos", ("<|endoftext|>",)),
        ("Qwen2", "eot", ("<|im_end|>", "Ċ")),
        ("Llama3", "end_header", ("<|end_header_id|>", "ĊĊ")),
        ("Llama3", "eos", ("<|eot_id|>",)),
        ("Gemma2", "assistant_name", ("model",)),
        ("Gemma3", "system_name", ("user",)),
        ("Phi3", "start_header", None),
        ("Phi3", "user_name", ("<|user|>",)),
        ("GPT2", "eot", ("<|endoftext|>",)),
        ("TinyLlama", "bos", ("<s>",)),
        ("Mistral", "user_name", None),
    ],
)
def test_slot_values_match_the_real_families(name, slot, value):
    family = families.get_family(name)
    assert family.slot(slot) == value
    assert family.replacements[families.slot_marker(slot)] == value


def test_spellings_of_families():
    sentencepiece = {n for n in ALL_NAMES if families.get_family(n).spelling is Spelling.SENTENCEPIECE}
    assert sentencepiece == {"Gemma2", "Gemma3", "TinyLlama"}


def test_families_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        families.GEMMA2.spelling = Spelling.BYTE_LEVEL  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        families.LLAMA3.bos = None  # type: ignore[misc]
    assert families.get_family("Gemma2") is families.GEMMA2


def test_sentencepiece_spelling():
    sp = Spelling.SENTENCEPIECE
    assert sp.spell("▁Café") == "ĠCafÃ©"
    assert sp.spell("<0x0A>") == "Ċ"
    assert sp.spell("<0xC3>") + sp.spell("<0xA9>") == "Ã©"  # the UTF-8 bytes of é
    assert sp.spell("<0x0a>") == "<0x0a>"  # lower-case hex is an ordinary piece
    assert sp.spell("\n\t") == "Ċĉ"
    assert sp.precedence("<0x20>") < sp.precedence("▁")
    assert sp.spell_added("<start_of_turn>") == "<start_of_turn>"
    assert sp.spell_added("▁▁") == "ĠĠ"


def test_byte_level_spelling():
    bl = Spelling.BYTE_LEVEL
    assert bl.spell("ĠCafÃ©") == "ĠCafÃ©"
    assert bl.spell("<0x0A>") == "<0x0A>"  # no byte fallback in byte-level BPE
    assert bl.precedence("<0x0A>") == bl.precedence("a")
    # Added tokens are stored as the raw text they match.
    assert bl.spell_added("<|im_start|>") == "<|im_start|>"
    assert bl.spell_added("a b\n") == "aĠbĊ"


def _family(**overrides):
    fields = dict(
        name="Tiny",
        special_tokens=["<s>"],
        bos=["<s>"],
        pad=None,
        start_header=None,
        end_header=None,
        eos=["<s>"],
        eot=["<s>"],
        system_name=None,
        user_name=None,
        assistant_name=None,
    )
    fields.update(overrides)
    return Family(**fields)


def test_family_values_are_normalised_to_tuples():
    family = _family(user_name="user")
    assert family.special_tokens == ("<s>",)
    assert family.bos == ("<s>",)
    assert family.user_name == ("user",)
    hash(family)  # immutable all the way down


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(eot=["<s>", "\n"]), "not in the byte-level spelling"),
        (dict(bos=[]), "non-empty sequence"),
        (dict(pad=[""]), "non-empty token strings"),
        (dict(name="a:b"), "without ':'"),
    ],
)
def test_bad_family_definitions_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        _family(**overrides)


def test_register_family(monkeypatch):
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    family = _family(name="MyFamily")
    assert families.register_family(family) is family
    assert families.get_family("MyFamily") is family
    families.register_family(_family(name="MyFamily"))  # equal: fine
    with pytest.raises(ValueError, match="already registered"):
        families.register_family(_family(name="MyFamily", bos=None))
    with pytest.raises(ValueError, match="already registered"):
        families.register_family(_family(name="Llama3"))


def test_first_token():
    assert families.LLAMA3.first_token("end_header") == "<|end_header_id|>"
    assert families.QWEN2.first_token("bos") is None
