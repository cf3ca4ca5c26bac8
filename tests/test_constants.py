"""The GPT-2 byte-level alphabet and the shared limits."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenkit import constants


def test_table_is_a_bijection_of_printable_non_space_characters():
    chars = constants.BYTE_CHARS
    assert len(chars) == 256 and len(set(chars)) == 256
    for char in chars:
        assert len(char) == 1 and char.isprintable() and not char.isspace(), repr(char)
    assert dict(constants.BYTES_TO_CHARS) == dict(enumerate(chars))
    assert {b: c for c, b in constants.CHARS_TO_BYTES.items()} == dict(enumerate(chars))


@pytest.mark.parametrize(
    "byte, char",
    [
        (ord("A"), "A"),
        (ord("~"), "~"),
        (0xE9, "é"),  # printable Latin-1 spells itself
        (0, "Ā"),  # the first non-printable byte takes U+0100
        (ord("\n"), "Ċ"),
        (ord(" "), "Ġ"),  # the 33rd: U+0120
        (0x7F, "ġ"),  # DEL follows the 33 control bytes and space
        (0xA0, "ł"),  # no-break space, last of the 0x7F..0xA0 run
        (0xAD, "Ń"),  # soft hyphen, the 68th and last remapped byte
    ],
)
def test_known_entries_of_the_gpt2_table(byte, char):
    assert constants.BYTES_TO_CHARS[byte] == char
    assert constants.CHARS_TO_BYTES[char] == byte


def test_spelling_of_text_matches_byte_level_bpe():
    assert constants.bytes_to_chars(" Café\n".encode()) == "ĠCafÃ©Ċ"
    assert constants.chars_to_bytes("ĠCafÃ©Ċ") == " Café\n".encode()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_bytes_round_trip(data):
    spelling = constants.bytes_to_chars(data)
    assert len(spelling) == len(data)
    assert constants.is_byte_level(spelling)
    assert constants.chars_to_bytes(spelling) == data


@pytest.mark.parametrize("bad", [" ", "\n", "▁", "中", "\u00ad"])
def test_chars_outside_the_alphabet_are_refused(bad):
    spelling = "ab" + bad + "c"
    assert not constants.is_byte_level(spelling)
    with pytest.raises(ValueError, match="position 2 .* not in the byte-level alphabet"):
        constants.chars_to_bytes(spelling)


def test_tables_are_read_only():
    with pytest.raises(TypeError):
        constants.CHARS_TO_BYTES["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        constants.BYTES_TO_CHARS[0] = "x"  # type: ignore[index]


def test_limits():
    assert constants.EXPAND_INPUT_IDS_MAX_LENGTH == 16
    assert constants.MAX_CHARS_PER_TOKEN == 16
