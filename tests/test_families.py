"""Model families: registry, slots, spellings, immutability."""

import dataclasses
import re

import jinja2
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


# The nine named families, every slot and special token: they must never change (the
# upstream's published models were trained with exactly these).
_CHATML_SLOTS = dict(
    start_header=("<|im_start|>",), end_header=("Ċ",), eot=("<|im_end|>", "Ċ"),
    system_name=("system",), user_name=("user",), assistant_name=("assistant",),
)
_BOS_EOS_ONLY = dict(
    bos=("<s>",), pad=("</s>",), start_header=None, end_header=None, eos=("</s>",), eot=("</s>",),
    system_name=None, user_name=None, assistant_name=None,
)
PINNED = {
    "Qwen2": (("<|im_start|>", "<|im_end|>", "<|endoftext|>"), dict(
        bos=None, pad=("<|endoftext|>",), eos=("<|endoftext|>",), **_CHATML_SLOTS)),
    "Qwen3": (("<|im_start|>", "<|im_end|>", "<|endoftext|>"), dict(
        bos=("<|endoftext|>",), pad=("<|endoftext|>",), eos=("<|endoftext|>",), **_CHATML_SLOTS)),
    "Llama3": (
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"),
        dict(bos=("<|begin_of_text|>",), pad=("<|end_of_text|>",), start_header=("<|start_header_id|>",),
             end_header=("<|end_header_id|>", "ĊĊ"), eos=("<|eot_id|>",), eot=("<|eot_id|>",),
             system_name=("system",), user_name=("user",), assistant_name=("assistant",))),
    "Gemma2": (("<bos>", "<start_of_turn>", "<end_of_turn>", "<eos>", "<pad>"), dict(
        bos=("<bos>",), pad=("<pad>",), start_header=("<start_of_turn>",), end_header=("Ċ",),
        eos=("<eos>",), eot=("<end_of_turn>", "Ċ"), system_name=("user",), user_name=("user",),
        assistant_name=("model",))),
    "Phi3": (("<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"), dict(
        bos=None, pad=("<|endoftext|>",), start_header=None, end_header=("Ċ",), eos=("<|endoftext|>",),
        eot=("<|end|>", "Ċ"), system_name=("<|user|>",), user_name=("<|user|>",),
        assistant_name=("<|assistant|>",))),
    "GPT2": (("<|endoftext|>",), dict(
        bos=None, pad=("<|endoftext|>",), start_header=None, end_header=None, eos=("<|endoftext|>",),
        eot=("<|endoftext|>",), system_name=None, user_name=None, assistant_name=None)),
    "TinyLlama": (("<s>", "</s>", "<unk>"), _BOS_EOS_ONLY),
    "Mistral": (("<s>", "</s>", "<unk>"), _BOS_EOS_ONLY),
}
PINNED["Gemma3"] = PINNED["Gemma2"]
PINNED_SPELLINGS = {n: Spelling.SENTENCEPIECE for n in ("Gemma2", "Gemma3", "TinyLlama")}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_named_families_are_pinned(name):
    family = families.get_family(name)
    special_tokens, slots = PINNED[name]
    assert family.special_tokens == special_tokens
    assert {slot: family.slot(slot) for slot in families.SLOTS} == slots
    assert family.spelling is PINNED_SPELLINGS.get(name, Spelling.BYTE_LEVEL)


def test_spell_pieces_equals_spell():
    pieces = ["▁Café", "<0x0A>", "<0xC3>", "\n\t", "", "▁▁", "<0x0a>", "東京", "a\0b"]
    for spelling in Spelling:
        assert spelling.spell_pieces(pieces) == [spelling.spell(p) for p in pieces]
        assert spelling.spell_pieces(pieces[:-1]) == [spelling.spell(p) for p in pieces[:-1]]
    assert Spelling.SENTENCEPIECE.spell_pieces([]) == []


# ------------------------------------------------------- families from chat templates


def _tokenize(text: str) -> list[str]:
    """A stand-in tokenizer: special tokens, newlines and other runs are tokens."""
    return [constants.bytes_to_chars(p.encode()) for p in re.findall(r"<\|?/?\w+\|?>|\n|[^\n<]+|<", text)]


def _renderer(source: str, bos: str = "<s>"):
    template = jinja2.Environment().from_string(source)

    def render(messages, add_generation_prompt):
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos)

    return render


def _read(source: str, bos: str | None = "<s>", eos: str | None = "<|im_end|>", pad: str | None = None):
    specials = ["<s>", "<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    return families.family_from_chat_template(
        "auto(test)",
        render=_renderer(source),
        tokenize=_tokenize,
        special_tokens={t: t for t in specials},
        bos=bos,
        eos=eos,
        pad=pad,
        spelling=Spelling.BYTE_LEVEL,
        source="test template",
    )


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chatml_template_is_read():
    family = _read(CHATML)
    assert {s: family.slot(s) for s in families.SLOTS} == dict(
        bos=None, pad=("<|im_end|>",), eos=("<|im_end|>",), **_CHATML_SLOTS
    )
    assert family.special_tokens == ("<|im_end|>", "<|im_start|>")
    assert family.name == "auto(test)" and family.spelling is Spelling.BYTE_LEVEL
    assert _read(CHATML, pad="<s>").pad == ("<s>",)


def test_template_with_bos_and_role_tokens_without_header_start():
    phi = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    family = _read(phi, eos="<|end|>")
    assert (family.bos, family.start_header, family.end_header, family.eot) == (
        ("<s>",), None, ("Ċ",), ("<|end|>", "Ċ"),
    )  # fmt: skip
    assert (family.system_name, family.user_name, family.assistant_name) == (
        ("<|system|>",), ("<|user|>",), ("<|assistant|>",),
    )  # fmt: skip


@pytest.mark.parametrize(
    "source, message",
    [
        ("{{ raise_exception('no system role') }}", "raised"),
        ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}\n{% endif %}{% endfor %}",
         "drops the content of a system message"),
        ("{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}", "repeats"),
        # The system message folded into the first user turn (Gemma's way).
        ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
         "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "folded into the next turn"),
        (CHATML.replace("<|im_start|>assistant\n{% endif %}", "<|im_start|>model\n{% endif %}"),
         "add_generation_prompt renders"),
        ("{% for m in messages %}<|im_start|>\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>\n{% endif %}", "opened alike"),
        # Different on the last turn only: the slots do not reproduce longer chats.
        ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
         "{% if not loop.last %}<|im_end|>\n{% else %}<|im_end|>\n{% endif %}"
         "{% if loop.index == 4 %}x{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "do not reproduce"),
    ],
)
def test_templates_that_cannot_be_read_are_refused_naming_the_problem(source, message):
    with pytest.raises(ValueError, match=f"chat template of test template: .*{message}"):
        _read(source)
